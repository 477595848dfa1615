"""The RPM's dependencies resolve against each distribution's package names.

For Fedora 40, 41, 42, RHEL 10 and Tumbleweed, a local repository holds empty
packages named and versioned as that distribution's (stubs.toml, with the sources of
every name) and the RPM under test. The real dnf (Debian's dnf 4) and, for
Tumbleweed, the real zypper install `mullvad-allow-k8s` by name with
`--installroot`/`--root` into a system whose rpm database is empty, so every
dependency must be found in the distribution's names, and whose python3 is laid out
like that distribution's (harness.python_layer), so the scriptlets really run.

Shown to fail with the RPM of before issue 13: its dependencies resolve the same way,
but its %post cannot import the package (Debian's dist-packages path), so no table is
loaded and `status` dies with ModuleNotFoundError.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mullvad_allow_k8s import __version__
from tests.rpm import harness, stubs
from tests.rpm.harness import TABLE

SystemFactory = Callable[..., harness.System]
DISTROS = stubs.load()
PACKAGE = "mullvad-allow-k8s"


def need(*tools: str) -> None:
    if missing := [t for t in tools if not shutil.which(t)]:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages listed in .ci/apt/rpm.txt)")


class Installer:
    """dnf or zypper on the host, installing into SYSTEM's root from REPO."""

    def __init__(self, tool: str, sys_: harness.System, repo: Path) -> None:
        need(tool)
        self.tool, self.sys, self.repo = tool, sys_, repo
        # rpm's database at /var/lib/rpm in the root, where System.rpm() looks (Debian's
        # rpm would use ~/.rpmdb); dnf and zypper read the host's rpm macros.
        self.home = sys_.workdir / "home"
        self.home.mkdir(exist_ok=True)
        (self.home / ".rpmmacros").write_text(f"%_dbpath {harness.DBPATH}\n")
        if tool == "zypper":
            # --refresh: read the repository anew before each command (the upgrade)
            self.run("addrepo", "--refresh", "--no-gpgcheck", f"file://{repo}", "stubs")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        root = str(self.sys.root)
        if self.tool == "dnf":
            cmd = [
                "dnf", "--assumeyes", f"--installroot={root}", "--releasever=1",
                "--setopt=reposdir=/dev/null", "--nogpgcheck", "--refresh",
                f"--repofrompath=stubs,file://{self.repo}", "--repo=stubs", *args,
            ]  # fmt: skip
        else:
            cmd = ["zypper", "--non-interactive", "--root", root, "--no-gpg-checks", *args]
        return self.sys.enter(["env", f"HOME={self.home}", *cmd], check=check)


# (tool, distribution): dnf for every distribution, zypper where it is the tool
CASES = [("dnf", name) for name in DISTROS] + [("zypper", "tumbleweed")]


@pytest.mark.parametrize("case", CASES, ids=[f"{tool}-{name}" for tool, name in CASES])
def test_installs_by_name_against_the_distribution_names(
    system: SystemFactory,
    release1: Path,
    release2: Path,
    tmp_path: Path,
    case: tuple[str, str],
) -> None:
    tool, distro = case
    need(tool, "createrepo_c")
    dist = DISTROS[distro]
    sys_ = system(live=True, python=dist.python, provides_helper=False)
    repo = stubs.repository(dist, tmp_path / "repo", release1)
    installer = Installer(tool, sys_, repo)

    proc = installer.run("install", PACKAGE)
    installed = set(sys_.rpm("-qa", "--qf", "%{NAME}\n").stdout.split())
    assert installed == {PACKAGE} | {s.name for s in dist.stubs}, proc.stdout
    assert f"loaded table {TABLE}" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0

    shutil.copy2(release2, repo)
    harness.run(["createrepo_c", "--quiet", "--update", repo])
    installer.run("upgrade" if tool == "dnf" else "update", PACKAGE)
    assert f"{__version__}-2" in sys_.rpm("-q", PACKAGE).stdout
    assert sys_.sh("mullvad-allow-k8s status").returncode == 0

    installer.run("remove", PACKAGE)
    assert sys_.tables() == set()
    assert sys_.pycache_written() == []
    assert sys_.leftovers() == []


PROBE_SPEC = """\
Name: needs-python-3-14
Version: 1
Release: 1
Summary: Probe: requires a Python no target distribution has
License: GPL-3.0-or-later
BuildArch: noarch
Requires: python3 >= 3.14
%description
Probe for test_resolve.py.
%files
"""


def test_the_stubs_refuse_what_a_distribution_lacks(system: SystemFactory, tmp_path: Path) -> None:
    """Control: the same repositories refuse `python3 >= 3.14` (no distribution has it),
    so the installs above are resolved against the modelled versions, not waved through."""
    need("dnf", "createrepo_c")
    top = tmp_path / "probe"
    top.mkdir()
    (top / "probe.spec").write_text(PROBE_SPEC)
    harness.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", top / "probe.spec"])
    (probe,) = (top / "RPMS" / "noarch").glob("*.rpm")
    sys_ = system(live=False, provides_helper=False)
    for name, dist in DISTROS.items():
        repo = stubs.repository(dist, tmp_path / name, probe)
        proc = Installer("dnf", sys_, repo).run("install", "needs-python-3-14", check=False)
        assert proc.returncode != 0, f"{name}: {proc.stdout}"
        assert "nothing provides python3 >= 3.14" in proc.stdout + proc.stderr, name
