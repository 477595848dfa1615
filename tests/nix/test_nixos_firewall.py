"""The module beside NixOS' own nftables.nix and firewall (issue 24): evaluated with the
real nixpkgs modules (tests/nix/stubs.nix), and their rules loaded in a namespace."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mullvad_allow_k8s import nft
from tests.conftest import Netns
from tests.nix.nixeval import (
    NFTABLES_RULES,
    SCRIPTS_BY_TEXT,
    build,
    evaluate,
    module_expr,
    nixos_rules,
)

QUIET = "services.mullvad-vpn.enable = true;"
FLUSH_REFUSED = "services.mullvadAllowK8s: networking.nftables.flushRuleset is true"


def enabled(settings: str = "", other: str = "") -> str:
    return (
        f"{{ services.mullvadAllowK8s = {{ enable = true; {settings} }}; {QUIET} "
        f"networking.nftables.enable = true; {other} }}"
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
