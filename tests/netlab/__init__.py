"""Network-namespace lab: an emulated Mullvad VPN app + a one-node Kubernetes cluster.

Everything here runs on the real Linux network stack, as root, in namespaces the lab
creates and deletes itself; see README.md in this folder.
"""
