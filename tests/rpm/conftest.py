"""Fixtures for the RPM tests: the packages (tests/packages.py) and test systems on the
Debian root of tests/deb (tests/roots.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import roots
from tests.packages import Builds
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
def release1(rpm_tools: None, builds: Builds) -> Path:
    return builds.rpm


@pytest.fixture(scope="session")
def release2(rpm_tools: None, builds: Builds) -> Path:
    """Release 2 of the same sources, for upgrades."""
    return builds.rpm_upgrade


@pytest.fixture(scope="session")
def release_0_1_0(rpm_tools: None, builds: Builds) -> Path:
    """The released 0.1.0 RPM, built from this repository's history."""
    return builds.rpm_0_1_0


@pytest.fixture(scope="session")
def rpmlint_configs(rpm_tools: None) -> Path:
    """rpmlint's Fedora/ and openSUSE/ configurations (`make rpm-lint-configs`, cached)."""
    target = roots.CACHE / "rpmlint-configs"
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


SystemFactory = Callable[..., harness.System]


@pytest.fixture
def system(
    rpm_tools: None, debian_root: Path, builds: Builds, tmp_path: Path
) -> Iterator[SystemFactory]:
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
            sys_.rpm("-i", builds.shim)
        return sys_

    yield make
    for sys_ in made:
        sys_.close()
