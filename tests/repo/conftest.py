"""Fixtures for the repository tests: keys, packages, published repositories, systems.

Packages: the .deb at its own version and at UPGRADE_VERSION, the .rpm at release 1
and 2, the Provides helper (tests/packages.py, shared with the other suites). Keys: made by
repo/test-key in temporary GNUPGHOMEs, one that signs and one that an attacker has.
Repositories: `make repo-publish` into a temporary folder, served per test by
`python3 -m http.server` on 127.0.0.1 inside the test system's own network
namespace, the address written into the published .sources and .repo files.

Systems: for apt, tests/deb's Machine on a cached root of each suite (tests/roots.py);
for dnf, tests/rpm's System on a cached bookworm root that also has
Debian's dnf and rpm, with rpm's database at /var/lib/rpm as on Fedora, and the
Provides helper rpm for what the Debian userland already has.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import root_or_skip
from tests.deb.conftest import Machine
from tests.packages import Builds
from tests.roots import DNF_INCLUDE, PATH, run
from tests.rpm import harness

REPO = Path(__file__).resolve().parents[2]
PORT = 8000  # free in every test: each system has a network namespace of its own
URL = f"http://127.0.0.1:{PORT}"
# Debian's own interpreter serves the files (any python3 would do).
SERVER_PYTHON = "/usr/bin/python3"
TOOLS = {
    "apt-ftparchive": "apt-utils",
    "gpg": "gnupg",
    "gpgv": "gpgv",
    "createrepo_c": "createrepo-c",
    "rpm": "rpm",
    "rpmsign": "rpm",
    "rpmbuild": "rpm",
    "dpkg-deb": "dpkg",
    "make": "make",
}
RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-mullvad-allow-k8s"  # the .repo file's gpgkey


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "repo: publishes signed apt/dnf repositories and installs from them"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/repo/" in item.nodeid:
            item.add_marker(pytest.mark.repo)


@pytest.fixture(scope="session")
def repo_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool, path=PATH)})
    if missing:
        pytest.skip(f"needs the Debian packages {', '.join(missing)} (.ci/apt/repo.txt)")


# ------------------------------------------------------------------------ keys


@dataclass(frozen=True)
class Key:
    home: Path  # the GNUPGHOME holding the secret key
    fingerprint: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}

    def gpg(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return run(["gpg", "--batch", "--yes", "--quiet", *args], env=self.env())


def make_key(home: Path) -> Key:
    fingerprint = run([REPO / "repo/test-key", home]).stdout.strip()
    assert len(fingerprint) == 40, fingerprint
    return Key(home, fingerprint)


@pytest.fixture(scope="session")
def keys(repo_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Key, Key]]:
    """The project's key and an attacker's, both made now (never stored anywhere)."""
    tmp = tmp_path_factory.mktemp("keys")
    made = (make_key(tmp / "project"), make_key(tmp / "attacker"))
    yield made
    for key in made:
        run(["gpgconf", "--kill", "all"], env=key.env(), check=False)


@pytest.fixture(scope="session")
def key(keys: tuple[Key, Key]) -> Key:
    return keys[0]


@pytest.fixture(scope="session")
def attacker_key(keys: tuple[Key, Key]) -> Key:
    return keys[1]


# ---------------------------------------------------------------- repositories


def publish(
    out: Path, key: Key, *, debs: tuple[Path, ...] = (), rpms: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`make repo-publish`, as a maintainer publishes (here into `out`, served at URL)."""
    return run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "-C",
            REPO,
            "repo-publish",
            f"REPO_DIR={out}",
            f"REPO_URL={URL}",
            f"REPO_GNUPGHOME={key.home}",
            f"REPO_KEY={key.fingerprint}",
            f"REPO_DEBS={' '.join(map(str, debs))}",
            f"REPO_RPMS={' '.join(map(str, rpms))}",
        ]
    )


@pytest.fixture(scope="session")
def published(builds: Builds, key: Key, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first release published: the .deb and the .rpm (each test serves a copy)."""
    out = tmp_path_factory.mktemp("published") / "repo"
    publish(out, key, debs=(builds.deb,), rpms=(builds.rpm,))
    return out


@pytest.fixture
def repo_copy(published: Path, tmp_path: Path) -> Path:
    """A copy of the published repository that the test may add to or tamper with."""
    copy = tmp_path / "served"
    shutil.copytree(published, copy, symlinks=True)
    return copy


class Server:
    """`python3 -m http.server` on 127.0.0.1:PORT in a network namespace; logs requests."""

    def __init__(self, enter: list[str], directory: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [
                *enter,
                SERVER_PYTHON,
                "-u",
                "-m",
                "http.server",
                "-b",
                "127.0.0.1",
                "-d",
                str(directory),
                str(PORT),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # printed once the socket is bound
        assert first.startswith("Serving HTTP"), f"http.server did not start: {first!r}"

    def requests(self) -> list[str]:
        """Requests served so far, e.g. 'GET /apt/dists/stable/InRelease HTTP/1.1 200'."""
        self._log_file.flush()
        lines = []
        for line in self.log.read_text().splitlines():
            match = re.search(r'"(\S+) (\S+) (\S+)" (\d+)', line)
            if match:
                method, path, protocol, code = match.groups()
                lines.append(f"{method} {unquote(path)} {protocol} {code}")
        return lines

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._log_file.close()


# -------------------------------------------------------------------- systems


class AptSystem:
    """A Debian root (overlay, own network namespace) whose apt knows only our repository."""

    def __init__(self, machine: Machine, repo: Path) -> None:
        self.machine = machine
        self.repo = repo
        run(["ip", "-n", machine.netns, "link", "set", "lo", "up"])
        # The roots have no network: Debian's own sources would only time out.
        for path in ("/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources"):
            machine.file(path).unlink(missing_ok=True)
        self.server = Server(
            ["ip", "netns", "exec", machine.netns], repo, machine.work / "http.log"
        )

    def add_repository(self) -> None:
        """What the README tells users: put the published .sources file in place."""
        shutil.copy(
            self.repo / "mullvad-allow-k8s.sources",
            self.machine.file("/etc/apt/sources.list.d/mullvad-allow-k8s.sources"),
        )

    def apt(self, args: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.machine.sh(f"apt-get -o Dpkg::Use-Pty=0 {args}", check=check)

    def version(self) -> str:
        return self.machine.sh(
            "dpkg-query -W -f '${db:Status-Abbrev}${Version}' mullvad-allow-k8s", check=False
        ).stdout

    def close(self) -> None:
        self.server.stop()


@pytest.fixture(params=["bookworm", "trixie", "sid"])
def suite(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def apt_system(suite: str, repo_copy: Path, tmp_path: Path) -> Iterator[AptSystem]:
    """A fresh root of `suite` with our repository served in its network namespace.

    Requests repo_copy (so the packages) first: the builds run while a root is built.
    """
    root = root_or_skip(suite)
    machine = Machine(root, tmp_path / "machine")
    system = None
    try:
        system = AptSystem(machine, repo_copy)
        yield system
    finally:
        if system:
            system.close()
        machine.close()


class DnfSystem:
    """A Debian-userland root with Debian's dnf, live (own PID 1 and network namespace)."""

    def __init__(self, system: harness.System, repo: Path, shim: Path) -> None:
        self.system = system
        self.repo = repo
        # rpm's database where Fedora's dnf and rpm look for it (Debian's rpm would use
        # ~/.rpmdb), for rpm run from the host (--dbpath) and from inside alike.
        system.path("/etc/rpm").mkdir(exist_ok=True)
        system.path("/etc/rpm/macros.dbpath").write_text(f"%_dbpath {harness.DBPATH}\n")
        system.rpm("-i", shim)
        enter = ["nsenter", "-t", str(system.pid), "-n", "--"]
        self.server = Server(enter, repo, system.workdir / "http.log")

    def add_repository(self) -> None:
        """What the README tells users: put the published .repo file and the key in place."""
        repos = self.system.path("/etc/yum.repos.d")
        repos.mkdir(exist_ok=True)
        shutil.copy(self.repo / "mullvad-allow-k8s.repo", repos / "mullvad-allow-k8s.repo")
        keys = self.system.path(RPM_KEY).parent
        keys.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.repo / "mullvad-allow-k8s.asc", keys / Path(RPM_KEY).name)

    def dnf(self, args: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        # stderr into stdout: dnf splits its messages between the two
        return self.system.sh(f"dnf --assumeyes {args} 2>&1", check=check)

    def version(self) -> str:
        proc = self.system.sh("rpm -q --qf '%{VERSION}-%{RELEASE}' mullvad-allow-k8s", check=False)
        return proc.stdout if proc.returncode == 0 else ""

    def close(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def dnf_root(repo_tools: None) -> Path:
    if not shutil.which("nsenter"):
        pytest.skip("needs nsenter (util-linux)")
    return root_or_skip("bookworm", DNF_INCLUDE)


@pytest.fixture
def dnf_system(
    dnf_root: Path, repo_copy: Path, builds: Builds, tmp_path: Path
) -> Iterator[DnfSystem]:
    system = harness.System(dnf_root, tmp_path / "system", live=True)
    dnf = None
    try:
        dnf = DnfSystem(system, repo_copy, builds.shim)
        yield dnf
    finally:
        if dnf:
            dnf.close()
        system.close()
