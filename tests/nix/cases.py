"""Configurations written twice: as NixOS options and as the equivalent CLI flags.

The flags are what a Debian or RPM user would pass (or put in the settings file); they
are written by hand, not derived from the Nix side, so comparing the two outputs tests
the mapping instead of repeating it.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

from mullvad_allow_k8s.cli import main

# The module's defaults for the settings options, as a Nix attribute set. A test checks
# this literal against the module, so nix/settings.nix can be tested without nixpkgs.
DEFAULTS_NIX = """{
  preset = "kubeadm";
  podCidrs = [ ];
  serviceCidrs = [ ];
  machineAddresses = "auto";
  publicAddresses = [ ];
  inboundPorts = "non-ephemeral";
  ephemeralPorts = "32768-60999";
  tunnelInterface = "wg0-mullvad";
  clusterInterfaces = [
    "cni*" "cbr0" "veth*" "flannel*" "cali*" "vxlan.calico"
    "tunl0" "cilium_*" "lxc*" "kube-bridge" "kube-ipvs0" "weave"
    "genev*" "antrea-*" "ovn0" "docker0" "br-*"
  ];
  output = "/etc/nftables.d/k8s_bypass_mullvad.nft";
  bridgeTable = false;
}"""

# Options of the module that are not settings of the generator.
MODULE_ONLY = {"enable", "package", "loader", "generated"}


@dataclass(frozen=True)
class Case:
    name: str
    options: str  # services.mullvadAllowK8s settings, a Nix attribute set
    flags: tuple[tuple[str, str], ...]  # the same as `mullvad-allow-k8s` flags
    extra_config: str = "{ }"  # other NixOS options (module evaluation only)

    @property
    def argv(self) -> list[str]:
        return [word for pair in self.flags for word in pair]

    def cfg(self) -> str:
        """The full option set, for nix/settings.nix alone."""
        return f"({DEFAULTS_NIX} // {self.options})"

    def config(self) -> str:
        """A NixOS module enabling ours with these options."""
        return (
            f"{{ imports = [ {self.extra_config} ]; "
            f"services.mullvadAllowK8s = {self.options} // {{ enable = true; }}; }}"
        )


CASES = (
    Case("defaults", "{ }", (("--ephemeral-ports", "32768-60999"),)),
    Case(
        "k3s-dual-stack",
        """{
          preset = "k3s";
          podCidrs = [ "10.42.0.0/16" "fd42::/56" ];
          serviceCidrs = [ "10.43.0.0/16" "fd43::/112" ];
          machineAddresses = [ "192.168.1.20" "fd00::20" ];
          publicAddresses = [ "203.0.113.7" ];
        }""",
        (
            ("--preset", "k3s"),
            ("--pod-cidrs", "10.42.0.0/16 fd42::/56"),
            ("--service-cidrs", "10.43.0.0/16,fd43::/112"),
            ("--machine-addresses", "192.168.1.20 fd00::20"),
            ("--public-addresses", "203.0.113.7"),
            ("--ephemeral-ports", "32768-60999"),
        ),
    ),
    Case(
        "ports-tunnel-output-bridge",
        """{
          preset = "microk8s";
          inboundPorts = [ 80 443 6443 "30000-32767" ];
          ephemeralPorts = "40000-50000";
          tunnelInterface = "wg1-mullvad";
          output = "/etc/nftables.d/cluster.nft";
          bridgeTable = true;
        }""",
        (
            ("--preset", "microk8s"),
            ("--inbound-ports", "80,443,6443,30000-32767"),
            ("--ephemeral-ports", "40000-50000"),
            ("--tunnel-interface", "wg1-mullvad"),
            ("--output", "/etc/nftables.d/cluster.nft"),
            ("--bridge-table", "yes"),
        ),
    ),
    Case(
        "custom",
        """{
          preset = "custom";
          podCidrs = [ "172.20.0.0/16" ];
          serviceCidrs = [ "172.21.0.0/16" ];
        }""",
        (
            ("--preset", "custom"),
            ("--pod-cidrs", "172.20.0.0/16"),
            ("--service-cidrs", "172.21.0.0/16"),
            ("--ephemeral-ports", "32768-60999"),
        ),
    ),
)

# Only through the module: the ephemeral range follows boot.kernel.sysctl.
SYSCTL_CASE = Case(
    "sysctl-port-range",
    '{ preset = "kind"; }',
    (("--preset", "kind"), ("--ephemeral-ports", "1024-65000")),
    extra_config='{ boot.kernel.sysctl."net.ipv4.ip_local_port_range" = "1024 65000"; }',
)


def cli(*args: str) -> str:
    """Standard output of `mullvad-allow-k8s ARGS` (run in this process: same main())."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    assert code == 0, f"mullvad-allow-k8s {' '.join(args)}: exit {code}"
    return out.getvalue()


def schema() -> list[dict[str, Any]]:
    """`mullvad-allow-k8s settings --format schema`."""
    data = json.loads(cli("settings", "--format", "schema", "--settings", "none"))
    assert isinstance(data, list)
    return data
