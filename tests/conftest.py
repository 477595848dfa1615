"""Shared helpers: root/netns helpers for kernel tests; the package builds and the
Debian root that tests/deb, tests/rpm, tests/repo and tests/install share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests import roots
from tests.packages import Builds

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "mullvad_allow_k8s"]


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(
    not is_root(), reason="needs root to create network namespaces (CI runs as root)"
)


def run(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, **kw)  # type: ignore[call-overload, no-any-return]


class Netns:
    """A named network namespace, deleted at teardown even when the test fails."""

    def __init__(self, name: str) -> None:
        self.name = name
        run("ip", "netns", "add", name)
        self.sh("ip link set lo up")

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, "sh", "-c", command, check=check)

    def cli(self, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env_extra}
        return run("ip", "netns", "exec", self.name, *CLI, *args, check=False, env=env)

    def nft_json(self, what: str) -> str:
        return self.sh(f"nft -j {what}").stdout

    def delete(self) -> None:
        run("ip", "netns", "delete", self.name, check=False)


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], Netns]]:
    if not is_root():
        pytest.skip("needs root to create network namespaces (CI runs as root)")
    if not shutil.which("ip") or not shutil.which("nft"):
        pytest.skip("needs iproute2 and nftables installed (.ci/run installs them)")
    made: list[Netns] = []

    def make(tag: str = "t") -> Netns:
        ns = Netns(f"mak-{tag}-{uuid.uuid4().hex[:8]}")
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()


PREFETCH = pytest.StashKey[threading.Thread]()


def roots_wanted(item: pytest.Item) -> list[tuple[str, tuple[str, ...]]]:
    """The roots (suite, include) that ITEM's fixtures ask tests/roots.py for."""
    names = set(getattr(item, "fixturenames", ()))
    wanted = [("bookworm", roots.INCLUDE)] if "debian_root" in names else []
    if "machine" in names:  # tests/deb
        wanted.append((roots.DEB_SUITE, roots.INCLUDE))
    if "apt_system" in names:  # tests/repo, one root per suite
        wanted.append((item.callspec.params["suite"], roots.INCLUDE))  # type: ignore[attr-defined]
    if "dnf_root" in names:
        wanted.append(("bookworm", roots.DNF_INCLUDE))
    return wanted


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the roots the selected tests need, in the order they need them:
    a later suite's root is then ready when its tests start."""
    wanted = [r for item in session.items if not item.get_closest_marker("skip")
              for r in roots_wanted(item)]  # fmt: skip
    if wanted and is_root() and not session.config.option.collectonly:
        session.config.stash[PREFETCH] = roots.prefetch(list(dict.fromkeys(wanted)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if thread := session.config.stash.get(PREFETCH, None):
        thread.join()  # never leave a half-built root behind


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    """Every package the suites install, all started now (tests/packages.py)."""
    started = Builds(tmp_path_factory.mktemp("packages"))
    yield started
    started.close()


def root_or_skip(suite: str = "bookworm", include: Sequence[str] = roots.INCLUDE) -> Path:
    try:
        return roots.debian_root(suite, include)
    except roots.UnavailableError as why:
        pytest.skip(str(why))


@pytest.fixture(scope="session")
def debian_root(builds: Builds) -> Path:
    """The cached bookworm root of tests/deb and tests/rpm (tests/roots.py).

    Requests builds only so that the packages build while mmdebstrap downloads.
    """
    return root_or_skip()
