"""RPM launcher benchmark: prints figures, asserts nothing (read by people).

The RPM ships the package as plain sources in a private directory and its launcher
runs Python with -B, so every start compiles the package's modules (rpm/README.md,
"One RPM for every Python 3.11+"). This prints the cost: median wall time of
`mullvad-allow-k8s generate --settings none` run by the RPM's own launcher, with
(a) sources only, as installed by the RPM built here, and (b) the sources plus
bytecode compiled beforehand, as a native Fedora build (%py_byte_compile) would
install them; and (c) a bare `python3 -c pass` for scale.

Usage: python3 bench/rpm_launcher_bench.py [RPM]   (default: builds one with `make rpm`)
Needs rpm2cpio and cpio, and Debian's python3 with python3-netaddr.
"""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPDIR = "/usr/share/mullvad-allow-k8s"
PYTHON = "/usr/bin/python3"
RUNS = 21


def extract(rpm: Path, into: Path) -> None:
    into.mkdir()
    payload = subprocess.run(["rpm2cpio", str(rpm)], check=True, capture_output=True).stdout
    subprocess.run(
        ["cpio", "-idm", "--quiet"], input=payload, cwd=into, check=True, capture_output=True
    )


def median_walls(*cmds: list[str]) -> list[float]:
    """Median wall time of each command, runs interleaved (the machine's load hits all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    times: list[list[float]] = [[] for _ in cmds]
    for _ in range(RUNS):
        for cmd, spent in zip(cmds, times, strict=True):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rpm-launcher-bench-") as tmp:
        work = Path(tmp)
        if len(sys.argv) > 1:
            rpm = Path(sys.argv[1])
        else:
            top = work / "top"
            subprocess.run(
                ["make", "-s", "-C", str(ROOT), "rpm", f"RPM_TOPDIR={top}",
                 "RPMBUILD_FLAGS=--nodeps --without check"],
                check=True, capture_output=True,
            )  # fmt: skip
            (rpm,) = (top / "RPMS" / "noarch").glob("*.rpm")
        runs = []
        for variant in ("sources", "bytecode"):
            extract(rpm, work / variant)
            appdir = work / variant / APPDIR.lstrip("/")
            if variant == "bytecode":
                compileall.compile_dir(appdir, quiet=1)
            launcher = work / variant / "launcher"
            text = (work / variant / "usr/bin/mullvad-allow-k8s").read_text()
            launcher.write_text(text.replace(f'"{APPDIR}"', f'"{appdir}"'))
            flags = text.splitlines()[0].split()[1:]  # the shebang's flags, e.g. -sPB
            runs.append([PYTHON, *flags, str(launcher), "generate", "--settings", "none"])
        sources_only, with_bytecode, bare = median_walls(*runs, [PYTHON, "-c", "pass"])
        assert not list((work / "sources").rglob("__pycache__")), "the launcher wrote bytecode"

    print(f"RPM launcher, `generate --settings none`, median of {RUNS} runs ({PYTHON}):")
    print(f"  (a) sources only (the RPM built here, -B): {sources_only * 1000:6.1f} ms")
    print(f"  (b) with bytecode (a native build):        {with_bytecode * 1000:6.1f} ms")
    print(f"  (c) python3 -c pass:                       {bare * 1000:6.1f} ms")
    print(f"  compiling at every start costs {(sources_only - with_bytecode) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
