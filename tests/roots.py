"""The Debian roots the package suites install into, and the cache that holds them.

One cache directory ($MAK_TEST_CACHE, default /var/tmp/mullvad-allow-k8s-tests) holds
everything the suites make once and reuse: mmdebstrap roots (tests/deb, tests/rpm,
tests/repo), Fedora-like Python layers and stub repositories (tests/rpm), rpmlint's
configurations. An entry is named after what it is and a hash of how it is made
(for a root: the mmdebstrap command line and the mirror), so a changed recipe makes
a new entry and never reuses an old one. An entry is built into a hidden partial
directory under a lock of its own (parallel workers build it once) and renamed into
place when complete; an interrupted build is removed, never reused.

Each test works on an `Overlay` of a cached root (copy on write), unmounted and
removed at the end. tests/install pipes the same mmdebstrap command into podman.
No pytest here: imagebuild.py and bench/ use it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CACHE = Path(os.environ.get("MAK_TEST_CACHE", "/var/tmp/mullvad-allow-k8s-tests"))
COMPLETE = ".complete"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# What the package needs installed beforehand (the test roots have no network), plus
# apt-utils so that apt preconfigures: the config script then also runs before the
# package is unpacked, as on most real systems. systemd is installed for systemctl
# (rpm scriptlets run offline) and runs as PID 1 only where a test boots the root.
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
# tests/repo's dnf systems: the same with Debian's rpm and dnf.
DNF_INCLUDE = (*INCLUDE, "rpm", "dnf")
# The suite of tests/deb's root: bookworm, or e.g. trixie with MAK_DEB_SUITE (then give
# MAK_DEB_MIRROR unless apt on this machine knows that suite too).
DEB_SUITE = os.environ.get("MAK_DEB_SUITE", "bookworm")
TOOLS = ("mmdebstrap", "unshare", "ip", "chroot", "mount")


class UnavailableError(RuntimeError):
    """A root cannot be made on this machine; the message says why (tests skip)."""


def run(
    args: Sequence[str | Path], *, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    """ARGS run with text output captured; check: a failure raises with both outputs."""
    proc = subprocess.run(  # type: ignore[call-overload]
        [str(a) for a in args], capture_output=True, text=True, check=False, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc  # type: ignore[no-any-return]


def missing(*tools: str) -> list[str]:
    return [tool for tool in tools if not shutil.which(tool, path=PATH)]


def debian_mirror(suite: str) -> str | None:
    """The Debian mirror apt on this machine uses for `suite` (or $MAK_DEB_MIRROR).

    Where apt here does not list `suite` (a bookworm machine and trixie or sid), the
    URI apt uses for Debian's own archive (Origin and Label "Debian"): a Debian mirror
    carries every suite.
    """
    if os.environ.get("MAK_DEB_MIRROR"):
        return os.environ["MAK_DEB_MIRROR"]
    if not shutil.which("apt-get"):
        return None
    fields = "$(REPO_URI) $(RELEASE) $(COMPONENT) $(ORIGIN) $(LABEL)"
    out = run(["apt-get", "indextargets", "--format", fields], check=False).stdout
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


def mmdebstrap(
    suite: str,
    include: Sequence[str],
    target: str,
    mirror: str,
    *,
    aptopts: Sequence[str] = (),
    dpkgopts: Sequence[str] = (),
) -> list[str]:
    """The mmdebstrap command of a minbase `suite` with `include`, into `target`."""
    if suite == "sid":  # the mirror's sid Release file is often past its Valid-Until
        aptopts = ['Acquire::Check-Valid-Until "false"', *aptopts]
    return [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(include)}",
        *[f"--aptopt={opt}" for opt in dict.fromkeys(aptopts)],
        *[f"--dpkgopt={opt}" for opt in dpkgopts],
        suite,
        target,
        mirror,
    ]


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """CACHE/NAME, made on first use by BUILD(directory) and reused after.

    BUILD fills a directory that does not exist yet; it becomes CACHE/NAME only when
    complete, under NAME's own lock, so parallel workers build it once, an interrupted
    build is removed (here, or by the next build of NAME) and never reused.
    """
    final = CACHE / name
    if (final / COMPLETE).exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / COMPLETE).exists():
            partial = CACHE / f".{name}.partial"
            try:
                shutil.rmtree(partial, ignore_errors=True)
                build(partial)
                (partial / COMPLETE).touch()
                shutil.rmtree(final, ignore_errors=True)  # incomplete: never reused
                partial.rename(final)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    return final


def key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def debian_root(suite: str = "bookworm", include: Sequence[str] = INCLUDE) -> Path:
    """A cached minbase tree of `suite` with `include` (a read-only lower layer).

    Raises Unavailable where root, the tools or a mirror are missing.
    """
    if os.geteuid() != 0:
        raise UnavailableError("needs root: mounts overlays and creates namespaces (CI is root)")
    if absent := missing(*TOOLS):
        raise UnavailableError(f"needs {', '.join(absent)} (install .ci/apt/deb.txt)")
    mirror = debian_mirror(suite)
    if not mirror:
        raise UnavailableError(f"no Debian {suite} mirror in apt's sources (set MAK_DEB_MIRROR)")
    recipe = mmdebstrap(suite, include, "TARGET", mirror)

    def build(root: Path) -> None:
        run([str(root) if arg == "TARGET" else arg for arg in recipe])

    return cached(f"root-{suite}-{key(*recipe)}", build)


def prefetch(wanted: Sequence[tuple[str, Sequence[str]]]) -> threading.Thread:
    """Build the missing roots of WANTED ((suite, include) pairs) one after the other
    in the background. A root that fails here is built again, and its error reported,
    where a test asks for it."""

    def build_all() -> None:
        for suite, include in wanted:
            with contextlib.suppress(Exception):
                debian_root(suite, include)

    thread = threading.Thread(target=build_all, name="roots-prefetch", daemon=True)
    thread.start()
    return thread


class Overlay:
    """A copy-on-write tree at work/merged: LOWER (the first layer wins) under an upper
    directory of its own. close() unmounts it and removes work/."""

    def __init__(self, lower: Sequence[Path], work: Path) -> None:
        self.work = work
        self.root = work / "merged"
        self.upper = work / "upper"
        for name in ("merged", "upper", "ovl"):
            (work / name).mkdir(parents=True)
        lowerdir = ":".join(map(str, lower))
        options = f"lowerdir={lowerdir},upperdir={self.upper},workdir={work / 'ovl'}"
        run(["mount", "-t", "overlay", "overlay", "-o", options, self.root])

    def close(self) -> None:
        for _ in range(50):  # processes of the test may still be leaving it
            if run(["umount", self.root], check=False).returncode == 0:
                break
            time.sleep(0.1)
        shutil.rmtree(self.work, ignore_errors=True)
