"""Fixtures for the RPM tests: built packages (two releases), the Debian test root."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.releases import NOT_IN_CHECKOUT, RELEASE_0_1_0, release_tree
from tests.rpm import harness


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "rpm: builds the RPM and installs it into Debian-userland test systems"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/rpm/" in item.nodeid:
            item.add_marker(pytest.mark.rpm)


@pytest.fixture(scope="session")
def rpm_tools() -> None:
    missing = harness.missing_tools()
    if missing:
        pytest.skip(
            f"RPM tests need {', '.join(missing)} (apt-get install $(grep -v '^#' "
            ".ci/apt/rpm.txt); CI installs them)"
        )


@pytest.fixture(scope="session")
def rpm_workdir(rpm_tools: None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mak-rpm-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def builds(rpm_workdir: Path) -> dict[int, harness.Build]:
    """Release 1 and release 2 (for upgrades) of the same sources, built side by side."""
    return harness.build_releases(rpm_workdir, (1, 2))


@pytest.fixture(scope="session")
def release_0_1_0(rpm_workdir: Path) -> harness.Build:
    """The released 0.1.0 RPM, built from this repository's history."""
    tree = release_tree(RELEASE_0_1_0, rpm_workdir / "src-0.1.0")
    if tree is None:
        pytest.skip(NOT_IN_CHECKOUT)
    return harness.build_rpm(rpm_workdir / "top-0.1.0", 1, tree)


@pytest.fixture(scope="session")
def release1(builds: dict[int, harness.Build]) -> harness.Build:
    return builds[1]


@pytest.fixture(scope="session")
def release2(builds: dict[int, harness.Build]) -> harness.Build:
    return builds[2]


@pytest.fixture(scope="session")
def rpmlint_configs(rpm_tools: None) -> Path:
    """rpmlint's Fedora/ and openSUSE/ configurations (`make rpm-lint-configs`, cached)."""
    target = harness.CACHE / "rpmlint-configs"
    proc = harness.run(
        ["make", "-s", "--no-print-directory", "-C", harness.REPO, "rpm-lint-configs",
         f"RPMLINT_CONFIGS={target}"],
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(
            "rpmlint's distribution configurations come from its sdist on PyPI, which "
            f"could not be fetched: {(proc.stdout + proc.stderr).strip()[-500:]}"
        )
    return Path(proc.stdout.split()[-1])


@pytest.fixture(scope="session")
def shim(rpm_workdir: Path) -> Path:
    return harness.build_shim(rpm_workdir / "shim")


@pytest.fixture(scope="session")
def debian_root(rpm_tools: None) -> Path:
    if os.geteuid() != 0:
        pytest.skip("installing into test systems needs root (mounts, namespaces); CI is root")
    return harness.debian_root()


SystemFactory = Callable[..., harness.System]


@pytest.fixture
def system(debian_root: Path, shim: Path, tmp_path: Path) -> Iterator[SystemFactory]:
    """make(live=True, python=None, provides_helper=True): a fresh system.

    python="3.X": with that Fedora-like Python (harness.python_layer) as python3.
    provides_helper: install the Provides helper, so rpm -i resolves against the Debian userland.
    """
    made: list[harness.System] = []

    def make(
        *, live: bool = True, python: str | None = None, provides_helper: bool = True
    ) -> harness.System:
        layers = []
        if python is not None:
            if reason := harness.missing_python(python):
                pytest.skip(reason)
            layers.append(harness.python_layer(debian_root, python))
        sys_ = harness.System(debian_root, tmp_path / f"sys{len(made)}", live=live, layers=layers)
        made.append(sys_)
        if provides_helper:
            sys_.rpm("-i", shim)
        return sys_

    yield make
    for sys_ in made:
        sys_.close()
