"""Packaging benchmark: prints figures, asserts nothing (read by people).

What the package suites (tests/deb, rpm, repo, install) spend before their first
test, measured here so that the tests time nothing:

- packages: every package of tests/packages.py built from scratch the way a test
  session builds them (queued at once, two at a time): when each is ready;
- publish: `make repo-publish` of the .deb and the .rpm, signed with a throwaway key
  (tests/repo's first fixture);
- roots (--roots): tests/roots.py's bookworm root made by mmdebstrap into an empty
  cache, then found in it, and one overlay of it mounted and removed (each test's);
- images (--images): every image of tests/install/images.toml this machine can build,
  into an empty podman storage (minutes: the Debian suites are downloaded).

Usage: python3 bench/packaging_bench.py [--roots] [--images]   (roots, images: root)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import Future, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def packages(tmp: Path) -> None:
    from tests.packages import Builds  # noqa: PLC0415 (after sys.path)
    from tests.repo.conftest import make_key, publish  # noqa: PLC0415

    start = time.monotonic()
    builds = Builds(tmp / "packages")
    ready: dict[str, float] = {}
    for name, job in builds.jobs.items():
        if isinstance(job, Future):
            job.add_done_callback(lambda _, name=name: ready.setdefault(name, time.monotonic()))
        else:
            print(f"packages: {name}: not built ({job})")
    wait([job for job in builds.jobs.values() if isinstance(job, Future)])
    for name, at in sorted(ready.items(), key=lambda item: item[1]):
        job = builds.jobs[name]
        state = "ready" if isinstance(job, Future) and job.result().returncode == 0 else "FAILED"
        print(f"packages: {name:12} {state} after {at - start:5.1f} s")
    print(f"packages: all {len(ready)} in {time.monotonic() - start:.1f} s (2 at a time)")

    if any(not isinstance(builds.jobs[n], Future) for n in ("deb", "rpm")):
        return
    key = make_key(tmp / "key")
    start = time.monotonic()
    publish(tmp / "repo", key, debs=(builds.deb,), rpms=(builds.rpm,))
    print(f"publish: make repo-publish (.deb and .rpm): {time.monotonic() - start:.2f} s")


def roots_figures(tmp: Path) -> None:
    from tests import roots  # noqa: PLC0415

    roots.CACHE = tmp / "cache"
    start = time.monotonic()
    root = roots.debian_root()
    print(f"roots: bookworm root, empty cache: {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    roots.debian_root()
    print(f"roots: bookworm root, cached: {(time.monotonic() - start) * 1000:.0f} ms")
    start = time.monotonic()
    roots.Overlay([root], tmp / "overlay").close()
    print(f"roots: one overlay mounted and removed: {(time.monotonic() - start) * 1000:.0f} ms")


def images(tmp: Path) -> None:
    os.environ["MAK_INSTALL_WORKDIR"] = str(tmp / "install")  # an empty podman storage
    from tests.install import engine, imagebuild, imagelist  # noqa: PLC0415

    engine.configure()
    if reason := engine.probe():
        print(f"images: not measured: {reason}")
        return
    chosen = [i for i in imagelist.load() if i.enabled and not i.needs_registry]
    chosen = [i for i in chosen if not i.unbuildable]
    start = time.monotonic()
    errors = imagebuild.ensure(chosen, say=lambda line: None)
    took = time.monotonic() - start
    print(f"images: {len(chosen) - len(errors)} built, {len(errors)} failed in {took:.0f} s")
    engine.podman("rmi", "--all", "--force", check=False)  # the storage under tmp only


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--roots", action="store_true", help="also the mmdebstrap root (root)")
    parser.add_argument("--images", action="store_true", help="also the podman images (root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mak-packaging-bench-", dir="/var/tmp") as tmp:
        packages(Path(tmp))
        if args.roots:
            roots_figures(Path(tmp))
        if args.images:
            images(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
