"""Harness for the Debian package tests: build the .deb, then install it in a Debian root.

The root is a bookworm minbase tree made once by mmdebstrap and cached under
$MAK_DEB_CACHE (default /var/tmp/mullvad-allow-k8s-tests), keyed on its recipe. Each
test gets a copy-on-write overlay of it and a network namespace of its own, so tables
the package loads never touch the host. Commands run in a new PID namespace, which
makes the root look like a container (not a chroot) to the maintainer scripts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from mullvad_allow_k8s import __version__
from tests.nftmonitor import Transaction, record
from tests.releases import RELEASE_0_1_0, release_tree

REPO = Path(__file__).resolve().parents[2]
# The suite of the test root: bookworm, or e.g. trixie with MAK_DEB_SUITE (then give
# MAK_DEB_MIRROR unless apt on this machine knows that suite too).
SUITE = os.environ.get("MAK_DEB_SUITE", "bookworm")
# What the package needs installed beforehand (the test roots have no network), plus
# apt-utils so that apt preconfigures: the config script then also runs before the
# package is unpacked, as on most real systems.
# systemd is installed but only runs as PID 1 where a test boots the root (nspawn).
INCLUDE = (
    "python3",
    "nftables",
    "python3-nftables",
    "python3-netaddr",
    "python3-yaml",
    "iproute2",
    "apt-utils",
    "systemd",
)
CACHE = Path(os.environ.get("MAK_DEB_CACHE", "/var/tmp/mullvad-allow-k8s-tests"))
UPGRADE_VERSION = f"{__version__}+upgradetest1"

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deb: builds the Debian package and installs it in a Debian root (root)"
    )


def run(args: list[str], *, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc  # type: ignore[no-any-return]


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts an overlay and creates network namespaces (CI is root)")


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t, path=PATH)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (install .ci/apt/deb.txt)")


def debian_mirror(suite: str = SUITE) -> str | None:
    """The Debian mirror apt on this machine uses for `suite` (or $MAK_DEB_MIRROR).

    Where apt here does not list `suite` (a bookworm machine and trixie or sid), the
    URI apt uses for Debian's own archive (Origin and Label "Debian"): a Debian mirror
    carries every suite.
    """
    if os.environ.get("MAK_DEB_MIRROR"):
        return os.environ["MAK_DEB_MIRROR"]
    if not shutil.which("apt-get"):
        return None
    out = run(
        [
            "apt-get",
            "indextargets",
            "--format",
            "$(REPO_URI) $(RELEASE) $(COMPONENT) $(ORIGIN) $(LABEL)",
        ],
        check=False,
    ).stdout
    archive = None
    for line in out.splitlines():
        uri, release, component, origin, label = (line.split() + [""] * 5)[:5]
        if component != "main":
            continue
        if release == suite:
            return uri
        if origin == "Debian" and label == "Debian":
            archive = archive or uri
    return archive


# ---------------------------------------------------------------- package builds


@dataclass(frozen=True)
class Builds:
    """The package at its own version and at UPGRADE_VERSION, and where they are."""

    deb: Path
    upgrade_deb: Path
    changes: Path
    seconds: float
    release_0_1_0: Path | None  # None: that commit is not in this checkout (shallow)


@pytest.fixture(scope="session")
def build_jobs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, subprocess.Popen[str]], float]:
    """Start both builds (the second only has an extra changelog entry) in the background."""
    need_tools("dpkg-buildpackage", "dpkg-checkbuilddeps", "make")
    deps = run(["dpkg-checkbuilddeps"], check=False, cwd=REPO)
    if deps.returncode != 0:
        pytest.skip(f"build dependencies missing: {deps.stderr.strip()} (.ci/apt/deb.txt)")
    tmp = tmp_path_factory.mktemp("deb")
    trees = {"v1": REPO, "v2": REPO}
    old = release_tree(RELEASE_0_1_0, tmp / "src-0.1.0")
    if old is not None:
        trees["v010"] = old
    jobs = {
        name: subprocess.Popen(
            ["make", "-s", "-C", str(tree), "deb", "DEB_LINTIAN=no", f"DEB_DIR={tmp / name}"]
            + ([f"DEB_VERSION={UPGRADE_VERSION}"] if name == "v2" else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, tree in trees.items()
    }
    return tmp, jobs, time.monotonic()


@pytest.fixture(scope="session")
def builds(build_jobs: tuple[Path, dict[str, subprocess.Popen[str]], float]) -> Builds:
    tmp, jobs, start = build_jobs
    for name, job in jobs.items():
        out, _ = job.communicate()
        assert job.returncode == 0, f"make deb ({name}) failed:\n{out}"
    seconds = time.monotonic() - start
    (deb,) = (tmp / "v1").glob("mullvad-allow-k8s_*_all.deb")
    (upgrade,) = (tmp / "v2").glob(f"mullvad-allow-k8s_{UPGRADE_VERSION}_all.deb")
    (changes,) = (tmp / "v1").glob("*.changes")
    released = next((tmp / "v010").glob("mullvad-allow-k8s_0.1.0_all.deb"), None)
    return Builds(deb, upgrade, changes, seconds, released)


# ---------------------------------------------------------------- the Debian root


def _recipe(suite: str = SUITE, include: Sequence[str] = INCLUDE) -> list[str]:
    recipe = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(include)}",
        "--format=directory",
    ]
    if suite == "sid":  # the mirror's sid Release file is often past its Valid-Until
        recipe.append('--aptopt=Acquire::Check-Valid-Until "false"')
    return [*recipe, suite]


def cached_root(suite: str = SUITE, include: Sequence[str] = INCLUDE) -> Path:
    """A cached minbase tree of `suite` with `include` (a read-only lower layer).

    Built once by mmdebstrap and keyed on its recipe and mirror; skips the test where
    root, the tools or a mirror are missing. tests/repo uses it for other suites.
    """
    need_root()
    need_tools("mmdebstrap", "unshare", "ip", "chroot", "mount")
    mirror = debian_mirror(suite)
    if not mirror:
        pytest.skip(f"no Debian {suite} mirror in apt's sources (set MAK_DEB_MIRROR)")
    recipe = _recipe(suite, include)
    key = hashlib.sha256("\0".join([*recipe, mirror]).encode()).hexdigest()[:12]
    root = CACHE / f"{suite}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build even with pytest -n
        if not (root / "usr/bin/python3").exists():
            partial = CACHE / f".{root.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            run([*recipe, str(partial), mirror])
            partial.rename(root)
    return root


@pytest.fixture(scope="session")
def debian_root(build_jobs: object) -> Path:
    """A cached tree of SUITE with the package's dependencies (read-only lower layer).

    Requests build_jobs only so the package builds run while mmdebstrap downloads.
    """
    return cached_root()


class Machine:
    """An overlay of the Debian root with a network namespace of its own.

    mode "container": own PID namespace, so the root is not a chroot to ischroot(1);
    "chroot": a plain chroot (the host's PIDs in /proc); "nocap": like container but
    without CAP_NET_ADMIN. After boot() every command runs inside the booted system
    (systemd as PID 1 under systemd-nspawn, with a private network namespace).
    """

    def __init__(self, lower: Path, work: Path) -> None:
        self.work = work
        self.root = work / "merged"
        for d in ("upper", "ovl", "merged"):
            (work / d).mkdir(parents=True)
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'ovl'}",
                str(self.root),
            ]
        )
        self.netns = f"mak-deb-{uuid.uuid4().hex[:8]}"
        run(["ip", "netns", "add", self.netns])
        self.lower = lower
        self.nspawn: subprocess.Popen[str] | None = None
        self.background: list[subprocess.Popen[str]] = []
        self.init_pid = 0

    def boot(self, timeout: float = 60) -> None:
        """Boot the root with systemd as PID 1 and wait until it is up."""
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                f"--directory={self.root}",
                "--boot",
                "--private-network",
                "--register=no",
                "--keep-unit",
                "--console=pipe",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited: {self.nspawn.stdout.read()}")  # type: ignore[union-attr]
            if not self.init_pid:
                children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.init_pid = int(children.read_text().split()[0])
            if self.init_pid:
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise AssertionError(f"the booted root did not come up (state {state!r})")

    def argv(
        self, command: str, mode: str = "container", env: dict[str, str] | None = None
    ) -> list[str]:
        environment = {"PATH": PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        environment.update(env or {})
        variables = [f"{k}={v}" for k, v in environment.items()]
        if self.init_pid:
            shell = ["/usr/bin/env", "-i", *variables, "/bin/sh", "-c", command]
            return ["nsenter", f"--target={self.init_pid}", "--all", "--root", "--wd", *shell]
        inner = [
            "chroot",
            str(self.root),
            "/usr/bin/env",
            "-i",
            *variables,
            "/bin/sh",
            "-c",
            command,
        ]
        if mode == "nocap":
            inner = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *inner]
        # --kill-child: if unshare dies (a test failed and killed it), the namespace's
        # PID 1 and so everything in it die too, instead of outliving the test.
        pid = ["--pid", "--fork", "--kill-child"] if mode in ("container", "nocap") else []
        # Terminals (script(1), apt's log) need /dev/pts: the host's, in this mount
        # namespace only.
        pts = 'mount --bind /dev/pts "$0/dev/pts" && exec "$@"'
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--mount",
            *pid,
            f"--mount-proc={self.root / 'proc'}",
            "/bin/sh",
            "-c",
            pts,
            str(self.root),
            *inner,
        ]

    def sh(
        self,
        command: str,
        *,
        check: bool = True,
        mode: str = "container",
        stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(command, mode, env), check=check, input=stdin)

    @contextlib.contextmanager
    def monitor(self) -> Iterator[list[Transaction]]:
        """Record the nftables transactions (`nft monitor`) made in this machine, with the
        root's own nft: the host's may not parse tables a newer nft wrote (it crashes)."""
        with record(
            self.argv("nft monitor"), lambda cmd: self.sh(f"nft {shlex.quote(cmd)}")
        ) as seen:
            yield seen

    def popen(self, command: str) -> subprocess.Popen[str]:
        """A background command; close() kills it if the test did not finish it."""
        process = subprocess.Popen(
            self.argv(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.background.append(process)
        return process

    def copy_in(self, path: Path) -> str:
        shutil.copy(path, self.root / "var/tmp" / path.name)
        return f"/var/tmp/{path.name}"

    def preseed(self, answers: dict[str, str]) -> None:
        types = {"preset": "select"}
        lines = "".join(
            f"mullvad-allow-k8s mullvad-allow-k8s/{q} {types.get(q, 'string')} {v}\n"
            for q, v in answers.items()
        )
        self.sh("debconf-set-selections", stdin=lines)

    def apt_install(self, deb: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        inside = self.copy_in(deb)
        return self.sh(f"apt-get -o Dpkg::Use-Pty=0 install -y {inside}", check=check)

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def tables(self) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for line in self.sh("nft list tables").stdout.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "table":
                found.add((words[1], words[2]))
        return found

    def debconf_db(self) -> str:
        return "".join(
            self.file(f"/var/cache/debconf/{name}").read_text(errors="replace")
            for name in ("config.dat", "templates.dat")
        )

    def close(self) -> None:
        for process in self.background:
            if process.poll() is None:
                process.kill()  # SIGKILL: a shell as PID 1 of its namespace ignores SIGTERM
                process.wait(timeout=10)
        if self.nspawn:
            self.nspawn.terminate()  # systemd-nspawn powers the container off
            try:
                self.nspawn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        run(["ip", "netns", "delete", self.netns], check=False)
        for _ in range(50):
            if run(["umount", str(self.root)], check=False).returncode == 0:
                break
            time.sleep(0.1)
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture
def machine(debian_root: Path, tmp_path: Path) -> Iterator[Machine]:
    need_tools("setpriv")
    m = Machine(debian_root, tmp_path / "machine")
    try:
        yield m
    finally:
        with contextlib.suppress(Exception):
            m.close()
