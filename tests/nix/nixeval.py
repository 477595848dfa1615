"""Run nix-instantiate offline and evaluate the NixOS module with nixpkgs' real lib.

Only Nix itself (Debian's nix-bin) is needed for parsing and for nix/settings.nix.
Module evaluation needs nixpkgs' lib, which is not packaged for Debian: NIXPKGS_LIB
names a directory holding lib/default.nix, or a checkout containing lib/ (nixpkgs
itself, or github:nix-community/nixpkgs.lib).
"""

from __future__ import annotations

import json
import os
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


def nix_path(path: Path) -> str:
    """A Nix expression for an absolute path, whatever characters it holds."""
    return f"(/. + {json.dumps(str(path))})"


def _env() -> dict[str, str]:
    # Offline, no daemon, no channels: evaluation never touches a store or the network.
    return {**os.environ, "NIX_REMOTE": "", "NIX_PATH": ""}


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


def module_expr(lib: Path, config: str, select: str, pkgs: str = "stubs.pkgs") -> str:
    """Evaluate nix/module.nix plus `config` (a module) and return `select`.

    In `select`: `config` (the whole NixOS config), `cfg` (ours), `failed` (messages of
    failed assertions), `options` (our option declarations). `pkgs` may use `stubs`.
    """
    return f"""
      let
        lib = import {nix_path(lib)};
        stubs = import {nix_path(STUBS)} {{ inherit lib; }};
        eval = lib.evalModules {{
          modules = [ stubs.nixos {nix_path(MODULE)} ({config}) ];
          specialArgs.pkgs = {pkgs};
        }};
        config = eval.config;
        options = eval.options.services.mullvadAllowK8s;
        cfg = config.services.mullvadAllowK8s;
        failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      in {select}
    """


def module_settings(lib: Path, config: str) -> dict[str, Any]:
    """The JSON the module hands the generator at build time, for `config`."""
    text = evaluate(module_expr(lib, config, "cfg.generated.env.settings"))
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
