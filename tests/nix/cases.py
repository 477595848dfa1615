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
  nodeNetworks = null;
  machineAddresses = "auto";
  publicAddresses = [ ];
  hostPorts = null;
  tunnelInterface = "wg0-mullvad";
  clusterInterfaces = [
    "cni*" "cbr0" "veth*" "flannel*" "cali*" "vxlan.calico"
    "tunl0" "cilium_*" "lxc*" "kube-bridge" "kube-ipvs0" "weave"
    "genev*" "antrea-*" "ovn0" "docker0" "br-*" "bridge" "podman*" "virbr*"
  ];
  output = "/etc/nftables.d/k8s_bypass_mullvad.nft";
  bridgeTable = false;
}"""

# Where the module's defaults differ from the CLI's: the CLI detects (PRESET, POD_CIDRS,
# SERVICE_CIDRS and NODE_NETWORKS are auto), the module builds the ruleset and declares
# them: kubeadm's preset (what auto falls back to) and its ranges. A Debian or RPM user
# gets the module's file by giving these flags, so every case's argv starts with them
# (a case's own flags replace them).
BUILD_TIME_FLAGS = (
    ("--preset", "kubeadm"),
    ("--pod-cidrs", ""),
    ("--service-cidrs", ""),
    ("--node-networks", ""),
)
# The same as raw settings (KEY: value), a source for settings.resolve.
BUILD_TIME_SETTINGS = {
    flag[2:].upper().replace("-", "_"): value for flag, value in BUILD_TIME_FLAGS
}

# Options of the module that are not settings of the generator.
MODULE_ONLY = {"enable", "package", "loader", "generated", "openFirewall"}

# Options of 0.1 whose KEYs are retired (mullvad_allow_k8s.settings.RETIRED): declared
# invisible, default null, only so that old configurations still evaluate (with a
# warning). They are not in the schema and never reach the generator's JSON, so the
# option-vs-schema tests leave them out by name.
RETIRED_OPTIONS = {"inboundPorts", "ephemeralPorts"}


@dataclass(frozen=True)
class Case:
    name: str
    options: str  # services.mullvadAllowK8s settings, a Nix attribute set
    flags: tuple[tuple[str, str], ...]  # the same as `mullvad-allow-k8s` flags
    extra_config: str = "{ }"  # other NixOS options (module evaluation only)
    # The same 0.1 configuration as a Debian/RPM settings file (OLD_CASES only): the
    # CLI's settings.migrate must turn it into what the module's migration gives.
    old_settings: str = ""

    @property
    def argv(self) -> list[str]:
        given = {flag for flag, _ in self.flags}
        flags = [pair for pair in BUILD_TIME_FLAGS if pair[0] not in given] + list(self.flags)
        return [word for pair in flags for word in pair]

    def cfg(self) -> str:
        """The full option set, for nix/settings.nix alone."""
        return f"({DEFAULTS_NIX} // {self.options})"

    def config(self) -> str:
        """A NixOS module enabling ours with these options, and Mullvad's daemon (else
        the module warns, and warnings are errors in these tests)."""
        return (
            f"{{ imports = [ {self.extra_config} ]; services.mullvad-vpn.enable = true; "
            f"services.mullvadAllowK8s = {self.options} // {{ enable = true; }}; }}"
        )


CASES = (
    Case("defaults", "{ }", ()),
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
        ),
    ),
    Case(
        "ports-tunnel-output-bridge",
        """{
          preset = "microk8s";
          hostPorts = [ 80 443 6443 "30000-32767" ];
          tunnelInterface = "wg1-mullvad";
          output = "/etc/nftables.d/cluster.nft";
          bridgeTable = true;
        }""",
        (
            ("--preset", "microk8s"),
            ("--host-ports", "80,443,6443,30000-32767"),
            ("--tunnel-interface", "wg1-mullvad"),
            ("--output", "/etc/nftables.d/cluster.nft"),
            ("--bridge-table", "yes"),
        ),
    ),
    # hostPorts = null: the preset's (rke2: 6443 and 9345); [ ]: none.
    Case("rke2-preset-host-ports", '{ preset = "rke2"; }', (("--preset", "rke2"),)),
    Case(
        "rke2-no-host-ports",
        '{ preset = "rke2"; hostPorts = [ ]; }',
        (("--preset", "rke2"), ("--host-ports", "none")),
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
        ),
    ),
)

# The presets for clusters in containers and VMs, and node networks given.
NODE_CASES = (
    # nodeNetworks = null: the preset's node network (kind's, on a br-* bridge).
    Case("kind-preset", '{ preset = "kind"; }', (("--preset", "kind"),)),
    Case(
        "k3d-own-network",
        '{ preset = "k3d"; nodeNetworks = [ "172.19.0.0/16@br-0123456789ab" ]; }',
        (("--preset", "k3d"), ("--node-networks", "172.19.0.0/16@br-0123456789ab")),
    ),
    Case("minikube-kvm2", '{ preset = "minikube-kvm2"; }', (("--preset", "minikube-kvm2"),)),
    # minikube's none driver: pods and services on this machine, API server 8443.
    Case("minikube-none", '{ preset = "minikube-none"; }', (("--preset", "minikube-none"),)),
    # [ ]: none (not the preset's 192.168.49.0/24), here beside declared pod ranges.
    Case(
        "minikube-no-node-networks",
        """{
          preset = "minikube";
          podCidrs = [ "10.244.0.0/16" ];
          serviceCidrs = [ "10.96.0.0/12" ];
          nodeNetworks = [ ];
        }""",
        (
            ("--preset", "minikube"),
            ("--pod-cidrs", "10.244.0.0/16"),
            ("--service-cidrs", "10.96.0.0/12"),
            ("--node-networks", "none"),
        ),
    ),
    Case(
        "custom-dual-stack-node-networks",
        """{
          preset = "custom";
          nodeNetworks = [
            "172.18.0.0/16@br-*" "fc00:f853:ccd:e793::/64@br-*" "192.168.39.0/24@virbr1"
          ];
        }""",
        (
            ("--preset", "custom"),
            (
                "--node-networks",
                "172.18.0.0/16@br-* fc00:f853:ccd:e793::/64@br-*,192.168.39.0/24@virbr1",
            ),
        ),
    ),
)
CASES = (*CASES, *NODE_CASES)

# Only through the module (nix/settings.nix alone never sees retired options): 0.1
# configurations, migrated. The flags are what the migrated settings are today.
OLD_CASES = (
    Case(
        "0.1-inbound-ports-list",
        '{ preset = "kind"; inboundPorts = [ 80 443 6443 "30000-32767" ]; }',
        (("--preset", "kind"), ("--host-ports", "80,443,6443,30000-32767")),
        old_settings="PRESET=kind\nINBOUND_PORTS=80,443,6443,30000-32767\n",
    ),
    Case(
        "0.1-explicit-defaults",
        '{ inboundPorts = "non-ephemeral"; ephemeralPorts = "32768-60999"; }',
        (),
        old_settings="INBOUND_PORTS=non-ephemeral\nEPHEMERAL_PORTS=32768-60999\n",
    ),
    Case(
        "0.1-inbound-ports-and-host-ports",
        '{ preset = "rke2"; inboundPorts = [ 80 ]; hostPorts = [ 6443 ]; }',
        (("--preset", "rke2"), ("--host-ports", "6443")),
        old_settings="PRESET=rke2\nINBOUND_PORTS=80\nHOST_PORTS=6443\n",
    ),
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
