"""The packages the suites install, each built once per session, two at a time.

tests/deb, tests/rpm, tests/repo and tests/install share one `Builds` (the `builds`
fixture of tests/conftest.py). The first request starts every build in the
background; a test waits only for the package it asks for. The packages:

- `deb`: this tree's .deb (`make deb`; its build runs the unit tests, dh_auto_test),
  and its .changes for lintian;
- `deb_upgrade`: the same source at UPGRADE_VERSION, the "newer version" of every
  upgrade test: what changes is the package version, which is what the maintainer
  scripts act on;
- `rpm`, `rpm_upgrade`: release 1 (with %check, tests/rpm checks it ran) and 2;
- `deb_0_1_0`, `rpm_0_1_0`: the released 0.1.0, built from this repository's history
  (tests/releases.py): what users have installed; `deb_0_2_0`: the released 0.2.0;
- `shim`: the Provides-only helper rpm of the Debian-userland test roots (tests/rpm).

Only `deb` and `rpm` run the unit tests in the build; the others are the same
contents at another version and skip them. A package that cannot be built here
skips the tests that need it, saying why; a failed build fails them with its log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from mullvad_allow_k8s import __version__
from tests.releases import (
    NOT_IN_CHECKOUT,
    NOT_IN_CHECKOUT_0_2_0,
    RELEASE_0_1_0,
    RELEASE_0_2_0,
    release_tree,
)
from tests.roots import PATH

REPO = Path(__file__).resolve().parents[1]
UPGRADE_VERSION = f"{__version__}+upgradetest1"
SHIM_SPEC = REPO / "tests" / "rpm" / "debian-userland-provides.spec"
NOCHECK_RPM = "RPMBUILD_FLAGS=--nodeps --without check"


def _file(name: str, pattern: str) -> property:
    """The file of build NAME matching PATTERN, once built (a property of Builds)."""

    def get(builds: Builds) -> Path:
        builds.log(name)
        (path,) = (builds.workdir / name).glob(pattern)
        return path

    return property(get)


class Builds:
    """Every package of the module doc, started at construction (see there)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._pool = ThreadPoolExecutor(max_workers=2)  # mostly CPU: 2 cores in CI
        self.jobs: dict[str, Future[subprocess.CompletedProcess[str]] | str] = {}
        old = release_tree(RELEASE_0_1_0, workdir / "src-0.1.0")
        previous = release_tree(RELEASE_0_2_0, workdir / "src-0.2.0")
        no_deb = self._deb_missing()
        no_rpm = "" if shutil.which("rpmbuild") else "rpmbuild is missing (.ci/apt/rpm.txt)"
        gone = NOT_IN_CHECKOUT if old is None else ""
        shim = ["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {workdir / 'shim'}"]
        # the .debs first: tests/deb runs first and tests/install next (`make test`)
        self._start("deb", no_deb, REPO, "deb")
        self._start("deb_upgrade", no_deb, REPO, "deb", f"DEB_VERSION={UPGRADE_VERSION}")
        self._start("deb_0_1_0", no_deb or gone, old, "deb")
        gone_0_2_0 = NOT_IN_CHECKOUT_0_2_0 if previous is None else ""
        self._start("deb_0_2_0", no_deb or gone_0_2_0, previous, "deb")
        self._start("rpm", no_rpm, REPO, "rpm", "RPM_RELEASE=1")
        self._start("shim", no_rpm, None, *shim, str(SHIM_SPEC))
        self._start("rpm_upgrade", no_rpm, REPO, "rpm", "RPM_RELEASE=2", NOCHECK_RPM)
        self._start("rpm_0_1_0", no_rpm or gone, old, "rpm", NOCHECK_RPM)

    @staticmethod
    def _deb_missing() -> str:
        tools = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "make")
        if absent := [t for t in tools if not shutil.which(t, path=PATH)]:
            return f"needs {', '.join(absent)} (install .ci/apt/deb.txt)"
        deps = subprocess.run(
            ["dpkg-checkbuilddeps"], capture_output=True, text=True, check=False, cwd=REPO
        )
        if deps.returncode != 0:
            return f"build dependencies missing: {deps.stderr.strip()} (.ci/apt/deb.txt)"
        return ""

    def _start(self, name: str, missing: str, tree: Path | None, *args: str) -> None:
        """Build NAME: `make -C TREE ARGS` into workdir/NAME, or ARGS itself (tree None)."""
        if missing:
            self.jobs[name] = missing
            return
        cmd = list(args)
        if tree is not None:
            out = self.workdir / name
            where = (
                [f"DEB_DIR={out}", "DEB_LINTIAN=no"] if args[0] == "deb" else [f"RPM_TOPDIR={out}"]
            )
            cmd = ["make", "-s", "-C", str(tree), *args, *where]
        env = {**os.environ, **({} if name == "deb" else {"DEB_BUILD_OPTIONS": "nocheck"})}
        self.jobs[name] = self._pool.submit(
            subprocess.run,
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            check=False,
        )

    def log(self, name: str) -> str:
        """The build's output (skips or fails the test like the package itself)."""
        job = self.jobs[name]
        if isinstance(job, str):
            pytest.skip(job)
        proc = job.result()
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(proc.args)}` failed:\n{proc.stdout[-3000:]}", pytrace=False)
        return proc.stdout

    deb = _file("deb", "mullvad-allow-k8s_*_all.deb")
    changes = _file("deb", "*.changes")
    deb_upgrade = _file("deb_upgrade", "mullvad-allow-k8s_*_all.deb")
    deb_0_1_0 = _file("deb_0_1_0", "mullvad-allow-k8s_*_all.deb")
    deb_0_2_0 = _file("deb_0_2_0", "mullvad-allow-k8s_*_all.deb")
    rpm = _file("rpm", "RPMS/noarch/mullvad-allow-k8s-*.rpm")
    rpm_upgrade = _file("rpm_upgrade", "RPMS/noarch/mullvad-allow-k8s-*.rpm")
    rpm_0_1_0 = _file("rpm_0_1_0", "RPMS/noarch/mullvad-allow-k8s-*.rpm")
    shim = _file("shim", "RPMS/noarch/debian-userland-provides-*.rpm")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def version(package: Path) -> str:
    """The version a package file carries: dpkg's Version, or rpm's VERSION-RELEASE."""
    if package.suffix == ".deb":
        query = ["dpkg-deb", "--field", str(package), "Version"]
    else:
        query = ["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", str(package)]
    return subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
