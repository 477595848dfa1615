"""Fixtures for the Nix tests: skip, saying why, where Nix, nixpkgs' lib or NixOS'
modules are missing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.nix import nixeval


@pytest.fixture(scope="session")
def nix() -> str:
    exe = nixeval.nix_instantiate()
    if exe is None:
        pytest.skip(nixeval.NO_NIX)
    return exe


@pytest.fixture(scope="session")
def nixpkgs_lib(nix: str) -> Path:
    lib = nixeval.nixpkgs_lib()
    if lib is None:
        pytest.skip(nixeval.NO_LIB)
    if nixeval.nixos_modules() is None:
        pytest.skip(nixeval.NO_MODULES)
    return lib


@pytest.fixture(scope="session")
def cli_on_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose PATH has `mullvad-allow-k8s` (this interpreter's copy)."""
    bindir = tmp_path_factory.mktemp("bin")
    exe = bindir / "mullvad-allow-k8s"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m mullvad_allow_k8s "$@"\n')
    exe.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
