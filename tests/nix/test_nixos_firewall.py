"""The module beside NixOS' own nftables.nix and firewall (issue 24): evaluated with the
real nixpkgs modules (tests/nix/stubs.nix), and their rules loaded in a namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.nix.nixeval import NFTABLES_RULES, SCRIPTS_BY_TEXT, evaluate, module_expr, nixos_rules

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
