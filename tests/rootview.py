"""Run a command as root sees a machine that differs in a few root-owned places.

Detection ignores its caller's environment (PATH, CONTAINERS_CONF, ...): it reads
root's files and runs root's programs from a fixed PATH (src/.../detect/boundary.py).
A test that needs root's view to differ (a fake engine CLI, Podman configured for a
lab) makes that view in a private mount namespace: each directory named gets a tmpfs
holding a copy of what it held, plus the files given, owned by root. Nothing outside
the namespace changes.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

# The first directory of detect.boundary.SEARCH_PATH: empty on Debian, so fakes put there
# are the programs detection finds.
FIRST_ON_PATH = "/usr/local/sbin"


def prefix(files: Mapping[str, Path]) -> list[str]:
    """argv prefix: `unshare -m` with root-owned copies of `files` (target -> source)."""
    script = ["stage=$(mktemp -d)"]
    directories = sorted({str(Path(target).parent) for target in files})
    for i, directory in enumerate(directories):
        d, s = shlex.quote(directory), f'"$stage/{i}"'
        script += [
            f"mkdir -p {d} {s}",
            f"cp -a {d}/. {s}/",
            f"mount -t tmpfs -o mode=0755 tmpfs {d}",
            f"cp -a {s}/. {d}/",
        ]
    for target, source in files.items():
        t = shlex.quote(target)
        script += [f"cp {shlex.quote(str(source))} {t}", f"chown 0:0 {t}", f"chmod 0755 {t}"]
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "; ".join(script), "sh"]


def fake_programs(directory: Path, scripts: Mapping[str, str]) -> dict[str, Path]:
    """Shell scripts written under `directory`, as files for `prefix` on FIRST_ON_PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, body in scripts.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}")
        path.chmod(0o755)
        out[f"{FIRST_ON_PATH}/{name}"] = path
    return out
