"""A running test container and what the install tests ask of it.

`Box` wraps pytest-container's ContainerData: run shell commands inside (podman exec),
copy packages in, boot and reboot systemd, list the container's own nftables tables
(each container has its own network namespace), take piuparts-style snapshots of
the file system, and record nftables transactions (`nft monitor`) during an upgrade.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.install import engine
from tests.install.imagelist import Image
from tests.nftmonitor import Transaction, record

if TYPE_CHECKING:
    from pytest_container.container import ContainerData

TABLE = "inet mullvad_allow_k8s"
UNIT = "mullvad-allow-k8s.service"
PACKAGES_DIR = "/var/tmp/mak-packages"  # survives reboots (/tmp may be a tmpfs)
BOOT_TIMEOUT = 90.0

# Mount cgroup2 before systemd starts: sid's systemd refuses cgroup v1, and the
# host is a v1/v2 hybrid. Works for every systemd the images have.
SYSTEMD_BOOT = (
    "umount -R /sys/fs/cgroup; mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec /sbin/init"
)

# piuparts-style snapshots leave out what package managers and the running system
# change anyway (bookkeeping, logs, caches, runtime state); the debconf database is
# compared by its content, separately.
SNAPSHOT_SKIP = (
    "/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp",
    "/var/log", "/var/cache/apt", "/var/lib/apt", "/var/lib/dpkg", "/var/cache/debconf",
    "/var/cache/dnf", "/var/lib/dnf", "/var/lib/rpm", "/usr/lib/sysimage/rpm",
    "/root/.rpmdb",  # Debian's rpm keeps its database in $HOME
    "/var/cache/ldconfig",
    # systemd's own state, updated while it runs
    "/var/lib/systemd/random-seed", "/var/lib/systemd/timers", "/var/lib/systemd/catalog",
    "/var/lib/systemd/timesync", "/var/lib/systemd/pstore", "/var/lib/systemd/coredump",
    "/var/lib/private",
)  # fmt: skip
SNAPSHOT_SCRIPT = r"""
import hashlib, json, os, stat, sys
skip = tuple(sys.argv[1:])
out = {}
for top, dirs, files in os.walk("/"):
    dirs[:] = sorted(d for d in dirs if not os.path.join(top, d).startswith(skip)
                     and not os.path.ismount(os.path.join(top, d)))
    for name in dirs + files:
        path = os.path.join(top, name)
        if path.startswith(skip):
            continue
        st = os.lstat(path)
        what = f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid}"
        if stat.S_ISLNK(st.st_mode):
            what += " -> " + os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            if path.startswith("/etc/"):
                with open(path, "rb") as f:
                    what += " sha256:" + hashlib.sha256(f.read()).hexdigest()[:16]
            else:
                what += f" {st.st_size} bytes"
        out[path] = what
json.dump(out, sys.stdout)
"""


class CommandError(AssertionError):
    pass


class Box:
    """One container of the test image: commands, files, tables, systemd."""

    def __init__(self, data: ContainerData, image: Image) -> None:
        self.data = data
        self.image = image
        self.cid = data.container_id

    def __repr__(self) -> str:
        return f"<Box {self.image.name} {self.cid[:12]}>"

    # ------------------------------------------------------------ commands

    def sh(
        self,
        script: str,
        *,
        check: bool = True,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the container; on failure, raise with its output."""
        args = [engine.PODMAN, "exec", "-i"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        args += [self.cid, "sh", "-c", script]
        proc = subprocess.run(
            args, input=stdin or "", capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise CommandError(
                f"[{self.image.name}] `{script}` exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
            )
        return proc

    def copy_in(self, path: Path) -> str:
        self.sh(f"mkdir -p {PACKAGES_DIR}")
        engine.podman("cp", str(path), f"{self.cid}:{PACKAGES_DIR}/{path.name}")
        return f"{PACKAGES_DIR}/{path.name}"

    def read(self, path: str) -> str | None:
        proc = self.sh(f"cat {shlex.quote(path)}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def write(self, path: str, text: str) -> None:
        self.sh(f"cat > {shlex.quote(path)}", stdin=text)

    def exists(self, path: str) -> bool:
        return (
            self.sh(
                f"test -e {shlex.quote(path)} -o -L {shlex.quote(path)}", check=False
            ).returncode
            == 0
        )

    def digest(self, path: str) -> str:
        return self.sh(f"sha256sum {shlex.quote(path)}").stdout.split()[0]

    # ------------------------------------------------------------ packages

    def preseed(self, answers: Mapping[str, str]) -> None:
        """debconf-set-selections for our questions (preset is a select, the rest strings)."""
        kind = {"preset": "select"}
        lines = [
            f"mullvad-allow-k8s mullvad-allow-k8s/{key} {kind.get(key, 'string')} {value}"
            for key, value in answers.items()
        ]
        self.sh("debconf-set-selections", stdin="\n".join(lines) + "\n")

    def apt(self, args: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """apt-get, noninteractive, offline (every dependency is in the image)."""
        return self.sh(
            f"apt-get -y -q -o Dpkg::Use-Pty=0 {args}",
            check=check,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )

    def dpkg_version(self, package: str = "mullvad-allow-k8s") -> str:
        proc = self.sh(f"dpkg-query -W -f '${{Status}} ${{Version}}' {package}", check=False)
        return proc.stdout if proc.returncode == 0 else "not installed"

    def settings(self, *args: str) -> dict[str, str]:
        """The effective settings, as the generator in the container resolves them."""
        out = self.sh("mullvad-allow-k8s settings --format json " + shlex.join(args)).stdout
        return dict(json.loads(out))

    # ------------------------------------------------------------ nftables

    def tables(self) -> set[str]:
        """The tables in this container's network namespace, as 'family name'."""
        data = json.loads(self.sh("nft -j list tables").stdout)
        return {
            f"{e['table']['family']} {e['table']['name']}" for e in data["nftables"] if "table" in e
        }

    def ruleset(self) -> str:
        return self.sh("nft list ruleset").stdout

    def status(self) -> subprocess.CompletedProcess[str]:
        return self.sh("mullvad-allow-k8s status", check=False)

    def assert_active(self) -> None:
        """Our table is loaded, from the current settings, and the file matches them."""
        proc = self.status()
        assert proc.returncode == 0, f"status exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        assert "loaded, matches the settings" in proc.stdout, proc.stdout
        assert "file /etc/nftables.d/k8s_bypass_mullvad.nft: matches the settings" in proc.stdout

    @contextmanager
    def monitor(self) -> Iterator[list[Transaction]]:
        """Record the nftables transactions (`nft monitor`) made inside the block."""
        with record(
            [engine.PODMAN, "exec", self.cid, "nft", "monitor"],
            lambda command: self.sh(f"nft {shlex.quote(command)}"),
        ) as transactions:
            yield transactions

    # ------------------------------------------------------------ systemd

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until systemd has finished booting; return its state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        jobs = self.sh("systemctl list-jobs --no-pager", check=False).stdout
        raise AssertionError(f"[{self.image.name}] not booted after {timeout} s: {state}\n{jobs}")

    def reboot(self) -> None:
        engine.podman("restart", self.cid, timeout=120)
        self.wait_booted()

    def unit(self, prop: str, unit: str = UNIT) -> str:
        return self.sh(f"systemctl show --property={prop} --value {unit}").stdout.strip()

    def journal(self, unit: str = UNIT) -> str:
        return self.sh(f"journalctl -b --no-pager -o cat -u {unit}", check=False).stdout

    # ------------------------------------------------------------ piuparts

    def snapshot(self) -> dict[str, str]:
        """Every file outside SNAPSHOT_SKIP with type, mode, owner and size (content in /etc)."""
        proc = self.sh(
            "python3 -c " + shlex.quote(SNAPSHOT_SCRIPT) + " " + shlex.join(SNAPSHOT_SKIP)
        )
        return dict(json.loads(proc.stdout))

    def debconf_db(self) -> str:
        return self.sh("cat /var/cache/debconf/config.dat /var/cache/debconf/templates.dat").stdout


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = [f"left behind: {p} ({after[p]})" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed: {p} ({before[p]})" for p in sorted(before.keys() - after.keys())]
    lines += [
        f"changed: {p}: {before[p]} -> {after[p]}"
        for p in sorted(before.keys() & after.keys())
        if before[p] != after[p]
    ]
    return lines
