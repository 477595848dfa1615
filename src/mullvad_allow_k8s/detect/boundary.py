"""The trust boundary: every file root reads and every program root runs goes through here.

Detection runs as root (the units, `apply`, `follow`, `doctor`), so what it reads
decides what a firewall exempts, and what it runs runs with every privilege. It
therefore decides only from what root controls (issue 20):

Files (`read_text`, `list_dir`, `is_dir`, `present`) are opened one path component at
a time from the root of the tree, never following a link blindly:
- each directory and each symbolic link on the way must belong to root (or to the
  user running us, who cannot gain anything from their own files) and must not be
  writable by others (a sticky root-owned directory such as /tmp passes: nobody else
  can replace its entries); a link is followed inside the tree only, an absolute
  target starting again at the tree's root (so a test's fake root stays closed too);
- the file itself must be a regular file (no FIFO that blocks, no device that never
  ends), owned and writable as above, at most MAX_FILE_BYTES long; it is opened with
  O_NOFOLLOW | O_NONBLOCK and checked again on the open descriptor;
- the read runs against a deadline (READ_TIMEOUT): a hung file system costs a finding,
  not the service.
A file that fails these checks raises `UntrustedError`: the caller ignores that source and
says why; it never falls back to reading it anyway.

Programs (`run`) are only these, found in the fixed SEARCH_PATH (each component and the
program itself checked like a file above, so a user's PATH or a writable directory
cannot put another binary in their place):
- `docker network ls --no-trunc --format {{json .}}`, `docker network inspect NAME...`,
  `docker events --filter type=network --filter type=container` (follow)
- `podman network ls --format json`, `podman network inspect NAME...`,
  `podman events --filter type=network --filter type=container` (follow)
- `virsh --connect qemu:///system net-list --all --name`,
  `virsh --connect qemu:///system net-dumpxml NAME`
- `ip -j addr show` (facts), `nft ...` (only where the Python bindings are missing)
- `mullvad status`, `mullvad version` (doctor only: what the Mullvad daemon says)
Every other word of an argv is one of CONSTANT_WORDS or a NAME that an engine or
libvirt reported and that passed `NAME` (letters, digits, `_.-`, never a leading `-`),
so nothing a file says becomes an option, a URI or a command. They run with a minimal
environment (ENVIRONMENT: PATH, LC_ALL, HOME of the user running us), no standard
input, their own session (the whole group is killed on time-out), a time-out
(COMMAND_TIMEOUT) and an output cap (MAX_OUTPUT_BYTES).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import selectors
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

MAX_FILE_BYTES = 1 << 20  # cluster configs are kilobytes
MAX_OUTPUT_BYTES = 16 << 20  # `network inspect` of many networks
READ_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
MAX_LINKS = 40  # as the kernel's path walk (MAXSYMLINKS)

SEARCH_PATH = (
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/run/current-system/sw/bin",  # NixOS: the system profile, root's
)
PROGRAMS = frozenset({"docker", "podman", "virsh", "ip", "nft", "mullvad"})
# The argv words that are not names: what the callers above pass, nothing else.
CONSTANT_WORDS = frozenset(
    {
        "network",
        "ls",
        "inspect",
        "--no-trunc",
        "--format",
        "{{json .}}",
        "json",
        "events",
        "--filter",
        "type=network",
        "type=container",
        "--connect",
        "qemu:///system",
        "net-list",
        "--all",
        "--name",
        "net-dumpxml",
        "-j",
        "addr",
        "show",
        "--check",
        "--json",
        "-f",
        "-",
        "list",
        "ruleset",
        "tables",
        "status",
        "version",
    }
)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

T = TypeVar("T")


class UntrustedError(Exception):
    """A source root must not decide from; str() says why, in a few words."""


# ---------------------------------------------------------------------------------------
# Files


def _trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def _check_owner(st: os.stat_result, what: str) -> None:
    if st.st_uid not in _trusted_uids():
        raise UntrustedError(f"{what} belongs to uid {st.st_uid}, not root")
    sticky_root_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if stat.S_ISLNK(st.st_mode) or sticky_root_dir:
        return  # a link's own mode means nothing; a sticky root dir protects its entries
    if st.st_mode & stat.S_IWOTH:
        raise UntrustedError(f"{what} is writable by every user")
    if st.st_mode & stat.S_IWGRP and st.st_gid not in {0, os.getegid()}:
        raise UntrustedError(f"{what} is writable by group {st.st_gid}")


def _open_dir(fd: int, name: str) -> int:
    return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)


class _Walk:
    """File descriptors along a path, from the tree's root; closes them all."""

    def __init__(self, root: Path) -> None:
        self.fds: list[int] = []
        self.root_depth = 0
        try:
            self._descend(Path("/"), root, at_root=True)
        except BaseException:
            self.close()
            raise
        self.root_depth = len(self.fds)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def _descend(self, start: Path, path: Path, *, at_root: bool = False) -> None:
        if at_root:
            self.fds.append(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in path.relative_to(start).parts if path.is_absolute() else path.parts:
            self.step_dir(part)

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def step_dir(self, part: str, links: list[int] | None = None) -> None:
        """Enter one directory (following a trusted link inside the tree)."""
        links = links if links is not None else [0]
        if part in ("", "."):
            return
        if part == "..":
            if len(self.fds) > max(self.root_depth, 1):
                os.close(self.fds.pop())
            return
        st = os.stat(part, dir_fd=self.fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            self._follow(part, st, links, final=False)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), part)
        _check_owner(st, f"directory {part!r}")
        self.fds.append(_open_dir(self.fd, part))

    def _follow(self, part: str, st: os.stat_result, links: list[int], *, final: bool) -> str:
        """Resolve a link on the way; returns the last name still to open when `final`."""
        _check_owner(st, f"link {part!r}")
        links[0] += 1
        if links[0] > MAX_LINKS:
            raise UntrustedError("too many levels of symbolic links")
        target = os.readlink(part, dir_fd=self.fd)
        if target.startswith("/"):
            while len(self.fds) > max(self.root_depth, 1):
                os.close(self.fds.pop())
        parts = [p for p in target.split("/") if p]
        if not parts:
            return "." if final else ""
        for p in parts[:-1] if final else parts:
            self.step_dir(p, links)
        return parts[-1] if final else ""

    def last(self, name: str) -> tuple[str, os.stat_result]:
        """The final component, links resolved: (its name in self.fd, its lstat)."""
        links = [0]
        while True:
            if name == "..":
                self.step_dir("..")
                name = "."
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                return name, st
            name = self._follow(name, st, links, final=True)


def _walk_to(root: Path, name: str) -> tuple[_Walk, str, os.stat_result]:
    """Open the directories of root/name; the last component's name and lstat."""
    walk = _Walk(root)
    try:
        parts = [p for p in name.split("/") if p]
        for part in parts[:-1]:
            walk.step_dir(part)
        last, st = walk.last(parts[-1] if parts else ".")
    except BaseException:
        walk.close()
        raise
    return walk, last, st


def _missing(e: OSError) -> bool:
    return isinstance(e, FileNotFoundError | NotADirectoryError)


def _lstat(root: Path, name: str) -> os.stat_result | None:
    """root/name's lstat through trusted directories; None when missing or untrusted."""
    try:
        walk, _, st = _walk_to(root, name)
    except (OSError, UntrustedError):
        return None
    walk.close()
    return st


def present(root: Path, name: str) -> bool:
    """Whether root/name exists (as anything), through trusted directories only."""
    return _lstat(root, name) is not None


def is_dir(root: Path, name: str) -> bool:
    """Whether root/name is a trusted directory (False when missing or untrusted)."""
    st = _lstat(root, name)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _open(
    root: Path, name: str, flags: int, wanted: Callable[[os.stat_result], bool]
) -> int | None:
    """A descriptor of root/name through trusted directories, if `wanted(its lstat)`
    (which may raise UntrustedError); None when it does not exist or is not wanted."""
    try:
        walk, last, st = _walk_to(root, name)
    except OSError as e:
        if _missing(e):
            return None
        raise
    try:
        if not wanted(st):
            return None
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=walk.fd)
    finally:
        walk.close()


def _trusted_dir(st: os.stat_result) -> bool:
    if not stat.S_ISDIR(st.st_mode):
        return False
    _check_owner(st, "the directory")
    return True


def _trusted_file(st: os.stat_result) -> bool:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedError("not a regular file")
    _check_owner(st, "the file")
    return True


def list_dir(root: Path, name: str) -> list[str] | None:
    """The entries of a trusted directory, sorted; None when it does not exist."""
    fd = _open(root, name, os.O_RDONLY | os.O_DIRECTORY, _trusted_dir)
    if fd is None:
        return None
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def read_text(root: Path, name: str, limit: int = MAX_FILE_BYTES) -> str | None:
    """A trusted regular file's text; None when it does not exist.

    Raises UntrustedError (see the module's docstring), OSError (unreadable) or
    UnicodeDecodeError.
    """
    fd = _open(root, name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, _trusted_file)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedError("not a regular file")
        _check_owner(st, "the file")
        if st.st_size > limit:
            raise UntrustedError(f"larger than {limit} bytes ({st.st_size})")
        data = within(READ_TIMEOUT, lambda: os.read(fd, limit + 1), "reading")
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UntrustedError(f"larger than {limit} bytes")
    return data.decode("utf-8")


def within(seconds: float, work: Callable[[], T], what: str) -> T:
    """`work()` with a deadline: a daemon thread, abandoned (not waited for) if it hangs."""
    box: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            box.append(work())
        except BaseException as e:
            error.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise UntrustedError(f"{what} took longer than {seconds:g} s")
    if error:
        raise error[0]
    return box[0]


# ---------------------------------------------------------------------------------------
# Programs


def check_argv(argv: Sequence[str]) -> None:
    """Raise ValueError unless argv is one of ours: a known program, constants, names."""
    if not argv or argv[0] not in PROGRAMS:
        raise ValueError(f"not a program detection runs: {argv[:1]!r}")
    for word in argv[1:]:
        if word not in CONSTANT_WORDS and not NAME.fullmatch(word):
            raise ValueError(f"{word!r} is neither a constant nor a name")


def program(name: str) -> str | None:
    """The first trusted `name` in SEARCH_PATH (an executable regular file)."""
    for directory in SEARCH_PATH:
        try:
            walk, _, st = _walk_to(Path("/"), f"{directory}/{name}")
        except (OSError, UntrustedError):
            continue
        walk.close()
        try:
            _check_owner(st, "the program")
        except UntrustedError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return f"{directory}/{name}"
    return None


def environment() -> dict[str, str]:
    """What a program gets: nothing of the caller's environment."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        home = "/"
    return {"PATH": ":".join(SEARCH_PATH), "LC_ALL": "C.UTF-8", "HOME": home}


def popen(argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes] | None:
    """Start a checked argv (see `run`); None when the program is not installed."""
    check_argv(argv)
    path = program(argv[0])
    if path is None:
        return None
    process: subprocess.Popen[bytes] = subprocess.Popen(
        [path, *argv[1:]],
        env=environment(),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        **kwargs,  # type: ignore[call-overload]
    )
    return process


def kill(process: subprocess.Popen[bytes]) -> None:
    """The program and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run(
    argv: Sequence[str],
    *,
    timeout: float = COMMAND_TIMEOUT,
    limit: int = MAX_OUTPUT_BYTES,
    stdin: bytes | None = None,
) -> tuple[int, bytes] | None:
    """(exit status, standard output) of a checked argv; None when it is not installed.

    Raises UntrustedError when it runs past `timeout` or prints more than `limit` bytes
    (it is killed); ValueError for an argv that `check_argv` refuses.
    """
    process = popen(
        argv, stdout=subprocess.PIPE, **({"stdin": subprocess.PIPE} if stdin is not None else {})
    )
    if process is None:
        return None
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        if stdin is not None and process.stdin is not None:
            within(timeout, lambda: _feed(process, stdin), f"writing to {argv[0]}")
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UntrustedError(f"{argv[0]} took longer than {timeout:g} s")
                if not selector.select(left):
                    continue
                data = os.read(process.stdout.fileno(), 65536)
                if not data:
                    break
                size += len(data)
                if size > limit:
                    raise UntrustedError(f"{argv[0]} printed more than {limit} bytes")
                chunks.append(data)
        status = process.wait(max(deadline - time.monotonic(), 0.01))
    except (UntrustedError, subprocess.TimeoutExpired) as e:
        kill(process)
        if isinstance(e, UntrustedError):
            raise
        raise UntrustedError(f"{argv[0]} took longer than {timeout:g} s") from None
    finally:
        process.stdout.close()
    return status, b"".join(chunks)


def _feed(process: subprocess.Popen[bytes], data: bytes) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(data)
    finally:
        process.stdin.close()
