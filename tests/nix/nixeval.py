"""Run nix-instantiate offline and evaluate the NixOS module with nixpkgs' real lib
and the real NixOS modules it meets.

Only Nix itself (Debian's nix-bin) is needed for parsing and for nix/settings.nix.
Module evaluation needs nixpkgs' lib, which is not packaged for Debian: NIXPKGS_LIB
names a directory holding lib/default.nix, or a checkout containing lib/ (nixpkgs
itself, or github:nix-community/nixpkgs.lib). It also needs NixOS' own modules
(nftables, firewall, mullvad-vpn, the systemd unit types: tests/nix/stubs.nix lists
them): NIXOS_MODULES names a directory holding nixos/modules and nixos/lib (a nixpkgs
checkout, or ../shared/nixos-modules beside the checkout, a pinned copy of those files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "nix" / "module.nix"
MAPPING = ROOT / "nix" / "settings.nix"
GENERATE_SH = ROOT / "nix" / "generate.sh"
STUBS = Path(__file__).resolve().parent / "stubs.nix"

NO_NIX = "nix-instantiate not found: install Debian's nix-bin (.ci/apt/nix.txt)"
NO_LIB = (
    "NIXPKGS_LIB is not set and no shared/nixpkgs.lib/lib is beside the checkout or a "
    "folder above it: "
    "module evaluation with nixpkgs' lib.evalModules is skipped. Point NIXPKGS_LIB at "
    "nixpkgs' lib (a nixpkgs checkout, or github:nix-community/nixpkgs.lib)."
)


NO_MODULES = (
    "NIXOS_MODULES is not set and ../shared/nixos-modules is not beside the checkout: "
    "module evaluation with NixOS' own modules is skipped. Point NIXOS_MODULES at a "
    "nixpkgs checkout (it needs nixos/modules/services/networking and nixos/lib)."
)


class NixError(Exception):
    """nix-instantiate failed; str() is its stderr."""


def nix_instantiate() -> str | None:
    return shutil.which("nix-instantiate")


# The shared test input next to the checkout (nixpkgs' lib, MIT; never copied here):
# ../shared/nixpkgs.lib/lib, or shared/ beside a folder further up (a CI clone nested
# in a build directory that has shared/ beside it).
SHARED_LIBS = [d / "shared" / "nixpkgs.lib" / "lib" for d in ROOT.parents]


def nixpkgs_lib() -> Path | None:
    """The lib directory from NIXPKGS_LIB, else the nearest shared/nixpkgs.lib/lib
    beside the checkout or a folder above it where one exists, else None."""
    value = os.environ.get("NIXPKGS_LIB")
    if not value:
        return next((lib for lib in SHARED_LIBS if (lib / "default.nix").is_file()), None)
    path = Path(value).resolve()
    for candidate in (path, path / "lib"):
        if (candidate / "default.nix").is_file() and (candidate / "modules.nix").is_file():
            return candidate
    raise RuntimeError(f"NIXPKGS_LIB={value}: no nixpkgs lib (lib/default.nix) there")


SHARED_MODULES = Path(__file__).resolve().parents[3] / "shared" / "nixos-modules"
# The files tests/nix/stubs.nix imports from it.
NIXOS_FILES = (
    "modules/misc/assertions.nix",
    "modules/misc/version.nix",
    "modules/services/networking/nftables.nix",
    "modules/services/networking/firewall-nftables.nix",
    "lib/systemd-types.nix",
)


def nixos_modules() -> Path | None:
    """The `nixos` directory from NIXOS_MODULES (which holds it), else
    ../shared/nixos-modules/nixos beside the checkout where it exists, else None."""
    value = os.environ.get("NIXOS_MODULES")
    if not value:
        found = SHARED_MODULES / "nixos"
        return found if all((found / f).is_file() for f in NIXOS_FILES) else None
    path = Path(value).resolve() / "nixos"
    if not all((path / f).is_file() for f in NIXOS_FILES):
        raise RuntimeError(f"NIXOS_MODULES={value}: no nixos/modules, nixos/lib there")
    return path


def nix_path(path: Path) -> str:
    """A Nix expression for an absolute path, whatever characters it holds."""
    return f"(/. + {json.dumps(str(path))})"


def _env() -> dict[str, str]:
    # Offline, no daemon, no channels: evaluation never touches a store or the network.
    # Warnings are errors: lib.warn (system.stateVersion unset, renamed options) aborts.
    return {**os.environ, "NIX_REMOTE": "", "NIX_PATH": "", "NIX_ABORT_ON_WARN": "1"}


def run_nix(*args: str) -> subprocess.CompletedProcess[str]:
    exe = nix_instantiate()
    if exe is None:
        raise RuntimeError(NO_NIX)
    return subprocess.run(
        [exe, "--store", "dummy://", *args],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )


def evaluate(expr: str) -> Any:
    """Evaluate an expression strictly and return it as JSON data."""
    proc = run_nix("--eval", "--strict", "--json", "-E", expr)
    if proc.returncode != 0:
        raise NixError(proc.stderr)
    return json.loads(proc.stdout)


def eval_error(expr: str) -> str:
    """Evaluate an expression that must fail; return nix's error text."""
    proc = run_nix("--eval", "--strict", "--json", "-E", expr)
    if proc.returncode == 0:
        raise AssertionError(f"evaluation succeeded: {proc.stdout[:300]}")
    return proc.stderr


def module_expr(
    lib: Path, config: str, select: str, pkgs: str = "stubs.pkgs", warnings_ok: bool = False
) -> str:
    """Evaluate nix/module.nix with the real NixOS modules (tests/nix/stubs.nix) plus
    `config` (a module) and return `select`.

    In `select`: `config` (the whole NixOS config), `cfg` (ours), `failed` (messages of
    failed assertions), `options` (our option declarations), `eval` (lib.evalModules'
    result) and `ours PATH` (of the option at PATH, e.g. [ "systemd" "services" ], the
    merged values of the attributes nix/module.nix defines: what the real types make of
    them, without the defaults and what other modules add elsewhere; of a list option,
    its own definitions; null if it defines none), `defined` (the names of the
    options outside its own that nix/module.nix defines). `pkgs` may use
    `stubs`. Warnings are errors (the evaluation fails naming them) unless
    `warnings_ok`, for tests that read config.warnings.
    """
    modules = nixos_modules()
    if modules is None:
        raise RuntimeError(NO_MODULES)
    check = "true" if warnings_ok else "config.warnings == [ ]"
    return f"""
      let
        lib = import {nix_path(lib)};
        stubs = import {nix_path(STUBS)} {{ inherit lib; nixos = {nix_path(modules)}; }};
        module = {nix_path(MODULE)};
        eval = lib.evalModules {{
          modules = stubs.nixos ++ [ module ({config}) ];
          specialArgs.pkgs = {pkgs};
        }};
        config = eval.config;
        options = eval.options.services.mullvadAllowK8s;
        cfg = config.services.mullvadAllowK8s;
        failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
        ours = path:
          let
            opt = lib.attrByPath path null eval.options;
            defs = map (d: d.value)
              (builtins.filter (d: d.file == toString module) opt.definitionsWithLocations);
            shape = if builtins.all builtins.isAttrs defs
              then lib.foldl' lib.recursiveUpdate {{ }} defs else null;
            # lib.mkIf inside a definition: its content where true, nothing where false.
            off = s: builtins.isAttrs s && (s._type or "") == "if" && !s.condition;
            pick = s: v:
              if (s._type or "") == "if" then pick s.content v
              else if builtins.isAttrs s && !(s ? _type) && !(lib.isDerivation s) then
                lib.mapAttrs (n: s': pick s' v.${{n}})
                  (lib.filterAttrs (n: s': v ? ${{n}} && !(off s')) s)
              else v;
          in if defs == [ ] then null
            else if builtins.all builtins.isList defs then builtins.concatLists defs
            else pick shape (lib.attrByPath path null config);
        defined = map (o: lib.concatStringsSep "." o.loc) (builtins.filter
          (o: lib.take 2 o.loc != [ "services" "mullvadAllowK8s" ]
            && builtins.any (d: d.file == toString module) o.definitionsWithLocations)
          (lib.collect lib.isOption eval.options));
        result = {select};
      in
        if {check} then result
        else throw "warnings: ${{builtins.concatStringsSep "\n" config.warnings}}"
    """


def module_settings(lib: Path, config: str, warnings_ok: bool = False) -> dict[str, Any]:
    """The JSON the module hands the generator at build time, for `config`."""
    text = evaluate(module_expr(lib, config, "cfg.generated.env.settings", warnings_ok=warnings_ok))
    assert isinstance(text, str)
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def mapping_settings(cfg: str) -> dict[str, Any]:
    """nix/settings.nix applied to a literal option set (no nixpkgs needed)."""
    data = evaluate(f"(import {nix_path(MAPPING)}).toGeneratorSettings ({cfg})")
    assert isinstance(data, dict)
    return data


def build(
    text: str, where: Path, env: dict[str, str], *mode: str, wrap: Sequence[str] = ()
) -> Path:
    """Run the module's build step as the derivation does (passAsFile, then generate.sh
    with the module's mode argument: none, or `runtime`); return its $out. `wrap`: an
    argv prefix (tests.rootview) that changes what root sees."""
    settings = where / "settings-json"
    settings.write_text(text)
    out = where / "out"
    proc = subprocess.run(
        [*wrap, "sh", str(GENERATE_SH), str(settings), str(out), *mode],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out


# The stub pkgs with scripts (pkgs.writeScript: nftables.nix's deletions script;
# writeScriptBin: firewall-iptables.nix's) named by their text rather than a store path,
# so that a test can read or write what nftables.service or firewall.service runs.
SCRIPTS_BY_TEXT = (
    "stubs.pkgs // { "
    "writeScript = name: text: "
    'stubs.pkgs.writeScript name text // { outPath = "@@<" + text + ">@@"; }; '
    "writeScriptBin = name: text: "
    'stubs.pkgs.writeScriptBin name text // { outPath = "@@<" + text + ">@@"; }; }'
)


def nixos_rules(script: str, where: Path) -> str:
    """nftables.service's rules script (nixos nftables.nix's rulesScript) as its build
    check runs it: without the previous run's deletions (/var/lib/nftables), and with
    the current deletions script written to a file."""
    lines = [line for line in script.splitlines(keepends=True) if "/var/lib/nftables/" not in line]
    match = re.search(r'include "@@<(.*?)>@@"', "".join(lines), re.DOTALL)
    assert match, script[:500]
    deletions = where / "nixos-deletions.nft"
    deletions.write_text(match.group(1))
    return "".join(lines).replace(match.group(0), f'include "{deletions}"')


# The rules script nftables.service runs (its ExecStart: ensure deletions, then this).
NFTABLES_RULES = "(builtins.elemAt config.systemd.services.nftables.serviceConfig.ExecStart 1).text"
