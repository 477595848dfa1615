"""Harness of the container install tests: engine, images, packages, containers.

- The podman configuration is written by engine.configure() at collection; the
  engine is probed once. Without podman (or not root) every test here is skipped
  with the reason; with a podman that cannot run containers every test fails with
  the reason in one line, not with a fixture traceback.
- Images come from images.toml. Those this machine can build (from the Debian
  archive) and that are missing are built at the start of the session (as `make
  images` would); those that need a registry and were not built are skipped,
  saying how to build them.
- The packages are the session's (tests/packages.py, shared with tests/deb, rpm and
  repo): the .deb at its own version and at UPGRADE_VERSION, the .rpm at release 1
  and 2, and the released 0.1.0 of each.
- Containers are pytest-container's: `container_per_test` (a fresh container per
  test) or `container` (shared by the tests of a module, for the systemd lifecycle).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.mark.structures import ParameterSet

from tests.install import engine, imagebuild, imagelist
from tests.install.harness import SYSTEMD_BOOT, Box
from tests.packages import Builds, version

try:
    from pytest_container import Container
    from pytest_container.container import ContainerData
except ImportError:  # the container tests cannot even be collected; test_harness says why
    Container = None  # type: ignore[assignment,misc]
    collect_ignore_glob = ["test_deb.py", "test_systemd.py", "test_rpm.py"]

ROOT = Path(__file__).resolve().parents[2]
IMAGES = imagelist.load()
BY_TAG = {image.tag: image for image in IMAGES}
# tests/deb installs the .deb into a bookworm root (no systemd as PID 1) and runs
# the preseed/invalid/reconfigure/upgrade/purge flows there; those flows run here on
# the other userlands, and on bookworm only with systemd as PID 1.
COVERED_BY_TESTS_DEB = frozenset({"bookworm"})

_ENGINE_FAILED = "install_engine_failed"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "install: installs the packages in containers of tests/install/images.toml"
    )
    config.addinivalue_line(
        "markers", f"{_ENGINE_FAILED}(reason): podman is there but cannot run containers"
    )


# ---------------------------------------------------------------- images as parameters


def container_of(image: imagelist.Image) -> Container:
    """The pytest-container description of a container of IMAGE (no network, own netns)."""
    args = ["--network", "none", "--cap-add", "NET_ADMIN", "--hostname", image.name]
    if not image.systemd:
        # PID 1 is an interactive bash, which ignores SIGTERM: nothing to shut down
        return Container(url=image.url, extra_launch_args=[*args, "--stop-signal", "SIGKILL"])
    return Container(
        url=image.url,
        extra_launch_args=[
            *args,
            "--cap-add", "SYS_ADMIN",  # mount cgroup2 for systemd (see SYSTEMD_BOOT)
            "--cgroupns", "private",
            "--systemd", "always",
        ],
        custom_entry_point="/bin/sh",
        extra_entrypoint_args=["-c", SYSTEMD_BOOT],
    )  # fmt: skip


def images(
    family: str,
    *,
    systemd: bool,
    without: frozenset[str] = frozenset(),
    unless: Callable[[imagelist.Image], str | None] = lambda image: None,
) -> list[ParameterSet]:
    """pytest parameters: a container of each listed image of FAMILY.

    WITHOUT names images left out; UNLESS returns why a test cannot use an image (a skip).
    """
    params = []
    for image in IMAGES:
        if image.family != family or image.systemd != systemd or image.name in without:
            continue
        marks = [pytest.mark.install]
        if reason := unless(image):
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(container_of(image), id=image.name, marks=marks))
    return params


def image_of(item: pytest.Item) -> imagelist.Image | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or Container is None:
        return None
    for name in ("container_per_test", "container"):
        if isinstance(param := callspec.params.get(name), Container):
            return BY_TAG.get(param.url)
    return None


TO_BUILD = pytest.StashKey[list[imagelist.Image]]()
IMAGES_BUILT = pytest.StashKey[Future[dict[str, str]]]()
USED = pytest.StashKey[list[imagelist.Image]]()
FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [
        (item, image)
        for item in items
        if (image := image_of(item)) is not None and not item.get_closest_marker("skip")
    ]
    if not ours:
        return
    problem = engine.probe()
    if problem:
        # No podman, or not root: these tests cannot run here. Podman that fails: a fault.
        fatal = shutil.which(engine.PODMAN) is not None and os.geteuid() == 0
        mark = pytest.mark.install_engine_failed(problem) if fatal else pytest.mark.skip(problem)
        for item, _ in ours:
            item.add_marker(mark)
        return
    missing = {
        image.name: image
        for _, image in ours
        if engine.podman("image", "exists", image.tag, check=False).returncode != 0
    }
    to_build = []
    for item, image in ours:
        if image.name not in missing:
            continue
        if image.needs_registry or not image.enabled:
            reason = f"image {image.name} is not built ({image.tag}): {image.how_to_build}"
            item.add_marker(pytest.mark.skip(reason=reason))
        elif why := image.unbuildable:
            item.add_marker(pytest.mark.skip(reason=f"image {image.name} cannot be built: {why}"))
        elif image not in to_build:
            to_build.append(image)
    config.stash[TO_BUILD] = to_build
    config.stash[USED] = [
        i
        for i in {i.name: i for _, i in ours}.values()
        if i not in missing.values() or i in to_build
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the missing images of the selected tests (-k, -m applied), in the
    background, while the suites before this one run."""
    selected = {image_of(item) for item in session.items}
    wanted = [i for i in session.config.stash.get(TO_BUILD, []) if i in selected]
    if wanted and not session.config.option.collectonly:
        # two builds at a time: the package builds and the tests share the 2 cores
        built = ThreadPoolExecutor(1).submit(imagebuild.ensure, wanted, 2)
        session.config.stash[IMAGES_BUILT] = built


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if mark := item.get_closest_marker(_ENGINE_FAILED):
        pytest.fail(f"container engine: {mark.args[0]}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


@pytest.fixture(scope="session", autouse=True)
def _images_ready(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> None:
    """The missing images this session's tests need (their build started at collection),
    then check that a container runs."""
    used = pytestconfig.stash.get(USED, [])
    if used:  # package builds (a few seconds of CPU) overlap the image downloads
        request.getfixturevalue("builds")
    built = pytestconfig.stash.get(IMAGES_BUILT, None)
    if built and (errors := built.result()):
        pytest.fail(
            "building the test images failed:\n" + "\n".join(errors.values()), pytrace=False
        )
    if used and (problem := engine.probe_run(used[0].tag)):
        pytest.fail(f"container engine: {problem}", pytrace=False)


# ---------------------------------------------------------------- packages


@dataclass(frozen=True)
class Packages:
    old: Path
    new: Path
    version_old: str
    version_new: str


def pair(old: Path, new: Path) -> Packages:
    return Packages(old, new, version(old), version(new))


@pytest.fixture(scope="session")
def debs(builds: Builds) -> Packages:
    return pair(builds.deb, builds.deb_upgrade)


@pytest.fixture(scope="session")
def debs_from_0_1_0(builds: Builds) -> Packages:
    """The released 0.1.0 .deb and this tree's."""
    return pair(builds.deb_0_1_0, builds.deb)


@pytest.fixture(scope="session")
def rpms_from_0_1_0(builds: Builds) -> Packages:
    """The released 0.1.0 .rpm and this tree's."""
    return pair(builds.rpm_0_1_0, builds.rpm)


@pytest.fixture(scope="session")
def rpms(builds: Builds) -> Packages:
    return pair(builds.rpm, builds.rpm_upgrade)


# ---------------------------------------------------------------- containers


def _box(data: ContainerData) -> Box:
    assert isinstance(data.container, Container)
    box = Box(data, BY_TAG[data.container.url])
    if box.image.systemd:
        box.wait_booted()
    return box


def report_if_failed(request: pytest.FixtureRequest, box: Box) -> None:
    """After a failed test: what helps to understand it, into the test's report."""
    if not request.node.stash.get(FAILED, False):
        return
    print(f"--- {box!r}: tables: {sorted(box.tables())}")
    if box.image.systemd:
        logs = "journalctl -b -u mullvad-allow-k8s -u nftables --no-pager"
        print(box.sh(f"systemctl --failed --no-pager; {logs}", check=False).stdout)


@pytest.fixture
def box(container_per_test: ContainerData, request: pytest.FixtureRequest) -> Iterator[Box]:
    """A fresh container of the test's image (booted, for systemd images)."""
    box = _box(container_per_test)
    yield box
    report_if_failed(request, box)


@pytest.fixture(scope="module")
def shared_box(container: ContainerData) -> Box:
    """A container shared by the tests of a module, for one image (booted)."""
    return _box(container)
