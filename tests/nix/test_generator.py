"""The ruleset NixOS builds equals the CLI's for the same settings, byte for byte.

The JSON comes from Nix (the module evaluated with nixpkgs' lib, or nix/settings.nix
alone when NIXPKGS_LIB is unset); nix/generate.sh, the module's build step, turns it
into files with this tree's CLI; the reference is the CLI run from the equivalent
flags, as a Debian or RPM user would run it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mullvad_allow_k8s import marks
from mullvad_allow_k8s.settings import FIELDS
from tests.conftest import Netns
from tests.nix.cases import BUILD_TIME_SETTINGS, CASES, OLD_CASES, Case, cli
from tests.nix.nixeval import (
    GENERATE_SH,
    MAPPING,
    NFTABLES_RULES,
    SCRIPTS_BY_TEXT,
    build,
    evaluate,
    module_expr,
    nix_path,
    nixos_rules,
)

ALL_CASES = (*CASES, *OLD_CASES)
# (source of the JSON, case): the retired 0.1 options exist only in the module.
RUNS = [
    pytest.param(source, case, id=f"{source}-{case.name}")
    for source in ("mapping", "module")
    for case in (ALL_CASES if source == "module" else CASES)
]


def settings_text(source: str, case: Case, request: pytest.FixtureRequest) -> str:
    """The exact JSON text the derivation receives (its `settings` attribute)."""
    if source == "module":
        lib = request.getfixturevalue("nixpkgs_lib")
        # The 0.1 cases warn (retired options): their warnings are tested in test_module.
        select = "cfg.generated.env.settings"
        text = evaluate(
            module_expr(lib, case.config(), select, warnings_ok=bool(case.old_settings))
        )
    else:
        request.getfixturevalue("nix")
        text = evaluate(
            f"builtins.toJSON ((import {nix_path(MAPPING)}).toGeneratorSettings {case.cfg()})"
        )
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize(("source", "case"), RUNS)
def test_ruleset_equals_the_cli_from_flags(
    source: str,
    case: Case,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cli_on_path: dict[str, str],
) -> None:
    out = build(settings_text(source, case, request), tmp_path, cli_on_path)
    expected = cli("generate", "--settings", "none", *case.argv)
    assert (out / "k8s_bypass_mullvad.nft").read_text() == expected

    # The settings file NixOS installs reproduces the same file (status/doctor use it).
    again = cli("generate", "--settings", str(out / "settings.env"))
    assert again == expected
    from_flags = json.loads(cli("settings", "--format", "json", "--settings", "none", *case.argv))
    from_file = json.loads(
        cli("settings", "--format", "json", "--settings", str(out / "settings.env"))
    )
    assert from_file == from_flags


@pytest.mark.parametrize("case", OLD_CASES, ids=lambda c: c.name)
def test_old_configuration_builds_what_the_cli_makes_of_the_old_settings_file(
    case: Case, request: pytest.FixtureRequest, tmp_path: Path, cli_on_path: dict[str, str]
) -> None:
    """The module's migration of 0.1 options is the generator's settings.migrate."""
    out = build(settings_text("module", case, request), tmp_path, cli_on_path)
    old = tmp_path / "old-settings"
    old.write_text(case.old_settings)
    # What the old file leaves to the defaults, the module's build-time defaults.
    given = {line.split("=", 1)[0] for line in case.old_settings.splitlines()}
    flags = [
        word
        for key, value in BUILD_TIME_SETTINGS.items()
        if key not in given
        for word in (FIELDS[key].flag, value)
    ]
    migrated = cli("generate", "--settings", str(old), *flags)
    assert (out / "k8s_bypass_mullvad.nft").read_text() == migrated
    # Nothing retired reaches the generator or the installed settings file.
    assert "INBOUND_PORTS" not in (out / "settings.json").read_text()
    assert "EPHEMERAL_PORTS" not in (out / "settings.env").read_text()
    assert "INBOUND_PORTS" not in (out / "settings.env").read_text()


@pytest.mark.parametrize(("source", "case"), RUNS)
def test_table_bodies_rebuild_the_tables(
    source: str,
    case: Case,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cli_on_path: dict[str, str],
) -> None:
    out = build(settings_text(source, case, request), tmp_path, cli_on_path)
    full = (out / "k8s_bypass_mullvad.nft").read_text()
    inet = (out / "inet-body.nft").read_text()
    bridge = (out / "bridge-body.nft").read_text()
    assert f"table {marks.TABLE_FAMILY} {marks.TABLE_NAME} {{\n{inet}}}\n" in full
    assert '\tcomment "mullvad-allow-k8s ' in inet  # the fingerprint `status` compares
    if ("--bridge-table", "yes") in case.flags:
        assert bridge
        assert f"table bridge {marks.BRIDGE_TABLE_NAME} {{\n{bridge}}}\n" in full
    else:
        assert bridge == ""
        assert "\ntable bridge mullvad_allow_k8s {" not in full


def test_rejected_settings_fail_the_build_with_the_generators_message(
    nix: str, tmp_path: Path, cli_on_path: dict[str, str]
) -> None:
    settings = tmp_path / "settings-json"
    settings.write_text(json.dumps({"POD_CIDRS": ["10.244.0.1/16"], "HOST_PORTS": ["6443"]}))
    proc = subprocess.run(
        ["sh", str(GENERATE_SH), str(settings), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=cli_on_path,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "mullvad-allow-k8s: error: POD_CIDRS: '10.244.0.1/16': host bits set "
        "(did you mean 10.244.0.0/16?)",
        "services.mullvadAllowK8s: the generator rejected the settings above; its KEYs are "
        "the module's options in camelCase (POD_CIDRS is podCidrs).",
    ]


# With bridgeTable our unit loads the tables, never nftables.service (finding 4 of issue
# 24: tests/nix/test_nixos_firewall.py).
NFTABLES_LOADER_CASES = [c for c in ALL_CASES if ("--bridge-table", "yes") not in c.flags]


@pytest.mark.kernel
@pytest.mark.parametrize("case", NFTABLES_LOADER_CASES, ids=lambda c: c.name)
def test_nftables_tables_load_the_same_ruleset_as_the_file(
    nixpkgs_lib: Path,
    case: Case,
    tmp_path: Path,
    cli_on_path: dict[str, str],
    netns_factory: Callable[[str], Netns],
) -> None:
    """What NixOS' nftables.service loads (the real nftables.nix's rules script, with our
    tables) loads what the file loads."""
    warnings_ok = bool(case.old_settings)
    text = evaluate(
        module_expr(
            nixpkgs_lib, case.config(), "cfg.generated.env.settings", warnings_ok=warnings_ok
        )
    )
    # NixOS' own firewall table off: only ours is compared.
    nixos = " // { networking.nftables.enable = true; networking.firewall.enable = false; }"
    gen, script = evaluate(
        module_expr(
            nixpkgs_lib,
            case.config() + nixos,
            f"[ cfg.generated.outPath {NFTABLES_RULES} ]",
            pkgs=SCRIPTS_BY_TEXT,
            warnings_ok=warnings_ok,
        )
    )
    out = build(text, tmp_path, cli_on_path)
    rules = nixos_rules(script, tmp_path).replace(gen, str(out))
    (tmp_path / "nixos-rules.nft").write_text(rules)

    listings = []
    for path in (out / "k8s_bypass_mullvad.nft", tmp_path / "nixos-rules.nft"):
        ns = netns_factory("nix")
        # The tables of the old hand-edited file, which both ways must remove.
        ns.sh("; ".join(f"nft add table {f} {n}" for f, n in marks.SEED_TABLES))
        ns.sh(f"nft -f {path}")
        listings.append(ns.sh("nft list ruleset").stdout)
    assert listings[0] == listings[1]
    assert f"table inet {marks.TABLE_NAME} {{" in listings[0]
    assert not any(f"table {f} {n} " in listings[0] for f, n in marks.SEED_TABLES)
