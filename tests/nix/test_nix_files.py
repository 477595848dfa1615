"""Every .nix file parses; the package, flake, default.nix and VM test hold together."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.nix.nixeval import ROOT, evaluate, nix_path, run_nix

NIX_FILES = sorted(
    p
    for p in ROOT.rglob("*.nix")
    if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
)
PYPROJECT_VERSION = re.search(
    r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE
)
UNIT = ROOT / "data" / "mullvad-allow-k8s.service"
UNITS = sorted(p.name for p in (ROOT / "data").glob("*.service"))
# What nixpkgs' stdenv gives a postInstall, as far as ours uses it.
STDENV_SHIM = r"""
substituteInPlace() {
  file=$1; shift
  [ "$1" = --replace-fail ] || exit 9
  grep -qF -- "$2" "$file" || { echo "substituteInPlace: no $2 in $file" >&2; exit 1; }
  sed -i "s|$2|$3|g" "$file"
}
installManPage() { install -Dm644 "$1" "$out/share/man/man8/${1##*/}"; }
set -e
"""


def test_the_nix_files_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in NIX_FILES}
    assert {"flake.nix", "default.nix", "nix/module.nix", "nix/package.nix"} <= names


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_parses(nix: str, path: Path) -> None:
    proc = run_nix("--parse", str(path))
    assert proc.returncode == 0, proc.stderr


def _stub_pkgs() -> str:
    return """{
      callPackage = path: args: { calledPackage = toString path; };
      testers.runNixOSTest = test: test;
    }"""


def test_default_nix_exposes_package_module_overlay_and_vm_test(nix: str) -> None:
    out = evaluate(f"""
      let d = import {nix_path(ROOT / "default.nix")} {{ pkgs = {_stub_pkgs()}; }};
      in {{
        package = d.package.calledPackage;
        module = toString d.module;
        overlay = builtins.isFunction d.overlay;
        vm = d.tests.vm.name;
      }}""")
    assert out == {
        "package": str(ROOT / "nix" / "package.nix"),
        "module": str(ROOT / "nix" / "module.nix"),
        "overlay": True,
        "vm": "mullvad-allow-k8s",
    }


def test_overlay_adds_the_package(nix: str) -> None:
    out = evaluate(f"""
      let final = {_stub_pkgs()};
      in (import {nix_path(ROOT / "nix" / "overlay.nix")} final {{ }}).mullvad-allow-k8s""")
    assert out == {"calledPackage": str(ROOT / "nix" / "package.nix")}


def test_vm_test_script_is_python_and_uses_its_nodes(nix: str) -> None:
    test = evaluate(f"""
      let t = import {nix_path(ROOT / "nix" / "tests" / "vm.nix")} {{ pkgs = {_stub_pkgs()}; }};
      in {{ inherit (t) testScript; nodes = builtins.attrNames t.nodes; }}""")
    compile(test["testScript"], "vm.nix testScript", "exec")
    for node in test["nodes"]:
        assert re.search(rf"\b{node}\b", test["testScript"]), node


def test_flake_outputs(nixpkgs_lib: Path) -> None:
    out = evaluate(f"""
      let
        lib = import {nix_path(nixpkgs_lib)};
        pkgs = {_stub_pkgs()};
        nixpkgs = {{
          inherit lib;
          legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs);
        }};
        flake = import {nix_path(ROOT / "flake.nix")};
        self = flake.outputs {{ inherit self nixpkgs; }};
      in {{
        inputs = builtins.attrNames flake.inputs;
        module = builtins.isFunction self.nixosModules.default;
        overlay = (self.overlays.default pkgs {{ }}).mullvad-allow-k8s;
        packages = lib.mapAttrs (_: p: p.default) self.packages;
        checks = lib.mapAttrs (_: c: builtins.attrNames c) self.checks;
      }}""")
    package = {"calledPackage": str(ROOT / "nix" / "package.nix")}
    assert out == {
        "inputs": ["nixpkgs"],
        "module": True,
        "overlay": package,
        "packages": {"aarch64-linux": package, "x86_64-linux": package},
        "checks": {s: ["package", "vm"] for s in ("aarch64-linux", "x86_64-linux")},
    }


# A stand-in for the nixpkgs flake input: the real lib, and packages that are trivial
# derivations, so `nix flake check --no-build` runs offline.
FAKE_NIXPKGS = """{
  outputs = { self }: let
    lib = import ./lib;
    drv = name: derivation {
      inherit name;
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "echo > $out" ];
    };
    pkgs = {
      callPackage = path: args: drv "package";
      testers.runNixOSTest = test: drv test.name;
    };
  in {
    inherit lib;
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs);
  };
}
"""


def test_nix_flake_check(nixpkgs_lib: Path, tmp_path: Path) -> None:
    nix = shutil.which("nix")
    if nix is None:
        pytest.skip("the nix command is not installed (Debian's nix-bin has it)")
    fake = tmp_path / "nixpkgs"
    shutil.copytree(nixpkgs_lib, fake / "lib")
    (fake / "flake.nix").write_text(FAKE_NIXPKGS)
    flake = tmp_path / "flake"
    shutil.copytree(ROOT / "nix", flake / "nix")
    shutil.copy(ROOT / "flake.nix", flake / "flake.nix")
    proc = subprocess.run(
        [
            nix, "--extra-experimental-features", "nix-command flakes",
            "--store", str(tmp_path / "store"),  # a private store: nothing lands in /nix
            "flake", "check", "--no-build", "--no-write-lock-file",
            "--override-input", "nixpkgs", f"path:{fake}", f"path:{flake}",
        ],
        capture_output=True,
        text=True,
        check=False,
        # The flake fetcher caches under XDG_CACHE_HOME: keep that in tmp_path too.
        env={**os.environ, "NIX_REMOTE": "", "NIX_PATH": "", "XDG_CACHE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_package_attributes(nixpkgs_lib: Path, tmp_path: Path) -> None:
    # `src` uses lib.fileset, which needs builtins.readFileType (Nix >= 2.14); Nix 2.8
    # here cannot evaluate it, so it is left out.
    out = evaluate(f"""
      let
        lib = import {nix_path(nixpkgs_lib)};
        p = import {nix_path(ROOT / "nix" / "package.nix")} {{
          inherit lib;
          python3Packages = {{
            buildPythonApplication = attrs: attrs;
            setuptools = "setuptools";
            netaddr = "netaddr";
            pyyaml = "pyyaml";
            pytestCheckHook = "pytestCheckHook";
            hypothesis = "hypothesis";
          }};
          installShellFiles = "installShellFiles";
          nftables = "/nftables";
          iproute2 = "/iproute2";
          util-linux = "/util-linux";
        }};
      in {{
        inherit (p) pname version dependencies makeWrapperArgs postInstall pytestFlagsArray;
        inherit (p.meta) mainProgram;
      }}""")
    assert PYPROJECT_VERSION
    assert (out["pname"], out["version"]) == ("mullvad-allow-k8s", PYPROJECT_VERSION.group(1))
    assert out["dependencies"] == ["netaddr", "pyyaml"]  # detection parses YAML
    assert out["mainProgram"] == "mullvad-allow-k8s"
    assert out["makeWrapperArgs"] == [
        "--prefix", "PATH", ":", "/nftables/bin:/iproute2/bin:/util-linux/bin",
    ]  # fmt: skip
    assert out["pytestFlagsArray"] == ["tests/unit"]
    assert (ROOT / "tests" / "unit").is_dir()
    # postInstall installs every unit in data/ and rewrites its /usr/bin path with
    # --replace-fail: that path must be the only one a unit names. Run it (from the
    # source tree, as the build does) with a stand-in for stdenv's two functions.
    assert UNITS == ["mullvad-allow-k8s-follow.service", "mullvad-allow-k8s.service"]
    dest = tmp_path / "out"
    proc = subprocess.run(
        ["sh", "-c", STDENV_SHIM + out["postInstall"]],
        cwd=ROOT,
        env={**os.environ, "out": str(dest)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (dest / "lib" / "systemd" / "system").iterdir()) == UNITS
    for name in UNITS:
        source = (ROOT / "data" / name).read_text()
        assert set(re.findall(r"/usr/\S+", source)) == {"/usr/bin/mullvad-allow-k8s"}, name
        installed = (dest / "lib" / "systemd" / "system" / name).read_text()
        assert installed == source.replace("/usr/bin/", f"{dest}/bin/"), name
    assert (dest / "share" / "man" / "man8" / "mullvad-allow-k8s.8").is_file()


def test_flake_lock_absent_or_valid() -> None:
    lock = ROOT / "flake.lock"
    if lock.exists():
        assert "nixpkgs" in json.loads(lock.read_text())["nodes"]
