"""Build the test images of tests/install/images.toml into podman.

`make images` (python3 -m tests.install.imagebuild) builds them ahead; the test
session builds the ones its tests need and that are missing (ensure()), so
`pytest tests/install` works on its own.

Root images come from the Debian archive this machine's apt uses, with mmdebstrap
(no registry needed), piped into `podman import`. Derived images add packages to
another image of the list with `podman build` (apt, host network, build time only:
the tests run without network). Images based on a registry image are built only
when asked for (--pull): most test machines cannot reach a registry. An image whose
tag (a hash of its recipe) is present is not built again; outdated tags are
removed. Independent builds run in parallel, under a lock (parallel test workers);
logs go to build/install/images/.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import inspect
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tests import roots
from tests.install import engine
from tests.install.imagelist import REPOSITORY, Image, load

LOGDIR = engine.WORKDIR / "images"
# The sid (and at times trixie) Release file of a snapshot mirror has expired.
# Both options stay in the image (/etc/apt/apt.conf.d, /etc/dpkg/dpkg.cfg.d):
# unsafe-io spares the fsyncs of every dpkg run, in builds and tests.
APT_OPTS = ['Acquire::Check-Valid-Until "false"', 'Acquire::Retries "3"']
DPKG_OPTS = ["force-unsafe-io"]

# rpm's database in a Debian userland lists nothing, so rpm and dnf would want
# python3, nftables, ... installed again. This package provides, in rpm's terms,
# every package dpkg has installed, and the Fedora names and files specs require,
# and owns the directories that Fedora's filesystem package owns and ours uses.
SHIM_SCRIPT = r"""
set -e
mkdir -p /tmp/shim
{
    cat <<'EOF'
Name:      debian-userland
Version:   1
Release:   1
Summary:   What dpkg installed, as rpm Provides (test images only)
License:   GPL-3.0-or-later
BuildArch: noarch
EOF
    dpkg-query -W -f '${Package}\n' | sort -u | sed 's/^/Provides:  /'
    printf 'Provides:  %s\n' iproute python3-pyyaml \
        /bin/sh /usr/bin/sh /usr/bin/python3 /usr/sbin/nft
    printf '%%description\nLets rpm and dnf see the packages dpkg installed.\n'
    # what Fedora's filesystem package owns and our package puts files into
    printf '%%install\nmkdir -p %%{buildroot}/etc/sysconfig %%{buildroot}/usr/share/licenses\n'
    printf '%%files\n%%dir /etc/sysconfig\n%%dir /usr/share/licenses\n'
} > /tmp/shim/shim.spec
rpmbuild -bb --quiet --define '_topdir /tmp/shim' /tmp/shim/shim.spec
rpm -i /tmp/shim/RPMS/noarch/debian-userland-1-1.noarch.rpm
rm -rf /tmp/shim
"""


# python = "X.Y": the interpreter layer (tests/rpm/harness.python_layer, copied into the
# build context as python/) replaces /usr/bin/python3; netaddr, the bindings and PyYAML
# the image already has (Debian's; PyYAML without its C part, built for 3.11) are copied
# into its site-packages, and Debian's dnf, a Python 3.11 program, is pointed at
# Debian's interpreter.
PYTHON_SCRIPT = r"""
set -e
site=/usr/lib/python{v}/site-packages
cp -r /usr/lib/python3/dist-packages/netaddr /usr/lib/python3/dist-packages/nftables \
    /usr/lib/python3/dist-packages/yaml "$site/"
sed -i '1s|^#!/usr/bin/python3$|#!/usr/bin/python3.11|' /usr/bin/dnf
python3 -B -c 'import sys, netaddr, nftables, yaml
assert sys.version_info[:2] == ({major}, {minor}), sys.version
assert not [p for p in sys.path if "dist-packages" in p], sys.path'
dnf --version >/dev/null
"""


def present(tag: str) -> bool:
    return engine.podman("image", "exists", tag, check=False).returncode == 0


def run_logged(cmd: list[str] | str, log: Path) -> None:
    if isinstance(cmd, str):
        cmd = ["bash", "-c", cmd]
    with log.open("a") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if res.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-12:])
        raise RuntimeError(f"exit {res.returncode}, see {log}:\n{tail}")


def cmd_line(image: Image) -> str:
    return '["/sbin/init"]' if image.systemd else '["/bin/bash"]'


def build_root(image: Image, log: Path) -> None:
    """mmdebstrap | podman import: a Debian root without a registry (tests/roots.py's
    mmdebstrap command, written to a pipe instead of the cache)."""
    assert image.suite is not None
    mirror = roots.debian_mirror(image.suite)
    if mirror is None:
        raise RuntimeError("no Debian archive in apt's sources; set MAK_DEB_MIRROR=URL")
    mmdebstrap = roots.mmdebstrap(
        image.suite, image.include, "-", mirror, aptopts=APT_OPTS, dpkgopts=DPKG_OPTS
    )
    podman_import = [
        engine.PODMAN, "import",
        "--change", f"CMD {cmd_line(image)}",
        "--change", f"LABEL mak.recipe={image.digest}",
        "-", image.tag,
    ]  # fmt: skip
    run_logged(f"set -o pipefail; {shlex.join(mmdebstrap)} | {shlex.join(podman_import)}", log)


def build_derived(image: Image, log: Path) -> None:
    """podman build on an image of the list (apt) or on a registry image (prepare)."""
    script = image.prepare
    if image.parent and image.include:
        script = (
            "export DEBIAN_FRONTEND=noninteractive\n"
            "apt-get update -q\n"
            "apt-get install -y -q --no-install-recommends " + " ".join(image.include) + "\n"
            # no network in the tests: lists would only be stale, and apt slower
            "apt-get clean\n"
            "rm -rf /var/lib/apt/lists/*\n"
        )
    if image.rpm_shim:
        script += SHIM_SCRIPT
    copy_python = ""
    if image.python:
        major, minor = image.python.split(".")
        script += PYTHON_SCRIPT.format(v=image.python, major=major, minor=minor)
        copy_python = "COPY python/ /\n"
    base = image.parent.tag if image.parent else image.registry
    with tempfile.TemporaryDirectory(prefix=f"{image.name}-", dir=LOGDIR) as tmp:
        (Path(tmp) / "prepare.sh").write_text(script)
        if image.python:
            from tests.rpm.harness import python_layer  # noqa: PLC0415 (only here)

            layer = python_layer(None, image.python)
            shutil.copytree(layer, Path(tmp) / "python", symlinks=True)
            (Path(tmp) / "python" / ".complete").unlink()
        (Path(tmp) / "Containerfile").write_text(
            f"FROM {base}\n"
            f"{copy_python}"
            "COPY prepare.sh /tmp/prepare.sh\n"
            "RUN sh -e /tmp/prepare.sh && rm /tmp/prepare.sh\n"
            f"CMD {cmd_line(image)}\n"
            f"LABEL mak.recipe={image.digest}\n"
        )
        # apt and registries need the network at build time; the tests have none
        # the parent is in local storage: never ask a registry for it
        pull = "--pull=never" if image.parent else "--pull=missing"
        build = [engine.PODMAN, "build", "--quiet", "--force-rm", pull, "--network", "host"]
        run_logged([*build, "-t", image.tag, tmp], log)


def build(image: Image, parent: Future[None] | None) -> None:
    if parent is not None:
        parent.result()  # raises when the parent failed
    log = LOGDIR / f"{image.name}.log"
    log.write_text("")
    if image.suite:
        build_root(image, log)
    else:
        build_derived(image, log)


def prune(images: list[Image], say: Callable[[str], None] = print) -> None:
    """Remove this repository's images whose tag no recipe produces any more."""
    wanted = {i.tag for i in images}
    res = engine.podman(
        "images", "--format", "{{.Repository}}:{{.Tag}}",
        "--filter", f"reference={REPOSITORY}/*", check=False,
    )  # fmt: skip
    stale = [t for t in res.stdout.split() if t not in wanted]
    if stale:
        engine.podman("rmi", "--force", *stale, check=False)
        say(f"images: removed {len(stale)} outdated image(s)")
    # untagged leftovers (this storage belongs to the tests alone)
    engine.podman("image", "prune", "--force", check=False)


def fingerprint() -> bytes:
    """What of this file decides an image's content (part of every tag, see imagelist)."""
    parts = [repr((APT_OPTS, DPKG_OPTS, SHIM_SCRIPT, PYTHON_SCRIPT))]
    parts += [inspect.getsource(f) for f in (cmd_line, build_root, build_derived)]
    return hashlib.sha256("\n".join(parts).encode()).digest()


def with_parents(images: Iterable[Image]) -> list[Image]:
    """IMAGES and the images they are built from, parents first."""
    out: dict[str, Image] = {}

    def add(image: Image) -> None:
        if image.parent:
            add(image.parent)
        out.setdefault(image.name, image)

    for image in images:
        add(image)
    return list(out.values())


@contextmanager
def locked() -> Iterator[None]:
    """One builder at a time (test workers, a `make images` next to a test run)."""
    LOGDIR.mkdir(parents=True, exist_ok=True)
    with (LOGDIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(
    wanted: Iterable[Image], jobs: int = 4, say: Callable[[str], None] = print
) -> dict[str, str]:
    """Build the missing images of WANTED (and their parents); return {name: error}."""
    errors: dict[str, str] = {}
    with locked():
        todo = [i for i in with_parents(wanted) if not present(i.tag)]
        if not todo:
            return errors
        if any(i.suite for i in todo) and shutil.which("mmdebstrap") is None:
            return {i.name: "mmdebstrap is not installed (`make deps` installs it)" for i in todo}
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures: dict[str, Future[None]] = {}
            for image in todo:  # parents come first, so they are started first
                parent = futures.get(image.parent.name) if image.parent else None
                futures[image.name] = pool.submit(build, image, parent)
            for image in todo:
                try:
                    futures[image.name].result()
                except (RuntimeError, OSError) as err:
                    errors[image.name] = str(err)
                    say(f"images: {image.name}: FAILED: {err}")
                else:
                    say(f"images: {image.name}: built ({image.tag})")
        say(f"images: {len(todo) - len(errors)} built, {len(errors)} failed")
        prune(load(), say)
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("names", nargs="*", help="images to build (default: every enabled one)")
    parser.add_argument("--pull", action="store_true", help="also build registry-based images")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("IMAGES_JOBS", "4")))
    parser.add_argument("--list", action="store_true", help="print each image and its state")
    args = parser.parse_args()

    images = load()
    if reason := engine.probe():
        print(f"images: cannot build: {reason}", file=sys.stderr)
        return 1
    if args.list:
        for image in images:
            state = "present" if present(image.tag) else f"missing ({image.how_to_build})"
            print(f"{image.name:28} {image.tag:56} {state}")
        return 0
    if unknown := set(args.names) - {i.name for i in images}:
        print(f"images: unknown image(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    chosen = [
        i
        for i in images
        if i.name in args.names
        or (
            not args.names
            and (args.pull or (i.enabled and not i.needs_registry))
            and not i.unbuildable
        )
    ]
    for image in with_parents(chosen):
        if present(image.tag):
            print(f"images: {image.name}: up to date ({image.tag})")
    errors = ensure(chosen, args.jobs, say=lambda line: print(line, flush=True))
    with locked():
        prune(images)  # also when nothing was built
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
