"""Harness of the container install tests: engine, images, packages, containers.

- The podman configuration is written by engine.configure() at collection; the
  engine is probed once. Without podman (or not root) every test here is skipped
  with the reason; with a podman that cannot run containers every test fails with
  the reason in one line, not with a fixture traceback.
- Images come from images.toml. Those this machine can build (from the Debian
  archive) and that are missing are built at the start of the session (as `make
  images` would); those that need a registry and were not built are skipped,
  saying how to build them.
- The packages are built once per session from this tree, in parallel: the .deb
  (`make deb`) at its own version and at UPGRADE_DEB, the .rpm (`make rpm`) at
  release 1 and 2. The "previous version" of the upgrade tests is therefore the
  same source at a lower version: what changes is the package version, which is
  what the maintainer scripts act on.
- Containers are pytest-container's: `container_per_test` (a fresh container per
  test) or `container` (shared by the tests of a module, for the systemd lifecycle).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.mark.structures import ParameterSet

from tests.install import engine, imagebuild, imagelist
from tests.install.harness import SYSTEMD_BOOT, Box
from tests.releases import NOT_IN_CHECKOUT, RELEASE_0_1_0, release_tree

try:
    from pytest_container import Container
    from pytest_container.container import ContainerData
except ImportError:  # the container tests cannot even be collected; test_harness says why
    Container = None  # type: ignore[assignment,misc]
    collect_ignore_glob = ["test_deb.py", "test_systemd.py", "test_rpm.py"]

ROOT = Path(__file__).resolve().parents[2]
IMAGES = imagelist.load()
BY_TAG = {image.tag: image for image in IMAGES}
UPGRADE_DEB = "+installtest1"  # appended to the package's version
UPGRADE_RPM_RELEASE = "2"
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
USED = pytest.StashKey[list[imagelist.Image]]()
FAILED = pytest.StashKey[bool]()
TIMINGS: list[str] = []


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "tests/install: images and packages")
        for line in TIMINGS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _images_ready(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> None:
    """Build the missing images this session's tests need, then check a container runs."""
    wanted = pytestconfig.stash.get(TO_BUILD, [])
    used = pytestconfig.stash.get(USED, [])
    if used:  # package builds (a few seconds of CPU) overlap the image downloads
        request.getfixturevalue("builder").start()
    start = time.monotonic()
    if errors := imagebuild.ensure(wanted, say=TIMINGS.append):
        pytest.fail(
            "building the test images failed:\n" + "\n".join(errors.values()), pytrace=False
        )
    if wanted:
        TIMINGS.append(f"images: built what was missing in {time.monotonic() - start:.0f} s")
    if used and (problem := engine.probe_run(used[0].tag)):
        pytest.fail(f"container engine: {problem}", pytrace=False)


# ---------------------------------------------------------------- packages


@dataclass(frozen=True)
class Packages:
    old: Path
    new: Path
    version_old: str
    version_new: str


class Builder:
    """Builds every package once, all at the same time, on first request."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.jobs: dict[str, Future[tuple[subprocess.CompletedProcess[str], float]] | str] = {}

    def start(self) -> None:
        if self.jobs:
            return
        release = release_tree(RELEASE_0_1_0, self.workdir / "src-0.1.0")
        targets = {
            "deb-old": (ROOT / "debian", lambda: ["deb", f"DEB_DIR={self.workdir / 'deb-old'}"]),
            "deb-new": (
                ROOT / "debian",
                lambda: [
                    "deb",
                    f"DEB_DIR={self.workdir / 'deb-new'}",
                    f"DEB_VERSION={self.deb_new()}",
                ],
            ),
            "rpm-old": (ROOT / "rpm", lambda: ["rpm", f"RPM_TOPDIR={self.workdir / 'rpm-old'}"]),
            "rpm-new": (
                ROOT / "rpm",
                lambda: [
                    "rpm",
                    f"RPM_TOPDIR={self.workdir / 'rpm-new'}",
                    f"RPM_RELEASE={UPGRADE_RPM_RELEASE}",
                ],
            ),
            # The released 0.1.0, built from this repository's history (upgrade flows).
            "deb-0.1.0": (
                ROOT / "debian",
                lambda: ["deb", f"DEB_DIR={self.workdir / 'deb-0.1.0'}"],
            ),
            "rpm-0.1.0": (
                ROOT / "rpm",
                lambda: ["rpm", f"RPM_TOPDIR={self.workdir / 'rpm-0.1.0'}"],
            ),
        }
        tools = {"deb": ("dpkg-buildpackage", "deb.txt"), "rpm": ("rpmbuild", "rpm.txt")}
        for name, (needs, target) in targets.items():
            tool, apt_list = tools[name[:3]]
            tree = ROOT
            if name.endswith("0.1.0"):
                if release is None:
                    self.jobs[name] = NOT_IN_CHECKOUT
                    continue
                tree = release
            if not needs.is_dir():
                self.jobs[name] = f"{needs.relative_to(ROOT)}/ is not in this tree"
                continue
            if not shutil.which(tool):
                self.jobs[name] = f"{tool} is missing (install .ci/apt/{apt_list})"
                continue
            # no lintian, no unit tests (other suites run them): install tests only
            cmd = ["make", "-s", "-C", str(tree), *target(), "DEB_LINTIAN=no"]
            if name.startswith("rpm"):
                cmd.append("RPMBUILD_FLAGS=--nodeps --without check")
            self.jobs[name] = self.pool.submit(self._run, cmd)

    @staticmethod
    def _run(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        env = {**os.environ, "DEB_BUILD_OPTIONS": "nocheck"}
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False
        )
        return proc, time.monotonic() - start

    @staticmethod
    def deb_old() -> str:
        out = subprocess.run(
            ["dpkg-parsechangelog", "-l", str(ROOT / "debian" / "changelog"), "-S", "Version"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def deb_new(self) -> str:
        return self.deb_old() + UPGRADE_DEB

    def wait(self, name: str) -> Path:
        self.start()
        job = self.jobs[name]
        if isinstance(job, str):
            pytest.skip(job)
        proc, seconds = job.result()
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(proc.args)}` failed:\n{proc.stdout[-3000:]}", pytrace=False)
        if name.startswith("deb"):
            (path,) = (self.workdir / name).glob("mullvad-allow-k8s_*_all.deb")
        else:
            release = UPGRADE_RPM_RELEASE if name == "rpm-new" else "1"
            (path,) = (self.workdir / name / "RPMS" / "noarch").glob(
                f"mullvad-allow-k8s-*-{release}*.noarch.rpm"
            )
        line = f"packages: {path.name} built in {seconds:.1f} s"
        if line not in TIMINGS:
            TIMINGS.append(line)
        return path


@pytest.fixture(scope="session")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    builder = Builder(tmp_path_factory.mktemp("packages"))
    builder.start()
    return builder


@pytest.fixture(scope="session")
def debs(builder: Builder) -> Packages:
    return Packages(
        builder.wait("deb-old"), builder.wait("deb-new"), builder.deb_old(), builder.deb_new()
    )


@pytest.fixture(scope="session")
def debs_from_0_1_0(builder: Builder) -> Packages:
    """The released 0.1.0 .deb and this tree's."""
    return Packages(builder.wait("deb-0.1.0"), builder.wait("deb-old"), "0.1.0", builder.deb_old())


@pytest.fixture(scope="session")
def rpms_from_0_1_0(builder: Builder) -> Packages:
    """The released 0.1.0 .rpm and this tree's."""
    old, new = builder.wait("rpm-0.1.0"), builder.wait("rpm-old")
    return Packages(old, new, "0.1.0-1", rpm_version(new))


@pytest.fixture(scope="session")
def rpms(builder: Builder) -> Packages:
    old, new = builder.wait("rpm-old"), builder.wait("rpm-new")
    return Packages(old, new, rpm_version(old), rpm_version(new))


def rpm_version(rpm: Path) -> str:
    query = ["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", str(rpm)]
    return subprocess.run(query, capture_output=True, text=True, check=True).stdout


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
