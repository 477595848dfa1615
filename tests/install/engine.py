"""The container engine for tests/install and `make images`: podman, configured here.

Debian 12's default podman setup does not run containers on this kind of machine
(crun cannot raise RLIMIT_NOFILE without CAP_SYS_RESOURCE and refuses cgroup v1
hybrids; every teardown waits 10 s). `configure()` writes a small containers.conf
and storage.conf under the work directory and exports them, so neither the host's
/etc/containers nor /var/lib/containers is touched. `probe()` says in one sentence
why no container can run, or returns None. No pytest here: imagebuild.py uses it.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKDIR = Path(os.environ.get("MAK_INSTALL_WORKDIR", ROOT / "build" / "install"))
PODMAN = "podman"


def _runroot() -> Path:
    """Runtime state belongs on a tmpfs, so that a reboot clears it (podman expects that)."""
    tag = hashlib.sha256(str(WORKDIR.resolve()).encode()).hexdigest()[:8]
    run = Path("/run")
    if os.access(run, os.W_OK):
        return run / f"mak-install-{tag}"
    return WORKDIR / "containers" / "run"


def configure() -> dict[str, str]:
    """Write the podman configuration and export it; return the variables set."""
    conf_dir = WORKDIR / "containers"
    conf_dir.mkdir(parents=True, exist_ok=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 20000 if hard == resource.RLIM_INFINITY else min(20000, hard)
    runroot = _runroot()
    containers_conf = conf_dir / "containers.conf"
    storage_conf = conf_dir / "storage.conf"
    _write_if_changed(
        containers_conf,
        f"""# Written by tests/install/engine.py; do not edit.
[containers]
# crun/runc cannot raise limits above the hard limit without CAP_SYS_RESOURCE.
default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]
# The default bridge network adds tables to the host's firewall; tests use none.
netns = "none"

[engine]
# crun refuses cgroup v1 hybrid hierarchies; runc works.
runtime = "runc"
# Otherwise every teardown waits 10 s for a SIGTERM that PID 1 may ignore.
stop_timeout = 1
tmp_dir = "{runroot}/libpod"
""",
    )
    _write_if_changed(
        storage_conf,
        f"""# Written by tests/install/engine.py; do not edit.
[storage]
driver = "overlay"
graphroot = "{conf_dir / "storage"}"
runroot = "{runroot}/storage"
""",
    )
    env = {
        "CONTAINERS_CONF": str(containers_conf),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
        "CONTAINER_RUNTIME": PODMAN,
    }
    os.environ.update(env)
    return env


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def podman(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def probe() -> str | None:
    """None when podman can run a container here, else the reason in one sentence."""
    if os.environ.get("CONTAINER_RUNTIME", PODMAN) != PODMAN:
        return (
            f"CONTAINER_RUNTIME={os.environ['CONTAINER_RUNTIME']}: tests/install needs podman "
            "(systemd as PID 1, images in containers-storage); unset it"
        )
    if shutil.which(PODMAN) is None:
        hint = (
            " (a docker client is installed, but these tests use podman)"
            if shutil.which("docker")
            else ""
        )
        return (
            f"podman is not installed{hint}: run `make deps` as root "
            "(installs .ci/apt/install.txt) or apt-get install podman runc uidmap mmdebstrap"
        )
    if os.geteuid() != 0:
        return (
            "tests/install needs root (containers with CAP_NET_ADMIN and systemd; CI runs as root)"
        )
    configure()
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return "`podman info` did not answer within 60 s"
    if info.returncode != 0:
        return f"`podman info` failed: {_last_line(info.stderr)}"
    return None


def probe_run(image: str) -> str | None:
    """None when IMAGE starts a container with the options the tests use."""
    try:
        res = podman(
            "run", "--rm", "--network", "none", "--cap-add", "NET_ADMIN", image,
            "nft", "list", "ruleset", check=False, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"`podman run {image}` did not finish within 120 s"
    if res.returncode != 0:
        return f"`podman run {image}` failed: {_last_line(res.stderr)}"
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
