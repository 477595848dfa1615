"""Let a local Kubernetes cluster work behind the Mullvad VPN app's firewall."""

__version__ = "0.4.1"
