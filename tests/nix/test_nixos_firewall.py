"""The module beside NixOS' own nftables.nix and firewall (issue 24): evaluated with the
real nixpkgs modules (tests/nix/stubs.nix), and their rules loaded in a namespace."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mullvad_allow_k8s import nft
from mullvad_allow_k8s.presets import PRESETS
from mullvad_allow_k8s.settings import CUSTOM_PRESET, resolve
from tests.conftest import Netns
from tests.nix.nixeval import (
    MAPPING,
    NFTABLES_RULES,
    SCRIPTS_BY_TEXT,
    build,
    evaluate,
    module_expr,
    nix_path,
    nixos_rules,
)

QUIET = "services.mullvad-vpn.enable = true;"
FLUSH_REFUSED = "services.mullvadAllowK8s: networking.nftables.flushRuleset is true"


def enabled(settings: str = "", other: str = "", nftables: bool = True) -> str:
    """Ours and Mullvad's daemon on, and NixOS' nftables firewall (else the iptables one)."""
    return (
        f"{{ services.mullvadAllowK8s = {{ enable = true; {settings} }}; {QUIET} "
        f"networking.nftables.enable = {'true' if nftables else 'false'}; {other} }}"
    )


def ev(lib: Path, config: str, select: str) -> Any:
    return evaluate(module_expr(lib, config, select))


# ---------------------------------------------------------------- flushRuleset (finding 2)


@pytest.mark.parametrize(
    ("other", "flushes"),
    [
        ("", False),  # the harness's stateVersion: this lib's release
        ('system.stateVersion = "24.05";', False),
        # nftables.nix: mkDefault (stateVersion < 23.11 || ruleset or rulesetFile set)
        ('system.stateVersion = "23.05";', True),
        ('system.stateVersion = "22.11";', True),
        ('networking.nftables.ruleset = "table inet mine { }";', True),
        ('networking.nftables.rulesetFile = "/etc/mine.nft";', True),
        # Said explicitly, false wins over nftables.nix's default.
        ('system.stateVersion = "23.05"; networking.nftables.flushRuleset = false;', False),
        (
            'networking.nftables.ruleset = "table inet mine { }"; '
            "networking.nftables.flushRuleset = false;",
            False,
        ),
    ],
)
def test_flush_ruleset_as_nixos_defaults_it_is_refused(
    nixpkgs_lib: Path, other: str, flushes: bool, tmp_path: Path
) -> None:
    """networking.nftables.flushRuleset's real default (nftables.nix) is true for old
    stateVersions and hand-written rulesets: every nftables.service start would then run
    `flush ruleset` (Mullvad's and kube-proxy's tables gone), and the module refuses."""
    out = evaluate(
        module_expr(
            nixpkgs_lib,
            enabled("", other),
            "{ inherit failed; flush = config.networking.nftables.flushRuleset; "
            f"rules = {NFTABLES_RULES}; }}",
            pkgs=SCRIPTS_BY_TEXT,
        )
    )
    assert out["flush"] is flushes
    refused = [m for m in out["failed"] if m.startswith(FLUSH_REFUSED)]
    assert len(refused) == (1 if flushes else 0)
    # What the refusal is about: nftables.service's deletions are then `flush ruleset`
    # (else our table's own `delete table`).
    rules = nixos_rules(out["rules"], tmp_path)
    deletions_text = (tmp_path / "nixos-deletions.nft").read_text()
    assert ("\nflush ruleset\n" in deletions_text) is flushes
    assert ("delete table inet mullvad_allow_k8s" in deletions_text) is not flushes
    assert f'include "{tmp_path / "nixos-deletions.nft"}"' in rules


# ---------------------------------------------------------------- bridgeTable (finding 4)

BRIDGE_REFUSED = 'services.mullvadAllowK8s.loader = "nftables" with bridgeTable = true'


def test_bridge_table_is_loaded_by_our_unit_not_by_nftables_service(nixpkgs_lib: Path) -> None:
    """nftables.service loads every table in one transaction: a bridge table with `ct`
    on a kernel without nf_conntrack_bridge would fail all of it, NixOS' firewall
    included. With bridgeTable our unit loads our tables, on their own."""
    out = evaluate(
        module_expr(
            nixpkgs_lib,
            enabled("bridgeTable = true;"),
            "{ inherit failed; inherit (cfg) loader; rules = " + NFTABLES_RULES + "; "
            'services = builtins.attrNames (ours [ "systemd" "services" ]); }',
            pkgs=SCRIPTS_BY_TEXT,
        )
    )
    assert out["failed"] == []
    assert out["loader"] == "unit"
    assert out["services"] == ["mullvad-allow-k8s"]
    assert "table bridge" not in out["rules"]
    assert "mullvad_allow_k8s" not in out["rules"]
    assert "table inet nixos-fw {" in out["rules"]


def test_bridge_table_with_the_nftables_loader_is_refused(nixpkgs_lib: Path) -> None:
    failed = ev(nixpkgs_lib, enabled('bridgeTable = true; loader = "nftables";'), "failed")
    (message,) = failed
    assert message.startswith(BRIDGE_REFUSED)
    assert "nf_conntrack_bridge" in message
    assert 'loader = "unit"' in message


@pytest.mark.kernel
def test_bridge_table_leaves_nixos_firewall_loaded_on_a_kernel_without_bridge_conntrack(
    nixpkgs_lib: Path,
    tmp_path: Path,
    cli_on_path: dict[str, str],
    netns_factory: Callable[[str], Netns],
) -> None:
    """The rules nftables.service runs (real nftables.nix and firewall-nftables.nix)
    for a configuration with bridgeTable = true, loaded on this kernel, which lacks
    nf_conntrack_bridge: NixOS' firewall table loads."""
    if nft.bridge_conntrack_supported():
        pytest.skip("this kernel has nf_conntrack_bridge: the failure needs one without")
    config = enabled("bridgeTable = true;")
    gen, settings, script = evaluate(
        module_expr(
            nixpkgs_lib,
            config,
            f"[ cfg.generated.outPath cfg.generated.env.settings {NFTABLES_RULES} ]",
            pkgs=SCRIPTS_BY_TEXT,
        )
    )
    out = build(settings, tmp_path, cli_on_path)
    rules = tmp_path / "nixos-rules.nft"
    rules.write_text(nixos_rules(script, tmp_path).replace(gen, str(out)))
    ns = netns_factory("nixbr")
    load = ns.sh(f"nft -f {rules}", check=False)
    assert load.returncode == 0, load.stderr
    assert "table inet nixos-fw" in ns.sh("nft list tables").stdout


# ---------------------------------------------------------------- openFirewall (finding 3)

NODE_PORTS = {"from": 30000, "to": 32767}  # kube-proxy's --service-node-port-range default
FIREWALL = (
    "{ inherit failed; inherit (config.networking.firewall) allowedTCPPorts "
    "allowedTCPPortRanges allowedUDPPorts allowedUDPPortRanges; }"
)


def opened(lib: Path, settings: str, other: str = "") -> dict[str, Any]:
    out = ev(lib, enabled(settings, other), FIREWALL)
    assert isinstance(out, dict)
    return out


def test_open_firewall_is_off_by_default(nixpkgs_lib: Path) -> None:
    """NixOS' convention (services.openssh.openFirewall and the rest): nothing is opened
    unless asked, so hostPorts stay closed by NixOS' firewall, as issue 24 found."""
    assert ev(nixpkgs_lib, enabled(), "cfg.openFirewall") is False
    assert opened(nixpkgs_lib, "") == {
        "failed": [],
        "allowedTCPPorts": [],
        "allowedTCPPortRanges": [],
        "allowedUDPPorts": [],
        "allowedUDPPortRanges": [],
    }


BOTH = [NODE_PORTS]  # TCP and UDP


@pytest.mark.parametrize(
    ("settings", "tcp", "tcp_ranges", "udp_ranges"),
    [
        ("", [6443], BOTH, BOTH),  # kubeadm's API server
        ('preset = "rke2";', [6443, 9345], BOTH, BOTH),
        ('preset = "microk8s";', [16443], BOTH, BOTH),
        ('preset = "minikube-none";', [8443], BOTH, BOTH),
        (
            'preset = "k3s"; hostPorts = [ 6443 "8000-8099" ];',
            [6443],
            [{"from": 8000, "to": 8099}, NODE_PORTS],
            BOTH,
        ),
        ("hostPorts = [ ];", [], BOTH, BOTH),
        (
            'preset = "custom"; podCidrs = [ "10.42.0.0/16" ]; serviceCidrs = [ "10.43.0.0/16" ];',
            [],
            BOTH,
            BOTH,
        ),
        # Nodes in containers or VMs: their NodePorts are not this machine's.
        ('preset = "kind";', [], [], []),
        ('preset = "minikube-kvm2";', [], [], []),
        ('preset = "k3d"; hostPorts = [ 6550 ];', [6550], [], []),
        # Run time: the preset is detected, so the ports must be named.
        ('preset = "auto"; hostPorts = [ 6443 ];', [6443], BOTH, BOTH),
    ],
)
def test_open_firewall_opens_the_host_ports_and_node_ports(
    nixpkgs_lib: Path,
    settings: str,
    tcp: list[int],
    tcp_ranges: list[dict[str, int]],
    udp_ranges: list[dict[str, int]],
) -> None:
    for nftables in (True, False):
        out = ev(nixpkgs_lib, enabled(f"{settings} openFirewall = true;", "", nftables), FIREWALL)
        assert out == {
            "failed": [],
            "allowedTCPPorts": tcp,
            "allowedTCPPortRanges": tcp_ranges,
            "allowedUDPPorts": [],
            "allowedUDPPortRanges": udp_ranges,
        }


def test_open_firewall_needs_the_ports_named_when_the_preset_is_detected(
    nixpkgs_lib: Path,
) -> None:
    (message,) = ev(nixpkgs_lib, enabled('preset = "auto"; openFirewall = true;'), "failed")
    assert message.startswith('services.mullvadAllowK8s.openFirewall = true with preset = "auto"')
    assert "Set services.mullvadAllowK8s.hostPorts" in message


def test_open_firewall_adds_to_what_the_configuration_opens(nixpkgs_lib: Path) -> None:
    out = opened(
        nixpkgs_lib,
        "openFirewall = true;",
        "networking.firewall.allowedTCPPorts = [ 22 ]; "
        "networking.firewall.allowedUDPPortRanges = [ { from = 60000; to = 61000; } ];",
    )
    assert out["allowedTCPPorts"] == [22, 6443]
    assert out["allowedUDPPortRanges"] == [{"from": 60000, "to": 61000}, NODE_PORTS]


def test_open_firewall_in_the_rules_of_both_nixos_firewalls(nixpkgs_lib: Path) -> None:
    """What the real firewall-nftables.nix and firewall-iptables.nix make of it."""
    nft_table = ev(
        nixpkgs_lib,
        enabled("openFirewall = true;"),
        'config.networking.nftables.tables."nixos-fw".content',
    )
    assert "tcp dport { 6443, 30000-32767 } accept" in nft_table
    assert "udp dport { 30000-32767 } accept" in nft_table
    closed = ev(nixpkgs_lib, enabled(), 'config.networking.nftables.tables."nixos-fw".content')
    assert "6443" not in closed
    iptables = enabled("openFirewall = true;", nftables=False)
    start = evaluate(
        module_expr(
            nixpkgs_lib,
            iptables,
            "config.systemd.services.firewall.serviceConfig.ExecStart",
            pkgs=SCRIPTS_BY_TEXT,
        )
    )
    assert start.startswith("@@@<") and start.endswith(">@@/bin/firewall-start firewall-start")
    assert "ip46tables -A nixos-fw -p tcp --dport 6443 -j nixos-fw-accept" in start
    assert "ip46tables -A nixos-fw -p tcp --dport 30000:32767 -j nixos-fw-accept" in start
    assert "ip46tables -A nixos-fw -p udp --dport 30000:32767 -j nixos-fw-accept" in start


def test_the_modules_preset_ports_are_the_generators(nix: str) -> None:
    """nix/settings.nix restates each preset's HOST_PORTS and whether its nodes are
    this machine (openFirewall needs them at evaluation; the generator runs at build
    time): the generator's presets say the same."""
    got = evaluate(
        f"let m = import {nix_path(MAPPING)}; in {{ inherit (m) presetHostPorts nodesElsewhere; }}"
    )
    assert got["presetHostPorts"] == {
        **{name: list(p.host_ports) for name, p in PRESETS.items()},
        CUSTOM_PRESET: [],
    }
    assert sorted(got["nodesElsewhere"]) == sorted(
        name for name, p in PRESETS.items() if p.node_networks and not p.pod_cidrs
    )
    # custom: no defaults, so no host ports (the generator's own resolution).
    raw = {"PRESET": CUSTOM_PRESET, "POD_CIDRS": "10.42.0.0/16", "SERVICE_CIDRS": "10.43.0.0/16"}
    assert resolve([raw]).host_ports == ()
