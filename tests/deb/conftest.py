"""Harness for the Debian package tests: build the .deb, then install it in a Debian root.

The root is tests/roots.py's bookworm tree (made once by mmdebstrap, cached). Each
test gets a copy-on-write overlay of it and a network namespace of its own, so tables
the package loads never touch the host. Commands run in a new PID namespace, which
makes the root look like a container (not a chroot) to the maintainer scripts.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import root_or_skip
from tests.nftmonitor import Transaction, record
from tests.packages import Builds
from tests.roots import DEB_SUITE, PATH, Overlay, missing, run

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deb: builds the Debian package and installs it in a Debian root (root)"
    )


def need_tools(*tools: str) -> None:
    if absent := missing(*tools):
        pytest.skip(f"needs {', '.join(absent)} (install .ci/apt/deb.txt)")


class Machine:
    """An overlay of the Debian root with a network namespace of its own.

    mode "container": own PID namespace, so the root is not a chroot to ischroot(1);
    "chroot": a plain chroot (the host's PIDs in /proc); "nocap": like container but
    without CAP_NET_ADMIN. After boot() every command runs inside the booted system
    (systemd as PID 1 under systemd-nspawn, with a private network namespace).
    """

    def __init__(self, lower: Path, work: Path) -> None:
        self.work = work
        self.overlay = Overlay([lower], work)
        self.root = self.overlay.root
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
        self.overlay.close()


@pytest.fixture
def machine(builds: Builds, tmp_path: Path) -> Iterator[Machine]:
    """A fresh overlay of the DEB_SUITE root (requests builds: they build meanwhile)."""
    need_tools("setpriv")
    m = Machine(root_or_skip(DEB_SUITE), tmp_path / "machine")
    try:
        yield m
    finally:
        with contextlib.suppress(Exception):
            m.close()
