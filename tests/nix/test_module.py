"""nix/module.nix evaluated with nixpkgs' real lib.evalModules (skipped without NIXPKGS_LIB).

NixOS itself is stubbed (tests/nix/stubs.nix): the options our module reads and sets,
with nixpkgs' types. What is tested is our module's options, defaults, type checks,
assertions, warnings and the configuration it produces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mullvad_allow_k8s import marks
from mullvad_allow_k8s.presets import PRESETS
from mullvad_allow_k8s.settings import CUSTOM_PRESET, parse_json, resolve
from tests.nix.cases import DEFAULTS_NIX, MODULE_ONLY, schema
from tests.nix.nixeval import (
    GENERATE_SH,
    ROOT,
    eval_error,
    evaluate,
    module_expr,
    module_settings,
)

FIELDS = schema()
ENABLED = "{ services.mullvadAllowK8s.enable = true; }"
MULLVAD_ON = "services.mullvad-vpn.enable = true;"
# No warning expected: Mullvad on, and a loose reverse-path filter.
QUIET = MULLVAD_ON + ' networking.firewall.checkReversePath = "loose";'


def ev(lib: Path, config: str, select: str) -> Any:
    return evaluate(module_expr(lib, config, select))


def enabled(settings: str = "", other: str = QUIET) -> str:
    """A configuration with our module on, `settings` inside services.mullvadAllowK8s."""
    return f"{{ services.mullvadAllowK8s = {{ enable = true; {settings} }}; {other} }}"


def problems(lib: Path, config: str) -> dict[str, list[str]]:
    out = ev(lib, config, "{ inherit failed; inherit (config) warnings; }")
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------- options vs schema


def test_every_schema_field_has_exactly_one_option_and_vice_versa(nixpkgs_lib: Path) -> None:
    names = set(ev(nixpkgs_lib, "{ }", "builtins.attrNames options"))
    assert names >= MODULE_ONLY
    assert sorted(names - MODULE_ONLY) == sorted(f["nix_option"] for f in FIELDS)


def test_option_defaults_match_the_schema_defaults(nixpkgs_lib: Path) -> None:
    data = module_settings(nixpkgs_lib, ENABLED)
    raw = parse_json(json.dumps(data))
    expected = {f["key"]: f["default"] for f in FIELDS}
    # The one deliberate difference: "auto" would read /proc of the build machine.
    assert (expected.pop("EPHEMERAL_PORTS"), raw.pop("EPHEMERAL_PORTS")) == (
        "auto",
        "32768-60999",
    )
    assert raw == expected
    # And as resolved settings, on a machine with Linux's default port range, the
    # module's defaults are the other front ends' defaults.
    facts = FixedFacts((32768, 60999))
    assert resolve([parse_json(json.dumps(data))], facts) == resolve([], facts)


def test_defaults_literal_used_by_the_mapping_tests_is_the_modules(nixpkgs_lib: Path) -> None:
    names = " ".join(f["nix_option"] for f in FIELDS)
    got = ev(nixpkgs_lib, ENABLED, f"{{ inherit (cfg) {names}; }}")
    assert got == evaluate(DEFAULTS_NIX)


def test_preset_choices_are_the_generators(nixpkgs_lib: Path) -> None:
    description = ev(nixpkgs_lib, "{ }", "options.preset.type.description")
    assert sorted(re.findall(r'"([^"]+)"', description)) == sorted([*PRESETS, CUSTOM_PRESET])


def test_descriptions_and_documented_defaults(nixpkgs_lib: Path) -> None:
    # Every option is documented; computed defaults say what they are.
    docs = ev(
        nixpkgs_lib,
        "{ }",
        "builtins.mapAttrs (_: o: { d = o.description or null; t = o ? defaultText; }) options",
    )
    assert all(v["d"] for v in docs.values()), docs
    for name in ("package", "ephemeralPorts", "loader", "generated"):
        assert docs[name]["t"], name


def test_option_docs_render_without_touching_pkgs(nixpkgs_lib: Path) -> None:
    # What the NixOS manual does with our options; any default that needs pkgs must
    # have a defaultText, or building the manual fails.
    docs = evaluate(
        module_expr(
            nixpkgs_lib,
            "{ }",
            "map (o: { inherit (o) name description; default = o.default or null; }) "
            "(lib.optionAttrSetToDocList options)",
            pkgs='throw "pkgs used while rendering the option docs"',
        )
    )
    names = {d["name"].removeprefix("services.mullvadAllowK8s.") for d in docs}
    assert names == MODULE_ONLY | {f["nix_option"] for f in FIELDS}
    assert all(d["description"] for d in docs)


# ---------------------------------------------------------------- what it configures


def test_disabled_module_configures_nothing(nixpkgs_lib: Path) -> None:
    out = ev(
        nixpkgs_lib,
        "{ }",
        "{ inherit failed; inherit (config) warnings environment systemd; "
        "tables = config.networking.nftables.tables; }",
    )
    assert out == {
        "failed": [],
        "warnings": [],
        "environment": {"etc": {}, "systemPackages": []},
        "systemd": {"packages": [], "services": {}},
        "tables": {},
    }


def test_defaults_without_nftables_use_our_unit(nixpkgs_lib: Path) -> None:
    out = ev(
        nixpkgs_lib,
        enabled(),
        "{ inherit (cfg) loader; inherit (config) environment systemd; "
        "tables = config.networking.nftables.tables; gen = cfg.generated.outPath; "
        "pkg = cfg.package.name; }",
    )
    gen = out["gen"]
    pkg = "/nix/store/00000000000000000000000000000000-mullvad-allow-k8s-0.0.0"
    assert out["loader"] == "unit"
    assert out["pkg"] == "mullvad-allow-k8s-0.0.0"  # pkgs.mullvad-allow-k8s (the overlay's)
    assert out["tables"] == {}
    assert out["environment"]["etc"] == {
        "nftables.d/k8s_bypass_mullvad.nft": {"source": f"{gen}/k8s_bypass_mullvad.nft"},
        "default/mullvad-allow-k8s": {"source": f"{gen}/settings.env"},
    }
    assert out["systemd"]["packages"] == [out["environment"]["systemPackages"][0]]
    assert out["systemd"]["services"] == {
        "mullvad-allow-k8s": {
            "wantedBy": ["multi-user.target"],
            "reloadTriggers": [gen],
            "serviceConfig": {"ExecReload": ["", f"{pkg}/bin/mullvad-allow-k8s apply --from-file"]},
        }
    }


def test_the_settings_file_is_where_the_cli_looks_first(nixpkgs_lib: Path) -> None:
    from mullvad_allow_k8s.cli import SETTINGS_FILES  # noqa: PLC0415

    etc = ev(nixpkgs_lib, enabled(), "builtins.attrNames config.environment.etc")
    assert SETTINGS_FILES[0] == "/etc/default/mullvad-allow-k8s"
    assert "default/mullvad-allow-k8s" in etc


def test_the_units_exec_start_needs_no_override(nixpkgs_lib: Path) -> None:
    # The package's unit loads the file named by the settings file at boot; the module
    # replaces only ExecReload (the packaged one would write into read-only /etc).
    unit = (ROOT / "data" / "mullvad-allow-k8s.service").read_text()
    assert "ExecStart=/usr/bin/mullvad-allow-k8s apply --from-file\n" in unit
    assert "ExecReload=/usr/bin/mullvad-allow-k8s apply\n" in unit


def test_typical_configuration_with_nftables(nixpkgs_lib: Path) -> None:
    config = enabled(
        'preset = "k3s"; machineAddresses = [ "192.168.1.20" ]; bridgeTable = true;',
        QUIET + " networking.nftables.enable = true;",
    )
    out = ev(
        nixpkgs_lib,
        config,
        "{ inherit failed; inherit (config) warnings; inherit (cfg) loader; "
        "gen = cfg.generated.outPath; tables = config.networking.nftables.tables; "
        "services = config.systemd.services; }",
    )
    gen = out["gen"]
    assert (out["failed"], out["warnings"], out["services"]) == ([], [], {})
    assert out["loader"] == "nftables"
    assert out["tables"] == {
        marks.TABLE_NAME: {
            "enable": True,
            "name": marks.TABLE_NAME,
            "family": marks.TABLE_FAMILY,
            "content": f'include "{gen}/inet-body.nft"',
        },
        f"{marks.BRIDGE_TABLE_NAME}-bridge": {
            "enable": True,
            "name": marks.BRIDGE_TABLE_NAME,
            "family": "bridge",
            "content": f'include "{gen}/bridge-body.nft"',
        },
    }
    settings = module_settings(nixpkgs_lib, config)
    assert settings["PRESET"] == "k3s"
    assert settings["MACHINE_ADDRESSES"] == ["192.168.1.20"]
    assert settings["BRIDGE_TABLE"] is True


SEED_DELETIONS = "".join(f"table {f} {n}\ndelete table {f} {n}\n" for f, n in marks.SEED_TABLES)


def test_nftables_loader_deletes_the_superseded_tables_like_the_file(nixpkgs_lib: Path) -> None:
    nft_config = enabled("", QUIET + " networking.nftables.enable = true;")
    assert ev(nixpkgs_lib, nft_config, "config.networking.nftables.extraDeletions") == (
        SEED_DELETIONS
    )
    assert ev(nixpkgs_lib, enabled(), "config.networking.nftables.extraDeletions") == ""


def test_no_bridge_table_unless_asked(nixpkgs_lib: Path) -> None:
    config = enabled("", QUIET + " networking.nftables.enable = true;")
    tables = ev(nixpkgs_lib, config, "builtins.attrNames config.networking.nftables.tables")
    assert tables == [marks.TABLE_NAME]


def test_the_build_step_runs_generate_sh_with_the_package(nixpkgs_lib: Path) -> None:
    out = ev(
        nixpkgs_lib,
        enabled(),
        "{ inherit (cfg.generated) buildCommand; inherit (cfg.generated.env) passAsFile; "
        "inputs = map (p: p.name) cfg.generated.env.nativeBuildInputs; }",
    )
    assert re.fullmatch(
        r'sh /nix/store/[a-z0-9]{32}-generate\.sh "\$settingsPath" "\$out"\n', out["buildCommand"]
    )
    assert GENERATE_SH.name == "generate.sh"
    assert out["passAsFile"] == ["settings"]
    assert out["inputs"] == ["mullvad-allow-k8s-0.0.0"]


def test_package_falls_back_to_this_tree(nixpkgs_lib: Path) -> None:
    no_overlay = 'builtins.removeAttrs stubs.pkgs [ "mullvad-allow-k8s" ]'
    expr = module_expr(nixpkgs_lib, enabled(), "toString cfg.package.path", pkgs=no_overlay)
    assert evaluate(expr) == str(ROOT / "nix" / "package.nix")


def test_ephemeral_ports_follow_the_sysctl(nixpkgs_lib: Path) -> None:
    config = enabled(
        "",
        QUIET + ' boot.kernel.sysctl."net.ipv4.ip_local_port_range" = "1024 65000";',
    )
    assert ev(nixpkgs_lib, config, "cfg.ephemeralPorts") == "1024-65000"
    assert problems(nixpkgs_lib, config) == {"failed": [], "warnings": []}


# ---------------------------------------------------------------- assertions, warnings


def test_flush_ruleset_is_refused(nixpkgs_lib: Path) -> None:
    config = enabled(
        "",
        QUIET + " networking.nftables = { enable = true; flushRuleset = true; };",
    )
    (message,) = problems(nixpkgs_lib, config)["failed"]
    assert message.startswith("services.mullvadAllowK8s: networking.nftables.flushRuleset is true")
    assert "deletes Mullvad's\n`inet mullvad` table" in message
    assert "kube-proxy's tables" in message
    assert "Set networking.nftables.flushRuleset = false;" in message


def test_flush_ruleset_without_nftables_is_irrelevant(nixpkgs_lib: Path) -> None:
    config = enabled("", QUIET + " networking.nftables.flushRuleset = true;")
    assert problems(nixpkgs_lib, config)["failed"] == []


def test_nftables_loader_needs_nftables(nixpkgs_lib: Path) -> None:
    (message,) = problems(nixpkgs_lib, enabled('loader = "nftables";'))["failed"]
    assert message == (
        'services.mullvadAllowK8s.loader = "nftables" needs networking.nftables.enable = true;\n'
        'use loader = "unit" otherwise.\n'
    )


def test_unit_loader_with_nftables_is_allowed(nixpkgs_lib: Path) -> None:
    config = enabled('loader = "unit";', QUIET + " networking.nftables.enable = true;")
    assert problems(nixpkgs_lib, config) == {"failed": [], "warnings": []}
    assert ev(nixpkgs_lib, config, "config.networking.nftables.tables") == {}


def test_output_outside_etc_is_refused(nixpkgs_lib: Path) -> None:
    config = enabled('output = "/var/lib/k8s.nft";')
    (message,) = problems(nixpkgs_lib, config)["failed"]
    assert message.startswith('services.mullvadAllowK8s.output = "/var/lib/k8s.nft": the file')
    assert "must be a path under /etc/" in message


def test_mullvad_off_warns(nixpkgs_lib: Path) -> None:
    config = enabled("", 'networking.firewall.checkReversePath = "loose";')
    (warning,) = problems(nixpkgs_lib, config)["warnings"]
    assert warning.startswith(
        "services.mullvadAllowK8s is enabled but services.mullvad-vpn.enable is false."
    )
    assert "it changes nothing" in warning


@pytest.mark.parametrize(
    "firewall",
    [
        "networking.firewall.checkReversePath = true;",
        'networking.firewall.checkReversePath = "strict";',
        'networking.firewall.checkReversePath = "loose";',
        "networking.firewall.enable = false;",
        "networking.nftables.enable = true;",
    ],
)
def test_no_reverse_path_warning_with_any_firewall(nixpkgs_lib: Path, firewall: str) -> None:
    """Our prerouting chain runs before both firewalls' rpfilter, so none needs a warning."""
    assert marks.PREROUTING_PRIORITY.value < -150  # iptables mangle, NixOS' iptables rpfilter
    warnings = problems(nixpkgs_lib, enabled("", MULLVAD_ON + firewall))["warnings"]
    assert warnings == []


def test_ephemeral_ports_different_from_the_sysctl_warn(nixpkgs_lib: Path) -> None:
    config = enabled(
        'ephemeralPorts = "40000-50000";',
        QUIET + ' boot.kernel.sysctl."net.ipv4.ip_local_port_range" = "1024 65000";',
    )
    (warning,) = problems(nixpkgs_lib, config)["warnings"]
    assert warning.startswith('services.mullvadAllowK8s.ephemeralPorts = "40000-50000" differs')
    assert '"net.ipv4.ip_local_port_range" = "1024 65000"' in warning


# ---------------------------------------------------------------- type errors


@pytest.mark.parametrize(
    ("setting", "option"),
    [
        ('preset = "k9s";', "preset"),
        ('bridgeTable = "yes";', "bridgeTable"),
        ("inboundPorts = [ 70000 ];", "inboundPorts"),
        ('inboundPorts = [ "80-" ];', "inboundPorts"),
        ("machineAddresses = [ ];", "machineAddresses"),
        ('ephemeralPorts = "auto";', "ephemeralPorts"),
        ('podCidrs = "10.42.0.0/16";', "podCidrs"),
    ],
)
def test_type_errors_name_the_option(nixpkgs_lib: Path, setting: str, option: str) -> None:
    err = eval_error(module_expr(nixpkgs_lib, enabled(setting), "cfg"))
    assert f"services.mullvadAllowK8s.{option}" in err
    assert "is not of type" in err


# ---------------------------------------------------------------- the documented example

EXAMPLE = ROOT / "nix" / "example.nix"


@pytest.mark.parametrize("nftables", [False, True], ids=["iptables-firewall", "nftables"])
def test_example_configuration_is_clean(nixpkgs_lib: Path, nftables: bool) -> None:
    text = EXAMPLE.read_text()
    if nftables:
        text = text.replace("# networking.nftables.", "networking.nftables.")
        assert text.count("\n  networking.nftables.") == 2
    out = ev(
        nixpkgs_lib,
        f"({text})",
        "{ inherit failed; inherit (config) warnings; inherit (cfg) loader preset; }",
    )
    assert out == {
        "failed": [],
        "warnings": [],
        "loader": "nftables" if nftables else "unit",
        "preset": "k3s",
    }


def test_readme_quotes_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    if "services.mullvadAllowK8s" not in readme:
        pytest.skip("README.md has no NixOS section yet")
    body = EXAMPLE.read_text().split("\n", 2)[2]  # without the two-line file comment
    assert body in readme
