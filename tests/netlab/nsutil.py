"""Plumbing for named network namespaces: commands, threads that enter one, servers.

Probes run in threads that `setns(2)` into a namespace instead of forking
`ip netns exec` for each connection attempt, so dozens of checks run concurrently
and a whole scenario costs about one client timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
AGENT = Path(__file__).with_name("agent.py")
_libc = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """A lab command failed: the message carries the command and its stderr."""


def run(
    cmd: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command, raising LabError with its stderr when `check` and it fails."""
    proc = subprocess.run(
        list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


class Netns:
    """One named network namespace (as `ip netns add` makes them)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name
        self._procs: list[subprocess.Popen[str]] = []

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def exec(
        self,
        *cmd: str,
        stdin: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        argv = ["ip", "netns", "exec", self.name, *cmd]
        if env is None:
            return run(argv, stdin=stdin, check=check)
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=env, check=False, timeout=60
        )
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def ip(self, script: str, *, family: str = "") -> None:
        """Run `ip` commands (one per line, without the leading `ip`) in the namespace.

        `family` ("-4"/"-6") applies to the whole batch: `ip -b` has no per-line options.
        """
        opts = [family] if family else []
        run(["ip", *opts, "-n", self.name, "-b", "-"], stdin=script)

    def nft(self, text: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Load nft text in one transaction."""
        return self.exec("nft", "-f", "-", stdin=text, check=check)

    def sysctl(self, values: dict[str, str | int]) -> None:
        """Set sysctls of this namespace (net.* are per namespace).

        Written through /proc/sys from a thread inside the namespace: /proc/sys/net
        shows the writer's namespace, and this needs no `sysctl` binary.
        """

        def write() -> None:
            for key, value in values.items():
                Path("/proc/sys", key.replace(".", "/")).write_text(f"{value}\n")

        self.call(write)

    def read_sysctl(self, key: str) -> str:
        return self.call(lambda: Path("/proc/sys", key.replace(".", "/")).read_text().strip())

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a fresh thread that has entered this namespace; re-raise its error."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns {self.name}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start a background process in the namespace; killed by `stop_processes`."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        return proc

    def spawn_agent(self, spec: str) -> subprocess.Popen[str]:
        """Start tests/netlab/agent.py with a JSON spec; wait for it with `wait_ready`."""
        return self.spawn([sys.executable, "-I", str(AGENT), "serve", spec])

    def pids(self) -> list[int]:
        """The threads of the background processes still running, and their children."""
        tids: set[int] = set()
        for proc in self._procs:
            with contextlib.suppress(FileNotFoundError):  # it may have just ended
                for task in Path(f"/proc/{proc.pid}/task").iterdir():
                    tids.add(int(task.name))
                    tids.update(int(c) for c in (task / "children").read_text().split())
        return sorted(tids)

    def stop_processes(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
        self._procs.clear()


def flush_conntrack(ns: Netns) -> None:
    """Delete every conntrack entry of the namespace, as `conntrack -F` does (ctnetlink
    IPCTNL_MSG_CT_DELETE without a tuple, family unspecified)."""

    def flush() -> None:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sock:  # NETFILTER
            sock.bind((0, 0))
            body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # nfgenmsg
            msg_type = (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE
            flags = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
            sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, flags, 1, 0) + body)
            (error,) = struct.unpack_from("=i", sock.recv(4096), 16)
            if error:
                raise OSError(-error, f"conntrack flush in {ns.name}: {os.strerror(-error)}")

    ns.call(flush)


def wait_ready(procs: Sequence[subprocess.Popen[str]], timeout: float = 10.0) -> None:
    """Wait until every agent printed its `ready` line (or died: then raise with stderr)."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise LabError(f"{proc.args!r} not ready after {timeout} s")
            line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise LabError(f"{proc.args!r} failed to start: {line.strip()} {err.strip()}")


def create_namespaces(names: Sequence[str]) -> list[Netns]:
    """Create namespaces (one `ip` process) with loopback up and IPv6 DAD off."""
    script = "".join(f"netns add {n}\n" for n in names)
    run(["ip", "-b", "-"], stdin=script)
    spaces = [Netns(n) for n in names]
    return spaces


def delete_namespaces(spaces: Sequence[Netns]) -> list[str]:
    """Kill each namespace's processes and delete it; return errors instead of raising."""
    errors: list[str] = []
    for ns in spaces:
        try:
            ns.stop_processes()
        except Exception as exc:  # keep cleaning up the others
            errors.append(f"{ns.name}: {exc}")
    existing = [ns.name for ns in spaces if ns.path.exists()]
    if existing:
        proc = run(
            ["ip", "-b", "-"], stdin="".join(f"netns del {n}\n" for n in existing), check=False
        )
        if proc.returncode != 0:
            errors.append(proc.stderr.strip())
    return errors


def remove_cgroup_mount(mnt: Path, ours: Callable[[str], bool]) -> list[str]:
    """Remove a lab's cgroups (those whose name `ours` accepts; their processes have
    ended) under its mount of a cgroup hierarchy, and unmount it; return errors instead
    of raising. The hierarchy is the machine's: other labs' cgroups are left alone."""
    if not os.path.ismount(mnt):
        return []
    errors = []
    for group in [p for p in mnt.iterdir() if p.is_dir() and ours(p.name)]:
        try:
            group.rmdir()
        except OSError as exc:
            errors.append(f"rmdir {group}: {exc}")
    proc = run(["umount", str(mnt)], check=False)
    if proc.returncode != 0:
        errors.append(proc.stderr.strip())
    return errors


def _stale(name: str, prefix: str) -> bool:
    """`<prefix><pid>-...` of a process that is gone."""
    if not name.startswith(prefix):
        return False
    pid_part = name[len(prefix) :].split("-", 1)[0]
    return pid_part.isdigit() and not Path(f"/proc/{pid_part}").exists()


def purge_stale(prefix: str) -> list[str]:
    """Delete namespaces `<prefix><pid>-...` left by lab runs whose process is gone, and
    their labs' cgroup mounts (in temporary directories named the same way)."""
    removed: list[str] = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = Path(line.split()[1])
        stale = line.split()[2] == "cgroup" and _stale(mnt.parent.name, prefix)
        if stale and not remove_cgroup_mount(mnt, lambda name: _stale(name, prefix)):
            removed.append(str(mnt))
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        name = entry.name
        if not _stale(name, prefix):
            continue
        if run(["ip", "netns", "del", name], check=False).returncode == 0:
            removed.append(name)
    return removed
