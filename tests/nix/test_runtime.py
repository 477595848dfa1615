"""The module's run-time mode: "auto" values are detected on the running machine.

A build cannot see the machine it is for, so with preset/podCidrs/serviceCidrs/
nodeNetworks = "auto" the module builds no ruleset: mullvad-allow-k8s.service runs
`apply` with the module's JSON and mullvad-allow-k8s-follow.service runs `follow`.
Evaluated with nixpkgs' lib (skipped without it); the build step runs with this tree's
CLI.
"""

from __future__ import annotations

import configparser
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mullvad_allow_k8s.detect import Found
from mullvad_allow_k8s.settings import AUTO, Detection, detects, parse_json, resolve
from tests import rootview
from tests.conftest import Netns
from tests.nix.cases import cli, schema
from tests.nix.nixeval import ROOT, build, evaluate, module_expr, module_settings

FIELDS = schema()
FOLLOW_UNIT = ROOT / "data" / "mullvad-allow-k8s-follow.service"
QUIET = 'services.mullvad-vpn.enable = true; networking.firewall.checkReversePath = "loose";'
RUNTIME_OUTPUT = "/run/mullvad-allow-k8s/k8s_bypass_mullvad.nft"
PKG = "/nix/store/00000000000000000000000000000000-mullvad-allow-k8s-0.0.0"
EXE = f"{PKG}/bin/mullvad-allow-k8s"
ENGINES = (
    ("docker", "docker.service"),
    ("podman", "podman.service"),
    ("libvirtd", "libvirtd.service"),
)

# Each way into the run-time mode: the generator's own detects() says the same.
AUTO_SETTINGS = [
    'preset = "auto";',
    'podCidrs = "auto";',
    'serviceCidrs = "auto";',
    'nodeNetworks = "auto";',
    'preset = "kind"; nodeNetworks = "auto";',
]


def enabled(settings: str = "", other: str = QUIET) -> str:
    return f"{{ services.mullvadAllowK8s = {{ enable = true; {settings} }}; {other} }}"


def ev(lib: Path, config: str, select: str) -> Any:
    return evaluate(module_expr(lib, config, select))


def settings_path(lib: Path, config: str) -> str:
    out = ev(lib, config, "cfg.generated.outPath")
    assert isinstance(out, str)
    return f"{out}/settings.json"


# ---------------------------------------------------------------- which mode


@pytest.mark.parametrize("setting", AUTO_SETTINGS)
def test_auto_switches_to_the_runtime_mode(nixpkgs_lib: Path, setting: str) -> None:
    config = enabled(setting)
    data = module_settings(nixpkgs_lib, config)
    assert detects([parse_json(json.dumps(data))])
    out = ev(
        nixpkgs_lib,
        config,
        "{ inherit failed; inherit (config) warnings; inherit (cfg) output loader; "
        'etc = builtins.attrNames (ours [ "environment" "etc" ]); '
        'services = builtins.attrNames (ours [ "systemd" "services" ]); '
        "build = cfg.generated.buildCommand; name = cfg.generated.name; }",
    )
    assert (out["failed"], out["warnings"]) == ([], [])
    assert out["output"] == data["OUTPUT"] == RUNTIME_OUTPUT
    assert out["loader"] == "unit"
    # No ruleset in /etc: only the settings file, which status and doctor read.
    assert out["etc"] == ["default/mullvad-allow-k8s"]
    assert out["services"] == ["mullvad-allow-k8s", "mullvad-allow-k8s-follow"]
    assert out["build"].endswith('"$settingsPath" "$out" runtime\n')
    assert out["name"] == "mullvad-allow-k8s-settings"


@pytest.mark.parametrize(
    "setting",
    [
        "",
        'preset = "kind";',
        'preset = "custom"; podCidrs = [ "10.42.0.0/16" ]; serviceCidrs = [ "10.43.0.0/16" ];',
        'machineAddresses = "auto";',  # matched per packet, not detected
    ],
)
def test_declared_values_stay_in_the_build_time_mode(nixpkgs_lib: Path, setting: str) -> None:
    config = enabled(setting)
    assert not detects([parse_json(json.dumps(module_settings(nixpkgs_lib, config)))])
    out = ev(
        nixpkgs_lib,
        config,
        '{ etc = builtins.attrNames (ours [ "environment" "etc" ]); '
        'services = builtins.attrNames (ours [ "systemd" "services" ]); '
        "build = cfg.generated.buildCommand; }",
    )
    assert out["etc"] == ["default/mullvad-allow-k8s", "nftables.d/k8s_bypass_mullvad.nft"]
    assert out["services"] == ["mullvad-allow-k8s"]
    assert out["build"].endswith('"$settingsPath" "$out"\n')


def test_preset_auto_makes_the_ranges_auto_unless_declared(nixpkgs_lib: Path) -> None:
    data = module_settings(nixpkgs_lib, enabled('preset = "auto"; podCidrs = [ "10.42.0.0/16" ];'))
    assert (data["PRESET"], data["SERVICE_CIDRS"], data["NODE_NETWORKS"]) == (AUTO, AUTO, AUTO)
    assert data["POD_CIDRS"] == ["10.42.0.0/16"]


# ---------------------------------------------------------------- the units


def test_runtime_units(nixpkgs_lib: Path) -> None:
    engines = " ".join(f"virtualisation.{name}.enable = true;" for name, _ in ENGINES)
    config = enabled('preset = "auto";', QUIET + engines)
    services = ev(nixpkgs_lib, config, 'ours [ "systemd" "services" ]')
    json_file = settings_path(nixpkgs_lib, config)
    apply = f"{EXE} apply --settings none --json {json_file}"
    boot = f"{EXE} apply --no-engines --settings none --json {json_file}"
    writable = ["", "/run/mullvad-allow-k8s"]  # dirOf output (see the next tests)
    assert services["mullvad-allow-k8s"] == {
        "wantedBy": ["multi-user.target"],
        "after": ["systemd-tmpfiles-setup.service"],
        # The package's unit, whose ExecStart (`apply --from-file`) and ExecReload are
        # replaced: at boot and on reload detect and apply the module's JSON. At boot it
        # asks no engine (it starts before them, see module.nix), so it never waits on
        # one; a reload, once the machine is up, asks them too. No `path`: detection
        # runs root's programs from its fixed PATH (detect/boundary.py), never a unit's.
        "serviceConfig": {
            "ExecStart": ["", boot],
            "ExecReload": ["", apply],
            "ReadWritePaths": writable,
        },
        # A switch to new settings reloads (apply, atomic) rather than restarts (remove,
        # then apply: a gap without the table). No reloadTriggers: the new JSON is in
        # ExecStart, and NixOS warns about a unit with both.
        "reloadIfChanged": True,
    }
    # The package's follow unit (ordering, PartOf, Restart: see the next test), given
    # the module's JSON.
    assert services["mullvad-allow-k8s-follow"] == {
        "wantedBy": ["multi-user.target"],
        "serviceConfig": {
            "ExecStart": ["", f"{EXE} follow --settings none --json {json_file}"],
            "ReadWritePaths": writable,
        },
    }
    assert ev(nixpkgs_lib, config, "map (p: p.name) config.systemd.packages") == [
        "mullvad-allow-k8s-0.0.0"
    ]


@pytest.mark.parametrize(
    ("setting", "runtime"),
    [('preset = "auto";', True), ('nodeNetworks = "auto";', True), ("", False)],
)
def test_a_new_configuration_reloads_the_unit_one_way(
    nixpkgs_lib: Path, setting: str, runtime: bool
) -> None:
    """The unit as NixOS renders it (nixos/lib/systemd-lib.nix serviceToUnit), whose
    X-ReloadIfChanged and X-Reload-Triggers switch-to-configuration reads. Run time: a
    changed ExecStart (the JSON's store path) reloads; build time: a new ruleset does.
    Both at once make NixOS warn on every rebuild (issue 24, finding 1); this reads the
    rendering, not that warning (systemd.nix, which gives it, is stubbed)."""
    text = evaluate(
        module_expr(
            nixpkgs_lib,
            enabled(setting),
            'config.systemd.units."mullvad-allow-k8s.service".text',
            warnings_ok=True,
        )
    )
    lines = text.splitlines()
    triggers = [line for line in lines if line.startswith("X-Reload-Triggers=")]
    if runtime:
        assert "X-ReloadIfChanged=true" in lines
        assert triggers == []
    else:
        assert "X-ReloadIfChanged=true" not in lines
        assert len(triggers) == 1


def test_the_packages_follow_unit_waits_for_the_engines_and_stops_with_ours() -> None:
    """What the module takes from data/mullvad-allow-k8s-follow.service (the package's)."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(FOLLOW_UNIT.read_text())
    after = unit["Unit"]["After"].split()
    assert after[0] == "mullvad-allow-k8s.service"
    assert {u for _, u in ENGINES} <= set(after)
    assert unit["Unit"]["PartOf"] == "mullvad-allow-k8s.service"
    assert unit["Service"]["ExecStart"] == "/usr/bin/mullvad-allow-k8s follow"
    assert unit["Service"]["Restart"] == "on-failure"


def test_no_unit_is_given_a_path(nixpkgs_lib: Path) -> None:
    """Which programs detection runs is not the unit's to say (detect/boundary.py)."""
    for engine in [name for name, _ in ENGINES]:
        config = enabled(
            'nodeNetworks = "auto";', QUIET + f"virtualisation.{engine}.enable = true;"
        )
        services = ev(nixpkgs_lib, config, 'ours [ "systemd" "services" ]')
        assert services["mullvad-allow-k8s-follow"].get("path", []) == []
        assert services["mullvad-allow-k8s"].get("path", []) == []


def test_runtime_with_the_nftables_firewall_uses_our_unit(nixpkgs_lib: Path) -> None:
    config = enabled('preset = "auto";', QUIET + " networking.nftables.enable = true;")
    out = ev(
        nixpkgs_lib,
        config,
        "{ inherit failed; inherit (cfg) loader; "
        'tables = ours [ "networking" "nftables" "tables" ]; }',
    )
    assert out == {"failed": [], "loader": "unit", "tables": None}


def test_runtime_refuses_the_nftables_loader_naming_the_auto_options(nixpkgs_lib: Path) -> None:
    config = enabled(
        'loader = "nftables"; podCidrs = "auto"; nodeNetworks = "auto";',
        QUIET + " networking.nftables.enable = true;",
    )
    (message,) = ev(nixpkgs_lib, config, "failed")
    assert message.startswith(
        'services.mullvadAllowK8s.loader = "nftables" needs a ruleset known at build time'
    )
    assert 'podCidrs, nodeNetworks = "auto" is detected on the running machine' in message


@pytest.mark.parametrize(
    ("output", "refused"),
    [
        ("/etc/nftables.d/k8s_bypass_mullvad.nft", True),  # NixOS manages /etc
        ("/nix/var/k8s.nft", True),
        ("run/k8s.nft", True),
        ("/var/lib/mullvad-allow-k8s/k8s.nft", False),
        (RUNTIME_OUTPUT, False),
    ],
)
def test_runtime_output_must_be_writable_on_the_machine(
    nixpkgs_lib: Path, output: str, refused: bool
) -> None:
    failed = ev(nixpkgs_lib, enabled(f'preset = "auto"; output = "{output}";'), "failed")
    if refused:
        (message,) = failed
        assert message.startswith(f'services.mullvadAllowK8s.output = "{output}": with "auto"')
        assert "outside /etc (which NixOS manages) and /nix" in message
    else:
        assert failed == []


@pytest.mark.parametrize(
    "output", [RUNTIME_OUTPUT, "/var/lib/mullvad-allow-k8s/k8s.nft", "/run/a/b/k8s.nft"]
)
def test_the_units_may_write_only_the_outputs_directory(nixpkgs_lib: Path, output: str) -> None:
    """The package's units make the file system read-only but for /etc/nftables.d
    (ProtectSystem=strict): in the run-time mode both write cfg.output, so the module
    replaces that with the output's directory, which tmpfiles makes before the loader."""
    config = enabled(f'preset = "auto"; output = "{output}";')
    out = ev(
        nixpkgs_lib,
        config,
        '{ services = ours [ "systemd" "services" ]; tmpfiles = config.systemd.tmpfiles.rules; }',
    )
    directory = output.rsplit("/", 1)[0]
    for unit in ("mullvad-allow-k8s", "mullvad-allow-k8s-follow"):
        # "": drop the package's ReadWritePaths=-/etc/nftables.d
        assert out["services"][unit]["serviceConfig"]["ReadWritePaths"] == ["", directory]
    assert out["tmpfiles"] == [f"d {directory} 0755 root root - -"]
    assert "systemd-tmpfiles-setup.service" in out["services"]["mullvad-allow-k8s"]["after"]
    unit = (ROOT / "data" / "mullvad-allow-k8s.service").read_text()
    assert "\nReadWritePaths=-/etc/nftables.d\n" in unit  # what "" replaces


def test_the_build_time_units_write_nothing_new(nixpkgs_lib: Path) -> None:
    """Build time: the ruleset is in the store, the units only load it."""
    out = ev(
        nixpkgs_lib, enabled(), '[ (ours [ "systemd" "services" ]) config.systemd.tmpfiles.rules ]'
    )
    services, tmpfiles = out
    assert "ReadWritePaths" not in services["mullvad-allow-k8s"]["serviceConfig"]
    assert tmpfiles == []


# ---------------------------------------------------------------- the generator's view


def runtime_json(lib: Path, setting: str) -> str:
    """The module's JSON for `setting` (services.mullvadAllowK8s lines)."""
    text = evaluate(module_expr(lib, enabled(setting), "cfg.generated.env.settings"))
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize("setting", AUTO_SETTINGS)
def test_the_generator_accepts_the_runtime_json(
    nixpkgs_lib: Path, setting: str, tmp_path: Path
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(runtime_json(nixpkgs_lib, setting))
    # As the units run it (a subprocess: it reads this machine, whatever it finds).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mullvad_allow_k8s",
            "settings",
            "--settings",
            "none",
            "--json",
            str(path),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["OUTPUT"] == RUNTIME_OUTPUT


def test_auto_reaches_the_generators_detection(nixpkgs_lib: Path) -> None:
    """What the running machine shows is what apply exempts (fake facts, no machine)."""
    raw = parse_json(runtime_json(nixpkgs_lib, 'preset = "auto";'))
    kind = Found("kind", "nodes", "172.19.0.0/16", "br-0123456789ab", "docker network kind")
    calls: list[int] = []

    def machine() -> Detection:
        calls.append(1)
        return [kind], []

    got = resolve([raw], machine)
    assert calls == [1]
    assert got.preset == AUTO
    assert [(str(n), i) for n, i in got.node_networks] == [("172.19.0.0/16", "br-0123456789ab")]
    assert (got.pod_cidrs, got.service_cidrs) == ((), ())  # kind's preset: none


# ---------------------------------------------------------------- the build step


def fake_engines(where: Path) -> tuple[list[str], Path]:
    """docker, podman and virsh that only record being called, where root finds them
    (tests.rootview: first on detection's fixed PATH): a build must not call them."""
    log = where / "engine-calls"
    scripts = {n: f'echo "{n} $*" >> {log}\nexit 1\n' for n in ("docker", "podman", "virsh")}
    return rootview.prefix(rootview.fake_programs(where / "engines", scripts)), log


def test_runtime_build_writes_the_settings_and_reads_nothing(
    nixpkgs_lib: Path, tmp_path: Path, cli_on_path: dict[str, str]
) -> None:
    text = runtime_json(nixpkgs_lib, 'preset = "auto"; hostPorts = [ 6443 ];')
    wrap, log = fake_engines(tmp_path)
    out = build(text, tmp_path, cli_on_path, "runtime", wrap=wrap)
    assert sorted(p.name for p in out.iterdir()) == ["settings.env", "settings.json"]
    assert not log.exists()
    assert (out / "settings.json").read_text() == text
    # The settings file holds the values as given, auto included: status and doctor
    # read it and detect, as apply does.
    env_file = str(out / "settings.env")
    raw = json.loads(cli("settings", "--raw", "--format", "json", "--settings", env_file))
    assert raw == parse_json(text)
    assert raw["PRESET"] == raw["POD_CIDRS"] == raw["NODE_NETWORKS"] == AUTO


def test_build_time_build_calls_no_engine(
    nixpkgs_lib: Path, tmp_path: Path, cli_on_path: dict[str, str]
) -> None:
    text = evaluate(
        module_expr(nixpkgs_lib, enabled('preset = "kind";'), "cfg.generated.env.settings")
    )
    wrap, log = fake_engines(tmp_path)
    out = build(text, tmp_path, cli_on_path, wrap=wrap)
    assert (out / "k8s_bypass_mullvad.nft").read_text().count("172.18.0.0/16") > 0
    assert not log.exists()
    # The same JSON with the node networks left to detection does call them (the
    # fake engines are on the path the generator uses, so the check above can fail).
    data = json.loads(text) | {"NODE_NETWORKS": AUTO}
    (tmp_path / "auto.json").write_text(json.dumps(data))
    subprocess.run(
        [
            *wrap,
            "mullvad-allow-k8s",
            "settings",
            "--settings",
            "none",
            "--json",
            str(tmp_path / "auto.json"),
        ],
        capture_output=True,
        env=cli_on_path,
        check=False,
    )
    assert log.exists()


# ---------------------------------------------------------------- the units' commands, run

KIND_NETWORK = json.dumps(
    [
        {
            "Name": "kind",
            "Id": "0123456789ab" + "cd" * 26,
            "Driver": "bridge",
            "IPAM": {"Config": [{"Subnet": "172.19.0.0/16"}]},
            "Labels": {},
        }
    ]
)


def root_sees_engines(where: Path, kind: bool) -> str:
    """A shell prefix: docker, podman and virsh that know nothing, or a docker that knows
    kind's network, where root finds them (tests.rootview), so this machine's own engines
    are never asked."""
    scripts = {}
    for name in ("docker", "podman", "virsh"):
        answer = ""
        if kind and name == "docker":
            answer = f"[ \"$*\" = 'network inspect kind' ] && echo '{KIND_NETWORK}' && exit 0\n"
        scripts[name] = f"{answer}exit 1\n"
    files = rootview.fake_programs(where / ("kind-engines" if kind else "no-engines"), scripts)
    return shlex.join(rootview.prefix(files))


@pytest.mark.kernel
def test_the_units_commands_apply_and_follow_in_a_namespace(
    nixpkgs_lib: Path,
    tmp_path: Path,
    cli_on_path: dict[str, str],
    netns_factory: Callable[[str], Netns],
) -> None:
    """ExecStart of both units as the module writes them, run with this tree's CLI: the
    boot apply loads kubeadm's fallback, follow then adds the kind network Docker shows."""
    output = tmp_path / "run" / "k8s_bypass_mullvad.nft"
    setting = f'preset = "auto"; output = "{output}";'
    config = enabled(setting)
    services, gen = ev(
        nixpkgs_lib, config, '[ (ours [ "systemd" "services" ]) cfg.generated.outPath ]'
    )
    store = tmp_path / "store"
    store.mkdir()
    (store / "settings.json").write_text(runtime_json(nixpkgs_lib, setting))
    cli_dir = cli_on_path["PATH"].split(":", 1)[0]

    def command(unit: str) -> str:
        (line,) = [c for c in services[unit]["serviceConfig"]["ExecStart"] if c]
        return line.replace(EXE, f"{cli_dir}/mullvad-allow-k8s").replace(gen, str(store))

    ns = netns_factory("nixrt")
    table = "nft list table inet mullvad_allow_k8s"
    # Boot with a docker that knows kind's network: the boot unit must not ask it.
    engines = root_sees_engines(tmp_path, kind=True)
    boot = ns.sh(f"{engines} {command('mullvad-allow-k8s')}")
    assert "loaded table inet mullvad_allow_k8s" in boot.stderr
    assert output.is_file()
    assert "10.96.0.0/12" in ns.sh(table).stdout  # kubeadm's services: nothing was found
    assert "172.19.0.0/16" not in ns.sh(table).stdout

    follow = f"{command('mullvad-allow-k8s-follow')} --once"
    ns.sh(f"{engines} {follow}")
    listing = ns.sh(table).stdout
    assert '172.19.0.0/16 . "br-0123456789ab"' in listing
    assert "10.96.0.0/12" not in listing  # kind's preset now: no pod or service ranges
    assert "172.19.0.0/16@br-0123456789ab" in output.read_text()
