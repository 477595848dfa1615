"""The `mullvad-allow-k8s` command: generate, apply, remove, status, doctor, settings,
follow.

Exit status: 0 success; 1 nftables or the system refused (nothing was changed);
2 invalid settings or usage (nothing was changed); 3 status/doctor found the bypass
missing, stale or unable to work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, marks, nft, ruleset
from .facts import MachineFacts
from .settings import (
    SCHEMA,
    Detection,
    Settings,
    SettingsError,
    detects,
    migrate,
    parse_json,
    parse_settings_file,
    render_settings_file,
    resolve,
)

PROG = "mullvad-allow-k8s"
SETTINGS_FILES = ("/etc/default/mullvad-allow-k8s", "/etc/sysconfig/mullvad-allow-k8s")
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_ACTIVE = 0, 1, 2, 3


class CommandError(Exception):
    """A runtime failure with a one-line message (exit 1)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Let a local Kubernetes cluster work behind the Mullvad VPN app's "
        "firewall: generate, check and load an nftables table that gives cluster "
        "traffic Mullvad's split-tunnel marks, and nothing else.",
        epilog="Exit status: 0 ok, 1 nftables/system failure, 2 invalid settings, "
        "3 not loaded/stale/problems found. See mullvad-allow-k8s(8).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    src = common.add_argument_group("settings (later sources win: file, JSON, flags)")
    src.add_argument(
        "--settings",
        metavar="FILE",
        help="KEY=VALUE settings file (default: the first of "
        + ", ".join(SETTINGS_FILES)
        + " that exists; 'none' for none)",
    )
    src.add_argument("--json", metavar="FILE", help="settings as a JSON object ('-': stdin)")
    for field in SCHEMA:
        src.add_argument(
            field.flag,
            dest=field.key,
            metavar="VALUE",
            help=f"{field.help} [{field.key}, default: {field.default or 'empty'}]",
        )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", parents=[common], help="print (or write) the ruleset")
    gen.add_argument("--write", action="store_true", help="write it to OUTPUT atomically")
    gen.add_argument("--check", action="store_true", help="also ask the kernel whether it loads")
    gen.add_argument(
        "--table-body",
        choices=[family for family, _ in marks.OUR_TABLES],
        help="print only the inside of our table of that family (for loaders that write "
        "the table block themselves, like NixOS' networking.nftables.tables)",
    )
    gen.add_argument(
        "--dry-run",
        action="store_true",
        help="show the diff against the installed file; change nothing",
    )
    app = sub.add_parser(
        "apply", parents=[common], help="check, write OUTPUT and load the table atomically"
    )
    app.add_argument(
        "--from-file",
        action="store_true",
        help="load the existing OUTPUT file as it is (used at boot)",
    )
    app.add_argument(
        "--no-engines",
        action="store_true",
        help="detect from files only, asking no container engine or libvirt (a unit "
        "that starts before them: NixOS' boot unit; follow adds their networks)",
    )
    sub.add_parser("remove", parents=[common], help="delete our tables (only ours)")
    sub.add_parser(
        "status",
        parents=[common],
        help="is the table loaded, and does it match the settings and the file",
    )
    sub.add_parser("doctor", parents=[common], help="check this machine; each finding has a fix")
    fol = sub.add_parser(
        "follow",
        parents=[common],
        help="keep the loaded table in step with what auto detects (kind create cluster, "
        "k3s install): re-read on container engine events and every --interval seconds",
    )
    fol.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="re-read at least this often (default 60)",
    )
    fol.add_argument("--once", action="store_true", help="re-read and apply once, then exit")
    sset = sub.add_parser(
        "settings", parents=[common], help="print the effective settings (env, json) or the schema"
    )
    sset.add_argument("--format", choices=("env", "json", "schema"), default="env")
    sset.add_argument(
        "--raw",
        action="store_true",
        help="print only the values the sources give (quoting undone, retired keys "
        "migrated, no defaults, no validation): KEY=VALUE lines, or JSON with --format json",
    )
    sset.add_argument(
        "--migrate",
        action="store_true",
        help="rewrite the settings file in place (atomically) without the keys an earlier "
        "version used, saying what became of each; a file without them is left as it is",
    )
    sset.add_argument(
        "--defaults",
        action="store_true",
        help="with --format env: the documented file with the schema's defaults, not the "
        "resolved values (what packages ship)",
    )
    return parser


def machine_detection(engines: bool = True) -> Detection:
    """The running machine's cluster ranges (detect/), read only when a value is auto."""
    from .detect import detect  # noqa: PLC0415  (start-up time: only `auto` needs it)

    return detect(engines=engines)


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings of all sources, retired keys migrated (with a note on stderr)."""
    sources = []
    for source in raw_sources(args):
        current, notes = migrate(source)
        for note in notes:
            print(
                f"{PROG}: note: {note}; `{PROG} settings --migrate` rewrites the file",
                file=sys.stderr,
            )
        sources.append(current)
    engines = not getattr(args, "no_engines", False)
    return resolve(sources, lambda: machine_detection(engines))


def settings_path(args: argparse.Namespace) -> str | None:
    """The settings file in effect: --settings, else the first default that exists."""
    path: str | None = args.settings
    if path is None:
        path = next((p for p in SETTINGS_FILES if Path(p).exists()), None)
    return None if path == "none" else path


def raw_sources(args: argparse.Namespace) -> list[dict[str, str]]:
    """The settings file, JSON and flags as given, in order of precedence."""
    sources: list[dict[str, str]] = []
    path = settings_path(args)
    if path:
        text = _read_setting("--settings", path)
        sources.append(parse_settings_file(text, origin=path))
    if args.json:
        text = sys.stdin.read() if args.json == "-" else _read_setting("--json", args.json)
        sources.append(parse_json(text))
    sources.append(
        {f.key: getattr(args, f.key) for f in SCHEMA if getattr(args, f.key) is not None}
    )
    return sources


def trusted_text(path: str) -> str | None:
    """A file's text through the trust boundary (root reads only root's files; see
    detect/boundary.py); None when it does not exist."""
    from .detect import boundary  # noqa: PLC0415  (start-up time)

    return boundary.read_text(Path("/"), os.path.abspath(path).lstrip("/"))


def _read_setting(key: str, path: str) -> str:
    from .detect.boundary import UntrustedError  # noqa: PLC0415

    try:
        text = trusted_text(path)
    except UntrustedError as err:
        raise SettingsError(key, path, f"not read: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else str(err)
        raise SettingsError(key, path, reason or "cannot read") from None
    if text is None:
        raise SettingsError(key, path, "No such file or directory")
    return text


def cmd_settings_raw(args: argparse.Namespace) -> int:
    """What the sources say, for front ends that edit the file (the debconf scripts)."""
    merged: dict[str, str] = {}
    for source in raw_sources(args):
        # Retired keys as what they became, so a front end never writes them back.
        merged.update(migrate(source)[0])
    if args.format == "json":
        print(json.dumps(merged, indent=2))
    else:
        sys.stdout.writelines(f"{key}={value}\n" for key, value in merged.items())
    return EXIT_OK


def cmd_settings_migrate(args: argparse.Namespace) -> int:
    """Rewrite the settings file without retired keys; the file is judged first."""
    from .migration import migrate_text  # noqa: PLC0415  (start-up time)

    path = settings_path(args)
    if not path:
        raise CommandError("no settings file to migrate (give --settings FILE)")
    old = _read(path)
    if old is None:
        raise CommandError(f"{path} does not exist")
    new, notes = migrate_text(old, origin=path)
    if not notes:
        return EXIT_OK
    # The rewritten file must be valid settings as a whole before it replaces the old.
    resolve([parse_settings_file(new, origin=path)])
    write_atomic(path, new)
    for note in notes:
        print(f"{PROG}: {path}: {note}", file=sys.stderr)
    return EXIT_OK


def _lan_overlaps(settings: Settings, facts: MachineFacts) -> list[SettingsError]:
    from .overlap import lan_overlaps  # noqa: PLC0415  (start-up time of generate)

    return lan_overlaps(settings, facts.networks())


def _require_bridge_support(settings: Settings) -> None:
    if settings.bridge_table and not nft.bridge_conntrack_supported():
        raise SettingsError(
            "BRIDGE_TABLE",
            "yes",
            "this kernel lacks nf_conntrack_bridge (CONFIG_NF_CONNTRACK_BRIDGE); use no: "
            "with br_netfilter the inet table already covers bridged pod traffic",
        )


def _read(path: str) -> str | None:
    from .detect.boundary import UntrustedError  # noqa: PLC0415

    try:
        return trusted_text(path)
    except UntrustedError as err:
        raise CommandError(f"not reading {path}: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(f"cannot read {path}: {getattr(err, 'strerror', err)}") from None


def write_atomic(path: str, text: str) -> None:
    """Replace OUTPUT atomically, unless a system configuration manager owns it."""
    from .atomicfile import write_atomic as write  # noqa: PLC0415  (start-up time)

    target = Path(path)
    if target.is_symlink() and os.readlink(target).startswith("/nix/store/"):
        raise CommandError(
            f"{path} is managed by NixOS: change services.mullvadAllowK8s and rebuild"
        )
    write(path, text)


def cmd_generate(args: argparse.Namespace, settings: Settings, facts: MachineFacts) -> int:
    if args.table_body:
        sys.stdout.write(ruleset.table_body(settings, args.table_body))
        return EXIT_OK
    text = ruleset.render(settings)
    if args.check:
        _require_bridge_support(settings)
        nft.check(text)
    # generate may run where the target machine is not (a Nix build): warn only, and
    # only where it acts on this machine (--check, --write): reading its addresses
    # costs the plain print a tenth of its start-up time.
    if args.check or args.write:
        for err in _lan_overlaps(settings, facts):
            print(f"{PROG}: warning: {err} (on this machine)", file=sys.stderr)
    if args.dry_run:
        import difflib  # noqa: PLC0415  (start-up time: only --dry-run needs it)

        old = _read(settings.output) or ""
        diff = difflib.unified_diff(
            old.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"{settings.output} (installed)",
            tofile=f"{settings.output} (new)",
        )
        sys.stdout.writelines(diff)
        return EXIT_OK
    if args.write and settings.output != "-":
        write_atomic(settings.output, text)
        print(f"wrote {settings.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, settings: Settings, facts: MachineFacts) -> int:
    if not nft.can_admin_network():
        raise CommandError("apply needs root (CAP_NET_ADMIN); try `generate --check` as a user")
    if args.from_file:
        extra = ruleset.tunnel_elements(facts.interface_addresses(settings.tunnel_interface))
        text = _read(settings.output)
        if text is None:
            raise CommandError(f"{settings.output} does not exist; run `{PROG} apply` to create it")
        nft.load(text + extra)
        print(f"loaded {settings.output}", file=sys.stderr)
        return EXIT_OK
    print(apply_settings(settings, facts), file=sys.stderr)
    return EXIT_OK


def apply_settings(settings: Settings, facts: MachineFacts) -> str:
    """Check, write OUTPUT and load; on a refused load the previous file comes back.
    Returns the line that says what was loaded."""
    extra = ruleset.tunnel_elements(facts.interface_addresses(settings.tunnel_interface))
    overlaps = _lan_overlaps(settings, facts)
    if overlaps:
        raise overlaps[0]
    _require_bridge_support(settings)
    text = ruleset.render(settings)
    nft.check(text + extra)
    previous = _read(settings.output)
    if settings.output != "-":
        write_atomic(settings.output, text)
    try:
        nft.load(text + extra)
    except nft.NftError:
        if previous is not None:
            write_atomic(settings.output, previous)
        raise
    return f"loaded table {marks.TABLE_FAMILY} {marks.TABLE_NAME} from {settings.output}"


def cmd_follow(args: argparse.Namespace) -> int:
    from .follow import follow  # noqa: PLC0415  (start-up time of the other commands)

    if not nft.can_admin_network():
        raise CommandError("follow needs root (CAP_NET_ADMIN)")
    if not detects(raw_sources(args)):
        print(f"{PROG}: nothing is auto in the settings: nothing to follow", file=sys.stderr)
        return EXIT_OK

    def step() -> str | None:
        try:
            settings = load_settings(args)
        except SettingsError as err:
            return f"{PROG}: warning: {err}; the loaded table stays as it is"
        table = (marks.TABLE_FAMILY, marks.TABLE_NAME)
        if table not in nft.our_tables():
            return None  # removed, or the service stopped: not ours to load again
        if nft.table_comment(*table) == ruleset.table_comment(settings):
            return None
        try:
            loaded = apply_settings(settings, MachineFacts())
        except (SettingsError, nft.NftError, CommandError, OSError) as err:
            return f"{PROG}: warning: {err}; the loaded table stays as it is"
        return f"{PROG}: {loaded}: " + ("; ".join(settings.origins) or "the settings changed")

    return follow(step, interval=args.interval, rounds=1 if args.once else None)


def cmd_remove() -> int:
    if not nft.can_admin_network():
        raise CommandError("remove needs root (CAP_NET_ADMIN)")
    present = nft.our_tables()
    nft.load(ruleset.remove_text())
    gone = ", ".join(f"{f} {n}" for f, n in present) or "nothing (no table was loaded)"
    print(f"removed {gone}", file=sys.stderr)
    return EXIT_OK


def cmd_status(settings: Settings) -> int:
    expected = ruleset.table_comment(settings)
    tables = {(t["family"], t["name"]) for t in nft.table_list()}
    loaded = (marks.TABLE_FAMILY, marks.TABLE_NAME) in tables
    comment = nft.table_comment(marks.TABLE_FAMILY, marks.TABLE_NAME) if loaded else None
    file_text = _read(settings.output)
    ok = True
    if not loaded:
        print(f"table {marks.TABLE_FAMILY} {marks.TABLE_NAME}: not loaded")
        ok = False
    elif comment != expected:
        print(
            f"table {marks.TABLE_FAMILY} {marks.TABLE_NAME}: loaded, but from other settings "
            f"({comment or 'no comment'}; expected {expected})"
        )
        ok = False
    else:
        print(f"table {marks.TABLE_FAMILY} {marks.TABLE_NAME}: loaded, matches the settings")
    if file_text is None:
        print(f"file {settings.output}: missing")
        ok = False
    elif file_text != ruleset.render(settings):
        print(f"file {settings.output}: differs from the settings (run `{PROG} apply`)")
        ok = False
    else:
        print(f"file {settings.output}: matches the settings")
    ports = settings.as_strings()["HOST_PORTS"]
    print(f"host ports reachable from outside (HOST_PORTS, TCP): {ports}")
    print(f"node networks (NODE_NETWORKS): {settings.as_strings()['NODE_NETWORKS']}")
    for family, name in marks.SEED_TABLES:
        if (family, name) in tables:
            print(
                f"table {family} {name}: loaded (from the old k8s_bypass_mullvad.nft; "
                f"`{PROG} apply` removes it)"
            )
    return EXIT_OK if ok else EXIT_NOT_ACTIVE


def cmd_doctor(settings: Settings, facts: MachineFacts) -> int:
    from . import doctor  # noqa: PLC0415  (start-up time of the other commands)

    findings = doctor.run(settings, facts)
    for finding in findings:
        print(finding.line())
    return EXIT_NOT_ACTIVE if any(f.level == doctor.ERROR for f in findings) else EXIT_OK


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    if args.format == "env":
        if not args.defaults:
            sys.stdout.writelines(f"# {line}\n" for line in settings.origins)
        sys.stdout.write(render_settings_file(None if args.defaults else settings))
    elif args.format == "json":
        print(json.dumps(settings.as_strings(), indent=2))
    else:
        schema = [
            {
                "key": f.key,
                "kind": f.kind,
                "default": f.default,
                "help": f.help,
                "flag": f.flag,
                "nix_option": f.nix_option,
                "asked": f.asked,
            }
            for f in SCHEMA
        ]
        print(json.dumps(schema, indent=2))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    facts = MachineFacts()
    try:
        if args.command == "settings" and args.raw:
            return cmd_settings_raw(args)
        if args.command == "settings" and args.migrate:
            return cmd_settings_migrate(args)
        if args.command == "follow":
            return cmd_follow(args)
        settings = load_settings(args)
        if args.command == "generate":
            return cmd_generate(args, settings, facts)
        if args.command == "apply":
            return cmd_apply(args, settings, facts)
        if args.command == "remove":
            return cmd_remove()
        if args.command == "status":
            return cmd_status(settings)
        if args.command == "doctor":
            return cmd_doctor(settings, facts)
        return cmd_settings(args, settings)
    except SettingsError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except (nft.NftError, CommandError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
