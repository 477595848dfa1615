"""nix/module.nix evaluated with nixpkgs' real lib.evalModules and the real NixOS modules
it meets (nftables, firewall, mullvad-vpn, the systemd unit types: tests/nix/stubs.nix
says which, and what is stubbed); skipped without them. What is tested is our module's
options, defaults, type checks, assertions, warnings and the configuration it produces.
Warnings are errors unless a test reads them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from mullvad_allow_k8s import marks
from mullvad_allow_k8s.presets import FALLBACK_PRESET, PRESETS
from mullvad_allow_k8s.settings import (
    AUTO,
    CUSTOM_PRESET,
    PRESET_CHOICES,
    RETIRED,
    Detection,
    Field,
    SettingsError,
    detects,
    migrate,
    parse_json,
    parse_settings_file,
    resolve,
)
from tests.nix.cases import (
    BUILD_TIME_SETTINGS,
    DEFAULTS_NIX,
    MODULE_ONLY,
    RETIRED_OPTIONS,
    schema,
)
from tests.nix.nixeval import (
    GENERATE_SH,
    ROOT,
    NixError,
    eval_error,
    evaluate,
    module_expr,
    module_settings,
)

FIELDS = schema()
RUNTIME_OUTPUT = "/run/mullvad-allow-k8s/k8s_bypass_mullvad.nft"
ENABLED = "{ services.mullvadAllowK8s.enable = true; services.mullvad-vpn.enable = true; }"
MULLVAD_ON = "services.mullvad-vpn.enable = true;"
# No warning expected: Mullvad on, and a loose reverse-path filter.
QUIET = MULLVAD_ON + ' networking.firewall.checkReversePath = "loose";'


def ev(lib: Path, config: str, select: str, warnings_ok: bool = False) -> Any:
    return evaluate(module_expr(lib, config, select, warnings_ok=warnings_ok))


def enabled(settings: str = "", other: str = QUIET) -> str:
    """A configuration with our module on, `settings` inside services.mullvadAllowK8s."""
    return f"{{ services.mullvadAllowK8s = {{ enable = true; {settings} }}; {other} }}"


def problems(lib: Path, config: str) -> dict[str, list[str]]:
    out = ev(lib, config, "{ inherit failed; inherit (config) warnings; }", warnings_ok=True)
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------- options vs schema


def test_every_schema_field_has_exactly_one_option_and_vice_versa(nixpkgs_lib: Path) -> None:
    names = set(ev(nixpkgs_lib, "{ }", "builtins.attrNames options"))
    assert names >= MODULE_ONLY | RETIRED_OPTIONS
    # The retired options are left out by name: they have no schema field any more
    # (tests/nix/cases.py, RETIRED_OPTIONS); every other option is a field's.
    assert sorted(names - MODULE_ONLY - RETIRED_OPTIONS) == sorted(f["nix_option"] for f in FIELDS)
    assert not RETIRED_OPTIONS & {f["nix_option"] for f in FIELDS}


def test_retired_options_are_the_generators_retired_keys_invisible(nixpkgs_lib: Path) -> None:
    # Exactly the KEYs settings.RETIRED names, in camelCase like every other option.
    assert {Field(key, "", "", "").nix_option for key in RETIRED} == RETIRED_OPTIONS
    got = ev(
        nixpkgs_lib,
        ENABLED,
        "lib.genAttrs [ " + " ".join(f'"{n}"' for n in sorted(RETIRED_OPTIONS)) + " ] "
        "(n: { inherit (options.${n}) visible default description; value = cfg.${n}; })",
    )
    for name, opt in got.items():
        assert (opt["visible"], opt["default"], opt["value"]) == (False, None, None), name
        assert opt["description"].startswith("Retired in 0.2.0"), name


def test_option_defaults_match_the_schema_defaults(nixpkgs_lib: Path) -> None:
    # The schema's defaults, except the four that the CLI detects: the module declares
    # them (the build-time mode), as kubeadm's preset, PRESET=auto's fallback.
    data = module_settings(nixpkgs_lib, ENABLED)
    schema_defaults = {f["key"]: f["default"] for f in FIELDS}
    assert parse_json(json.dumps(data)) == schema_defaults | BUILD_TIME_SETTINGS
    assert BUILD_TIME_SETTINGS["PRESET"] == FALLBACK_PRESET
    assert not detects([parse_json(json.dumps(data))])
    # Resolved, they are what the CLI's defaults give on a machine where nothing is found.
    nothing: Detection = ([], [])
    cli_defaults = resolve([], lambda: nothing)
    assert cli_defaults.preset == AUTO
    assert resolve([parse_json(json.dumps(data))]) == cli_defaults._replace(
        preset=FALLBACK_PRESET, origins=()
    )


def test_preset_auto_defaults_are_the_schema_defaults(nixpkgs_lib: Path) -> None:
    # preset = "auto" makes the three ranges auto too: the CLI's defaults, but OUTPUT.
    data = module_settings(nixpkgs_lib, enabled('preset = "auto";'))
    schema_defaults = {f["key"]: f["default"] for f in FIELDS}
    assert parse_json(json.dumps(data)) == schema_defaults | {"OUTPUT": RUNTIME_OUTPUT}


def test_defaults_literal_used_by_the_mapping_tests_is_the_modules(nixpkgs_lib: Path) -> None:
    names = " ".join(f["nix_option"] for f in FIELDS)
    got = ev(nixpkgs_lib, ENABLED, f"{{ inherit (cfg) {names}; }}")
    assert got == evaluate(DEFAULTS_NIX)


def test_preset_choices_are_the_generators(nixpkgs_lib: Path) -> None:
    description = ev(nixpkgs_lib, "{ }", "options.preset.type.description")
    # In the order front ends offer them (debconf's select too).
    assert tuple(re.findall(r'"([^"]+)"', description)) == PRESET_CHOICES
    assert sorted(PRESET_CHOICES) == sorted([AUTO, *PRESETS, CUSTOM_PRESET])


def test_descriptions_and_documented_defaults(nixpkgs_lib: Path) -> None:
    # Every option is documented; computed defaults say what they are.
    docs = ev(
        nixpkgs_lib,
        "{ }",
        "builtins.mapAttrs (_: o: { d = o.description or null; t = o ? defaultText; }) options",
    )
    assert all(v["d"] for v in docs.values()), docs
    for name in (
        "package", "hostPorts", "loader", "generated",
        "podCidrs", "serviceCidrs", "nodeNetworks", "output",
    ):  # fmt: skip
        assert docs[name]["t"], name


def test_option_docs_render_without_touching_pkgs(nixpkgs_lib: Path) -> None:
    # What the NixOS manual does with our options; any default that needs pkgs must
    # have a defaultText, or building the manual fails.
    docs = evaluate(
        module_expr(
            nixpkgs_lib,
            "{ }",
            "map (o: { inherit (o) name description visible; default = o.default or null; }) "
            "(lib.optionAttrSetToDocList options)",
            pkgs='throw "pkgs used while rendering the option docs"',
        )
    )
    names = {d["name"].removeprefix("services.mullvadAllowK8s."): d["visible"] for d in docs}
    # The manual shows visible options only: the retired ones are not documented.
    assert {n for n, v in names.items() if v} == MODULE_ONLY | {f["nix_option"] for f in FIELDS}
    assert {n for n, v in names.items() if not v} == RETIRED_OPTIONS
    assert all(d["description"] for d in docs)


# ---------------------------------------------------------------- what it configures


def test_disabled_module_configures_nothing(nixpkgs_lib: Path) -> None:
    for other in ("", "networking.nftables.enable = true;"):
        out = ev(nixpkgs_lib, f"{{ {other} }}", "{ inherit failed defined; }")
        assert out == {"failed": [], "defined": []}


def test_defaults_without_nftables_use_our_unit(nixpkgs_lib: Path) -> None:
    out = ev(
        nixpkgs_lib,
        enabled(),
        '{ inherit (cfg) loader; etc = ours [ "environment" "etc" ]; '
        'packages = ours [ "systemd" "packages" ]; '
        'systemPackages = ours [ "environment" "systemPackages" ]; '
        'services = ours [ "systemd" "services" ]; '
        'tables = ours [ "networking" "nftables" "tables" ]; '
        "gen = cfg.generated.outPath; pkg = cfg.package.name; }",
    )
    gen = out["gen"]
    pkg = "/nix/store/00000000000000000000000000000000-mullvad-allow-k8s-0.0.0"
    assert out["loader"] == "unit"
    assert out["pkg"] == "mullvad-allow-k8s-0.0.0"  # pkgs.mullvad-allow-k8s (the overlay's)
    assert out["tables"] is None
    assert out["etc"] == {
        "nftables.d/k8s_bypass_mullvad.nft": {"source": f"{gen}/k8s_bypass_mullvad.nft"},
        "default/mullvad-allow-k8s": {"source": f"{gen}/settings.env"},
    }
    assert out["packages"] == out["systemPackages"] == [out["packages"][0]]
    assert out["services"] == {
        "mullvad-allow-k8s": {
            "wantedBy": ["multi-user.target"],
            "reloadTriggers": [gen],
            "serviceConfig": {"ExecReload": ["", f"{pkg}/bin/mullvad-allow-k8s apply --from-file"]},
        }
    }


def test_the_settings_file_is_where_the_cli_looks_first(nixpkgs_lib: Path) -> None:
    from mullvad_allow_k8s.cli import SETTINGS_FILES  # noqa: PLC0415

    etc = ev(nixpkgs_lib, enabled(), 'builtins.attrNames (ours [ "environment" "etc" ])')
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
        'preset = "k3s"; machineAddresses = [ "192.168.1.20" ];',
        QUIET + " networking.nftables.enable = true;",
    )
    out = ev(
        nixpkgs_lib,
        config,
        "{ inherit failed; inherit (config) warnings; inherit (cfg) loader; "
        "gen = cfg.generated.outPath; "
        'tables = removeAttrs config.networking.nftables.tables [ "nixos-fw" ]; '
        'services = ours [ "systemd" "services" ]; }',
    )
    gen = out["gen"]
    assert (out["failed"], out["warnings"], out["services"]) == ([], [], None)
    assert out["loader"] == "nftables"
    assert out["tables"] == {
        marks.TABLE_NAME: {
            "enable": True,
            "name": marks.TABLE_NAME,
            "family": marks.TABLE_FAMILY,
            "content": f'include "{gen}/inet-body.nft"',
        },
    }
    settings = module_settings(nixpkgs_lib, config)
    assert settings["PRESET"] == "k3s"
    assert settings["MACHINE_ADDRESSES"] == ["192.168.1.20"]
    assert settings["BRIDGE_TABLE"] is False
    # With bridgeTable our unit loads both tables (tests/nix/test_nixos_firewall.py).
    with_bridge = enabled(
        'preset = "k3s"; bridgeTable = true;', QUIET + " networking.nftables.enable = true;"
    )
    assert ev(nixpkgs_lib, with_bridge, "cfg.loader") == "unit"
    assert module_settings(nixpkgs_lib, with_bridge)["BRIDGE_TABLE"] is True


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
    assert tables == [marks.TABLE_NAME, "nixos-fw"]  # NixOS' firewall's, and ours


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


# ---------------------------------------------------------------- hostPorts


@pytest.mark.parametrize(
    ("setting", "host_ports", "expected"),
    [
        ("", None, ""),  # null: the generator fills in the preset's
        ("hostPorts = null;", None, ""),
        ("hostPorts = [ ];", [], "none"),
        ('hostPorts = [ 6443 "30000-32767" ];', [6443, "30000-32767"], ["6443", "30000-32767"]),
    ],
)
def test_host_ports_reach_the_generator(
    nixpkgs_lib: Path, setting: str, host_ports: object, expected: object
) -> None:
    config = enabled(setting)
    assert ev(nixpkgs_lib, config, "cfg.hostPorts") == host_ports
    assert module_settings(nixpkgs_lib, config)["HOST_PORTS"] == expected
    assert problems(nixpkgs_lib, config) == {"failed": [], "warnings": []}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_default_host_ports_are_the_presets(nixpkgs_lib: Path, preset: str) -> None:
    data = module_settings(nixpkgs_lib, enabled(f'preset = "{preset}";'))
    resolved = resolve([parse_json(json.dumps(data))])
    assert resolved.host_ports == tuple((p, p) for p in PRESETS[preset].host_ports)
    assert resolved == resolve([{"PRESET": preset}])


# ---------------------------------------------------------------- presets, nodeNetworks


def no_detection() -> Detection:
    raise AssertionError("the build-time JSON made the generator read the machine")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_is_built_from_its_own_ranges_without_detection(
    nixpkgs_lib: Path, preset: str
) -> None:
    config = enabled(f'preset = "{preset}";')
    raw = parse_json(json.dumps(module_settings(nixpkgs_lib, config)))
    assert not detects([raw])
    got = resolve([raw], no_detection)
    want = PRESETS[preset]
    assert got.preset == preset
    assert {str(n) for n in got.pod_cidrs} == set(want.pod_cidrs)
    assert {str(n) for n in got.service_cidrs} == set(want.service_cidrs)
    assert {f"{n}@{i}" for n, i in got.node_networks} == set(want.node_networks)
    out = ev(
        nixpkgs_lib, config, '{ inherit (cfg) loader output; s = ours [ "systemd" "services" ]; }'
    )
    assert out["output"] == "/etc/nftables.d/k8s_bypass_mullvad.nft"
    assert sorted(out["s"]) == ["mullvad-allow-k8s"]  # no follow service at build time


@pytest.mark.parametrize(
    ("setting", "json_value", "nodes"),
    [
        ("", "", {"172.18.0.0/16@br-*", "fc00:f853:ccd:e793::/64@br-*"}),  # null: kind's
        ("nodeNetworks = null;", "", {"172.18.0.0/16@br-*", "fc00:f853:ccd:e793::/64@br-*"}),
        (
            'nodeNetworks = [ "172.19.0.0/16@br-0123456789ab" ];',
            ["172.19.0.0/16@br-0123456789ab"],
            {"172.19.0.0/16@br-0123456789ab"},
        ),
        # [ ]: none; kind has nothing else, so pods are given here.
        (
            "nodeNetworks = [ ]; "
            'podCidrs = [ "10.244.0.0/16" ]; serviceCidrs = [ "10.96.0.0/12" ];',
            "none",
            set(),
        ),
    ],
)
def test_node_networks_reach_the_generator(
    nixpkgs_lib: Path, setting: str, json_value: object, nodes: set[str]
) -> None:
    config = enabled(f'preset = "kind"; {setting}')
    data = module_settings(nixpkgs_lib, config)
    assert data["NODE_NETWORKS"] == json_value
    got = resolve([parse_json(json.dumps(data))], no_detection)
    assert {f"{n}@{i}" for n, i in got.node_networks} == nodes
    assert problems(nixpkgs_lib, config) == {"failed": [], "warnings": []}


def _generator_takes(word: str) -> bool:
    raw = {"PRESET": CUSTOM_PRESET, "POD_CIDRS": "", "SERVICE_CIDRS": "", "NODE_NETWORKS": word}
    try:
        resolve([raw], no_detection)
    except SettingsError:
        return False
    return True


@pytest.mark.parametrize(
    "word",
    [
        "172.18.0.0/16@br-*",
        "fc00:f853:ccd:e793::/64@br-0123456789ab",
        "192.168.39.0/24@virbr1",
        "10.89.0.0/24@podman1",
        "fd00::/8@cni-podman0",
        "192.168.49.0/24@bridge",
        "172.18.0.0/16",  # no @INTERFACE
        "172.18.0.0/16@",
        "172.18.0.0/16@*",  # a bare * would match every interface
        "172.18.0.0/16@br 1",
        "172.18.0.0/16@abcdefghijklmnop",  # 16 characters: longer than Linux allows
        "172.18.0.0@br-*",
        "@br-*",
    ],
)
def test_node_network_shapes_agree_with_the_generator(nixpkgs_lib: Path, word: str) -> None:
    """The Nix type refuses at evaluation what the generator refuses by its shape."""
    config = enabled(f'preset = "custom"; nodeNetworks = [ "{word}" ];')
    try:
        ev(nixpkgs_lib, config, "cfg.nodeNetworks")
        nix_takes = True
    except NixError as err:
        assert "services.mullvadAllowK8s.nodeNetworks" in str(err)
        nix_takes = False
    assert nix_takes == _generator_takes(word)


def test_the_types_take_every_default_the_generator_has(nixpkgs_lib: Path) -> None:
    words = sorted({w for p in PRESETS.values() for w in p.node_networks})
    cidrs = sorted({c for p in PRESETS.values() for c in (*p.pod_cidrs, *p.service_cidrs)})
    setting = (
        f"nodeNetworks = {nix_list(words)}; podCidrs = {nix_list(cidrs)}; "
        f"clusterInterfaces = {nix_list(marks.CLUSTER_INTERFACES)};"
    )
    got = ev(nixpkgs_lib, enabled(setting), "{ inherit (cfg) nodeNetworks podCidrs; }")
    assert got == {"nodeNetworks": words, "podCidrs": cidrs}


def nix_list(words: Iterable[str]) -> str:
    return "[ " + " ".join(json.dumps(w) for w in words) + " ]"


# ---------------------------------------------------------------- 0.1 options, migrated

INBOUND_RETIRED = "services.mullvadAllowK8s.inboundPorts is retired (0.2.0)"
EPHEMERAL_RETIRED = "services.mullvadAllowK8s.ephemeralPorts is retired (0.2.0)"


def migrated(lib: Path, setting: str) -> dict[str, Any]:
    """Warnings, failed assertions, hostPorts and the generator's JSON for `setting`."""
    config = enabled(setting)
    select = "{ inherit failed; inherit (config) warnings; inherit (cfg) hostPorts; }"
    out = ev(lib, config, select, warnings_ok=True)
    assert isinstance(out, dict)
    return {**out, "settings": module_settings(lib, config, warnings_ok=True)}


def test_inbound_ports_list_becomes_host_ports(nixpkgs_lib: Path) -> None:
    out = migrated(nixpkgs_lib, "inboundPorts = [ 80 443 6443 ];")
    assert out["failed"] == []
    (warning,) = out["warnings"]
    assert warning.startswith(INBOUND_RETIRED)
    assert "services.mullvadAllowK8s.hostPorts" in warning
    assert "Your list is now the default of hostPorts; move it there" in warning
    assert out["hostPorts"] == [80, 443, 6443]
    assert out["settings"]["HOST_PORTS"] == ["80", "443", "6443"]
    assert sorted(out["settings"]) == sorted(f["key"] for f in FIELDS)  # no INBOUND_PORTS


def test_inbound_ports_old_default_goes(nixpkgs_lib: Path) -> None:
    out = migrated(nixpkgs_lib, 'inboundPorts = "non-ephemeral";')
    assert out["failed"] == []
    (warning,) = out["warnings"]
    assert warning.startswith(INBOUND_RETIRED)
    assert 'The old default "non-ephemeral" is gone; remove the setting.' in warning
    assert out["hostPorts"] is None
    assert out["settings"]["HOST_PORTS"] == ""  # the preset's
    assert out["settings"] == module_settings(nixpkgs_lib, ENABLED)


def test_ephemeral_ports_is_dropped(nixpkgs_lib: Path) -> None:
    out = migrated(nixpkgs_lib, 'ephemeralPorts = "32768-60999";')
    assert out["failed"] == []
    (warning,) = out["warnings"]
    assert warning.startswith(EPHEMERAL_RETIRED)
    assert "Remove the setting." in warning
    assert out["settings"] == module_settings(nixpkgs_lib, ENABLED)


def test_both_retired_options_warn_once_each(nixpkgs_lib: Path) -> None:
    out = migrated(nixpkgs_lib, 'inboundPorts = [ 8080 ]; ephemeralPorts = "40000-50000";')
    assert [w.split(" is retired")[0] for w in out["warnings"]] == [
        "services.mullvadAllowK8s.inboundPorts",
        "services.mullvadAllowK8s.ephemeralPorts",
    ]
    assert out["settings"]["HOST_PORTS"] == ["8080"]


@pytest.mark.parametrize(
    ("host_ports", "expected"),
    [
        ("[ 6443 ]", ["6443"]),
        ("[ ]", "none"),
        ("null", ""),  # set explicitly, null too wins: the preset's
        ("lib.mkDefault [ 9345 ]", ["9345"]),  # any priority above the option default
    ],
)
def test_explicit_host_ports_win_over_inbound_ports(
    nixpkgs_lib: Path, host_ports: str, expected: object
) -> None:
    out = migrated(nixpkgs_lib, f"inboundPorts = [ 80 443 ]; hostPorts = {host_ports};")
    assert out["failed"] == []
    (warning,) = out["warnings"]
    assert warning.startswith(INBOUND_RETIRED)
    # Not "your list is now hostPorts' default": it is ignored, and the warning says so.
    assert "hostPorts is set too and wins: your inboundPorts list is ignored" in warning
    assert "move it there" not in warning
    assert out["settings"]["HOST_PORTS"] == expected


@pytest.mark.parametrize(
    ("setting", "old_file"),
    [
        ('inboundPorts = [ 80 443 "30000-32767" ];', "INBOUND_PORTS=80,443,30000-32767"),
        ('inboundPorts = "non-ephemeral";', "INBOUND_PORTS=non-ephemeral"),
        ('ephemeralPorts = "32768-60999";', "EPHEMERAL_PORTS=auto"),
        (
            'preset = "rke2"; inboundPorts = [ 80 ]; hostPorts = [ ];',
            "PRESET=rke2\nINBOUND_PORTS=80\nHOST_PORTS=none",
        ),
        (
            'inboundPorts = [ 8080 ]; ephemeralPorts = "1024-65000";',
            "INBOUND_PORTS=8080\nEPHEMERAL_PORTS=1024-65000",
        ),
    ],
)
def test_migration_is_the_generators(nixpkgs_lib: Path, setting: str, old_file: str) -> None:
    """The module migrates 0.1 options as settings.migrate migrates a 0.1 settings file:
    the same settings, one warning per note."""
    out = migrated(nixpkgs_lib, setting)
    current, notes = migrate(parse_settings_file(old_file))
    assert notes
    expected = resolve([BUILD_TIME_SETTINGS, current])
    assert resolve([parse_json(json.dumps(out["settings"]))]) == expected
    assert len(out["warnings"]) == len(notes)


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
    assert ev(nixpkgs_lib, config, 'ours [ "networking" "nftables" "tables" ]') is None


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
    priority = marks.PREROUTING_PRIORITY.value
    assert isinstance(priority, int)
    assert priority < -150  # iptables mangle, NixOS' iptables rpfilter
    warnings = problems(nixpkgs_lib, enabled("", MULLVAD_ON + firewall))["warnings"]
    assert warnings == []


# ---------------------------------------------------------------- type errors


@pytest.mark.parametrize(
    ("setting", "option"),
    [
        ('preset = "k9s";', "preset"),
        ('bridgeTable = "yes";', "bridgeTable"),
        ("hostPorts = [ 70000 ];", "hostPorts"),
        ('hostPorts = [ "80-" ];', "hostPorts"),
        ('hostPorts = [ "6443,9345" ];', "hostPorts"),
        ("hostPorts = 6443;", "hostPorts"),
        ('hostPorts = "none";', "hostPorts"),  # the generator's word; Nix says [ ]
        ("machineAddresses = [ ];", "machineAddresses"),
        ('preset = "minikube-docker";', "preset"),
        ('nodeNetworks = [ "172.18.0.0/16" ];', "nodeNetworks"),
        ('nodeNetworks = [ "172.18.0.0/16@*" ];', "nodeNetworks"),
        ('nodeNetworks = "none";', "nodeNetworks"),  # the generator's word; Nix says [ ]
        ('nodeNetworks = "172.18.0.0/16@br-*";', "nodeNetworks"),  # a list, not a word
        # The generator's keywords are no entries: in the JSON they would mean detection
        # (in the build sandbox) and none.
        ('nodeNetworks = [ "auto" ];', "nodeNetworks"),
        ('nodeNetworks = [ "none" ];', "nodeNetworks"),
        ('podCidrs = [ "auto" ];', "podCidrs"),
        ('podCidrs = [ "10.42.0.0" ];', "podCidrs"),
        ('serviceCidrs = [ "10.43.0.0/16 fd43::/112" ];', "serviceCidrs"),  # one per entry
        ('serviceCidrs = "none";', "serviceCidrs"),
        ('clusterInterfaces = [ "*" ];', "clusterInterfaces"),
        ('clusterInterfaces = [ "cni0,veth*" ];', "clusterInterfaces"),
        ('tunnelInterface = "wg0 mullvad";', "tunnelInterface"),
        # The retired options are still checked, so a wrong old value fails loudly.
        ("inboundPorts = [ 70000 ];", "inboundPorts"),
        ("inboundPorts = [ ];", "inboundPorts"),
        ('ephemeralPorts = "auto";', "ephemeralPorts"),
        ('podCidrs = "10.42.0.0/16";', "podCidrs"),
    ],
)
def test_type_errors_name_the_option(nixpkgs_lib: Path, setting: str, option: str) -> None:
    err = eval_error(module_expr(nixpkgs_lib, enabled(setting), "cfg", warnings_ok=True))
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
