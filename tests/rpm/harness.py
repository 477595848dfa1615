"""Build the RPM and install it into throwaway Debian-userland systems.

No Fedora or openSUSE root can be built on the test machine, so the package's
scriptlets run for real in a minimal Debian root (tests/roots.py's bookworm root, the
one tests/deb uses: python3, netaddr, the nftables bindings, nftables, iproute2,
systemd for `systemctl` run offline). rpm
learns what that userland already has from a Provides-only helper package, so
dependencies are checked, not skipped.

Each `System` is an overlayfs copy of the cached root with its own network, mount and
PID namespaces. `live=True` runs a PID 1 inside the root, as on a booted machine or in
a container: the scriptlets see `/proc/1/root` equal to `/` and load tables.
`live=False` keeps PID 1 outside, as under `dnf --installroot` or an image build.
The host's rpm installs with `--root`, so scriptlets run chrooted in the copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.nftmonitor import Transaction, record
from tests.roots import Overlay, cached, run

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "rpm" / "mullvad-allow-k8s.spec"
TABLE = "inet mullvad_allow_k8s"
SYSCONFIG = "/etc/sysconfig/mullvad-allow-k8s"
NFT_FILE = "/etc/nftables.d/k8s_bypass_mullvad.nft"
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/mullvad-allow-k8s.service"
DBPATH = "/var/lib/rpm"
TOOLS = ("rpm", "rpmbuild", "rpmlint", "mmdebstrap", "unshare", "nsenter", "chroot", "git")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if not shutil.which(tool)]


def _rpm_extra_args() -> list[str]:
    """Debian's rpm refuses to install without --force-debian; other hosts lack it."""
    probe = run(["rpm", "--force-debian", "--version"], check=False)
    return ["--force-debian"] if probe.returncode == 0 else []


# ------------------------------------------------- Fedora-like Python layers
#
# What Fedora, RHEL 10 and Tumbleweed have and a Debian root has not: a Python whose
# search path has no dist-packages entry, with netaddr and the nftables bindings in
# /usr/lib/python3.X/site-packages. A layer is laid over the Debian root (overlayfs):
#
# - "3.12", "3.13": an upstream CPython build (this machine's pyenv builds, which are
#   configured like Fedora's: prefix layout lib/python3.X/site-packages) copied to
#   /usr, so sys.prefix is /usr and /usr/bin/python3 is that interpreter;
# - "3.11": Debian's own interpreter with a sitecustomize that takes every
#   dist-packages entry off sys.path and adds /usr/lib/python3.11/site-packages.
#
# netaddr and the bindings are Debian's pure-Python files (the bindings load
# libnftables.so.1 with ctypes), copied into that site-packages directory.

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
FEDORA_LIKE = ("3.11", "3.12", "3.13")
SITE_LIBS = ("netaddr", "nftables", "yaml")  # PyYAML: pure Python without _yaml
SITECUSTOMIZE = """\
# test layer: search path like Fedora's (no dist-packages; /usr/lib/python3.11/site-packages)
import site
import sys

sys.path[:] = [p for p in sys.path if "dist-packages" not in p]
site.addsitedir("/usr/lib/python3.11/site-packages")
"""


def pyenv_build(version: str) -> Path | None:
    """The newest pyenv CPython build of VERSION (e.g. '3.13'), or None."""
    builds = [
        b
        for b in PYENV.glob(f"{version}.*")
        if b.name.removeprefix(f"{version}.").isdigit()  # releases, not 3.13.0t or -dev
        and (b / "bin" / f"python{version}").is_file()
    ]
    return max(builds, key=lambda b: int(b.name.split(".")[2]), default=None)


def missing_python(version: str) -> str | None:
    """Why the Fedora-like layer of VERSION cannot be made here, or None."""
    if version == "3.11" or pyenv_build(version):
        return None
    return f"no CPython {version} build under {PYENV} (this machine image's pyenv builds)"


def _copy(src: Path, dst: Path, *, ignore: Sequence[str] = ()) -> None:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(*ignore))


def python_layer(base: Path | None, version: str) -> Path:
    """The cached layer that gives BASE a Fedora-like Python VERSION (see above).

    base=None: the interpreter alone, without netaddr and the bindings (the
    tests/install image copies its own into site-packages).
    """
    build = pyenv_build(version) if version != "3.11" else None
    if build is None and (version != "3.11" or base is None):
        raise RuntimeError(missing_python(version) or f"no interpreter layer for {version}")
    origin = base.name if base else "interpreter-only"
    key = hashlib.sha256(f"{origin}|{version}|{build}|{SITECUSTOMIZE}".encode()).hexdigest()[:12]

    def make(tmp: Path) -> None:
        usr = tmp / "usr"
        site = usr / "lib" / f"python{version}" / "site-packages"
        if build is None:
            site.mkdir(parents=True)
            (site.parent / "sitecustomize.py").write_text(SITECUSTOMIZE)
        else:
            (usr / "bin").mkdir(parents=True)
            shutil.copy2(build / "bin" / f"python{version}", usr / "bin")
            (usr / "bin" / "python3").symlink_to(f"python{version}")
            libdir = usr / "lib" / "x86_64-linux-gnu"  # on the loader's default path
            libdir.mkdir(parents=True)
            for lib in (build / "lib").glob(f"libpython{version}.so*"):
                shutil.copy2(lib, libdir, follow_symlinks=True)
            _copy(
                build / "lib" / f"python{version}",
                site.parent,
                ignore=(
                    "test",
                    "site-packages",
                    "idlelib",
                    "tkinter",
                    "turtledemo",
                    "ensurepip",
                    "config-*",  # the static libpython and build files
                ),
            )
            site.mkdir()
        if base is not None:
            dist = base / "usr" / "lib" / "python3" / "dist-packages"
            for name in SITE_LIBS:
                _copy(dist / name, site / name, ignore=("__pycache__",))

    return cached(f"python-layer-{version}-{key}", make)


# ------------------------------------------------------------------ systems


class System:
    """One throwaway Debian-userland system: overlay copy + namespaces (see module doc)."""

    def __init__(
        self, base: Path, workdir: Path, *, live: bool, layers: Sequence[Path] = ()
    ) -> None:
        """LAYERS: directories laid over BASE (first wins), e.g. a Fedora-like Python."""
        self.workdir = workdir
        self.overlay = Overlay([*layers, base], workdir)
        self.root = self.overlay.root
        self.upper = self.overlay.upper
        pid1 = ["chroot", str(self.root), "/bin/sleep", "infinity"] if live else ["sleep", "inf"]
        namespaces = ["unshare", "--net", "--mount", "--pid", "--fork"]
        self._holder = subprocess.Popen(
            [*namespaces, f"--mount-proc={self.root}/proc", *pid1], start_new_session=True
        )
        self.pid = self._find_pid1()
        self._rpm = ["rpm", *_rpm_extra_args(), "--root", str(self.root), "--dbpath", DBPATH]
        self.enter(["ip", "link", "set", "lo", "up"])
        self.enter(["rpmdb", "--root", self.root, "--dbpath", DBPATH, "--initdb"])

    def _find_pid1(self) -> int:
        for _ in range(200):
            children = Path(f"/proc/{self._holder.pid}/task/{self._holder.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                pid = int(pids[0])
                # wait until the child has exec'd its final program (sleep)
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                    return pid
            time.sleep(0.01)
        raise RuntimeError("the test system's PID 1 did not start")

    # -- running things
    def enter(
        self, args: Sequence[str | Path], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a host program in the system's namespaces (network, mounts, PIDs).

        Without the caller's PYTHON* variables: a shell or pytest may export, say,
        PYTHONDONTWRITEBYTECODE, which no real system's scriptlets and units have and
        which would hide the bytecode the package's Python writes (pycache_written).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        nsenter = ["nsenter", "-t", str(self.pid), "-n", "-m", "-p", "--"]
        return run([*nsenter, *args], check=check, env=env)

    def sh(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the root (its own python3, nft, systemctl)."""
        return self.enter(["chroot", self.root, "/bin/sh", "-c", command], check=check)

    def rpm(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.enter([*self._rpm, *args], check=check)

    def nft(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.enter(["nft", *command.split()], check=check)

    # -- looking at things
    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str) -> str | None:
        try:
            return self.path(path).read_text()
        except FileNotFoundError:
            return None

    def set_setting(self, line: str) -> None:
        """Replace the KEY=... line of the settings file by LINE (KEY=VALUE)."""
        key = line.split("=", 1)[0]
        path = self.path(SYSCONFIG)
        text = path.read_text()
        assert re.search(rf"^{key}=", text, re.M), text
        path.write_text(re.sub(rf"^{key}=.*$", line, text, flags=re.M))

    def tables(self) -> set[str]:
        out = self.nft("list tables").stdout
        return {line.removeprefix("table ").strip() for line in out.splitlines() if line}

    def table_text(self) -> str | None:
        proc = self.nft(f"list table {TABLE}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def unit_enabled(self) -> bool:
        return os.path.lexists(self.path(UNIT_LINK))

    def leftovers(self) -> list[str]:
        """Paths with our name that exist in the system (after erase: none but .rpmsave)."""
        found = []
        for top in ("etc", "usr", "var/lib/systemd"):
            base = self.path(top)
            for dirpath, dirnames, filenames in os.walk(base):
                for name in dirnames + filenames:
                    if "mullvad" in name or name == "nftables.d":
                        found.append("/" + str(Path(dirpath, name).relative_to(self.root)))
        return sorted(found)

    def python_path(self) -> list[str]:
        """sys.path of the root's python3 (-B: the probe itself writes no bytecode)."""
        probe = "python3 -B -c 'import json, sys; print(json.dumps(sys.path[1:]))'"
        return list(json.loads(self.sh(probe).stdout))

    def pycache_written(self) -> list[str]:
        """__pycache__ directories created in the system since it was made."""
        return sorted(
            "/" + str(Path(dirpath).relative_to(self.upper))
            for dirpath, _, _ in os.walk(self.upper)
            if Path(dirpath).name == "__pycache__"
        )

    @contextmanager
    def monitor(self) -> Iterator[list[Transaction]]:
        """Record the nftables transactions (`nft monitor`) made inside the block."""
        with record(
            ["nsenter", "-t", str(self.pid), "-n", "--", "nft", "monitor"], self.nft
        ) as transactions:
            yield transactions

    def close(self) -> None:
        if self._holder.poll() is None:
            os.killpg(self._holder.pid, signal.SIGKILL)
            self._holder.wait()
        self.overlay.close()
