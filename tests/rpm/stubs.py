"""Local dnf/zypper repositories of Provides-only packages named as each distribution's.

stubs.toml lists, per distribution, the packages the RPM needs there with their names,
versions and Provides (and where each comes from). Each entry becomes an empty
noarch package; createrepo_c makes a repository of them plus the packages under test.
"""

from __future__ import annotations

import hashlib
import shutil
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.roots import cached, run

STUBS_TOML = Path(__file__).with_name("stubs.toml")


@dataclass(frozen=True)
class Stub:
    name: str
    version: str
    epoch: int | None = None
    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    def spec(self, distro: str) -> str:
        lines = [
            f"Name: {self.name}",
            f"Version: {self.version}",
            "Release: 0.stub",
            *([f"Epoch: {self.epoch}"] if self.epoch is not None else []),
            f"Summary: {distro} {self.name}, Provides only (test stub)",
            "License: GPL-3.0-or-later",
            "BuildArch: noarch",
            *[f"Provides: {p}" for p in self.provides],
            *[f"Requires: {r}" for r in self.requires],
            "%description",
            f"Stands for {distro}'s {self.name} in tests/rpm (no files).",
            "%files",
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Distro:
    name: str
    python: str  # the X.Y of its python3
    stubs: tuple[Stub, ...] = field(default=())


def load(path: Path = STUBS_TOML) -> dict[str, Distro]:
    data = tomllib.loads(path.read_text())
    return {
        name: Distro(
            name,
            entry["python"],
            tuple(
                Stub(
                    p["name"],
                    p["version"],
                    p.get("epoch"),
                    tuple(p.get("provides", ())),
                    tuple(p.get("requires", ())),
                )
                for p in entry["packages"]
            ),
        )
        for name, entry in data.items()
    }


def _build(stub: Stub, distro: str, topdir: Path) -> None:
    spec = topdir / f"{stub.name}.spec"
    spec.write_text(stub.spec(distro))
    run(["rpmbuild", "-bb", "--quiet", "--nodeps", "--define", f"_topdir {topdir}", spec])


def stub_rpms(distro: Distro) -> list[Path]:
    """The distribution's stub packages, built once and cached (a few rpmbuilds)."""
    key = hashlib.sha256(repr(distro).encode()).hexdigest()[:12]

    def build(top: Path) -> None:
        top.mkdir()
        with ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(_build, s, distro.name, top) for s in distro.stubs]:
                f.result()

    out = cached(f"stubs-{distro.name}-{key}", build)
    return sorted(out.glob("RPMS/*/*.rpm"))


def repository(distro: Distro, directory: Path, *packages: Path) -> Path:
    """A repository at DIRECTORY of DISTRO's stubs and PACKAGES."""
    directory.mkdir(parents=True, exist_ok=True)
    for rpm in [*stub_rpms(distro), *packages]:
        shutil.copy2(rpm, directory / rpm.name)
    run(["createrepo_c", "--quiet", directory])
    return directory
