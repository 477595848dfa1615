"""CI fails on what it could not run (issue 22, item 4).

tests/conftest.py turns, under CI=true, every skip whose reason is not on HONEST_SKIPS
into a failure naming the reason, and lists the allowed ones by reason at the end;
.ci/fetch-history gives a shallow clone the history the upgrade tests build old
releases from, or fails saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import releases

ROOT = Path(__file__).resolve().parents[2]

DEMO = """
import pytest

def test_needs_a_build_dependency():
    pytest.skip("needs rpmbuild (.ci/apt/rpm.txt)")

@pytest.fixture
def bridge():
    pytest.skip("this kernel lacks nf_conntrack_bridge (CONFIG_NF_CONNTRACK_BRIDGE)")

def test_kernel_feature(bridge):
    pass

@pytest.mark.skip(reason="nothing here")
def test_marked():
    pass

def test_runs():
    pass
"""


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_demo.py").write_text(DEMO)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    argv += ["-q", "-ra", "--rootdir", str(tmp_path), str(tmp_path / "test_demo.py")]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, check=False)


def test_ci_fails_on_skips_not_on_the_allow_list(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "true")
    out = done.stdout
    assert done.returncode == 1, out
    assert "1 failed, 1 passed, 1 skipped, 1 error" in out, out
    assert "CI=true: this was skipped, which CI does not allow: needs rpmbuild" in out
    assert "CI=true: this was skipped, which CI does not allow: nothing here" in out
    summary = out.split("skips allowed under CI=true", 1)[1]
    assert "1 x this kernel lacks nf_conntrack_bridge" in summary
    assert "allowed: kernel feature:" in summary


@pytest.mark.parametrize("ci", [None, "false"])
def test_skips_stay_skips_outside_ci(tmp_path: Path, ci: str | None) -> None:
    done = _pytest(tmp_path, ci)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 3 skipped" in done.stdout
    assert "skips allowed under CI=true" not in done.stdout


def _shallow_clone(tmp_path: Path, name: str) -> Path:
    clone = tmp_path / name
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)],
        check=True,
        capture_output=True,
    )
    # the script as it is in this checkout, which may not be committed yet
    shutil.copy2(ROOT / ".ci" / "fetch-history", clone / ".ci" / "fetch-history")
    shutil.copy2(ROOT / "tests" / "releases.py", clone / "tests" / "releases.py")
    return clone


def _has(clone: Path, commit: str) -> bool:
    probe = ["git", "-C", str(clone), "cat-file", "-e", f"{commit}^{{commit}}"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not shutil.which("git"), reason="needs git (.ci/apt/rpm.txt)")
def test_fetch_history_unshallows_a_shallow_clone(tmp_path: Path) -> None:
    clone = _shallow_clone(tmp_path, "shallow")
    assert not _has(clone, releases.RELEASE_0_1_0)
    done = subprocess.run(
        [str(clone / ".ci" / "fetch-history")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert _has(clone, releases.RELEASE_0_1_0) and _has(clone, releases.RELEASE_0_2_0)


@pytest.mark.skipif(not shutil.which("git"), reason="needs git (.ci/apt/rpm.txt)")
def test_fetch_history_fails_when_it_cannot(tmp_path: Path) -> None:
    clone = _shallow_clone(tmp_path, "cut-off")
    subprocess.run(
        ["git", "-C", str(clone), "remote", "set-url", "origin", str(tmp_path / "gone")],
        check=True,
    )
    done = subprocess.run(
        [str(clone / ".ci" / "fetch-history")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "its history could not be fetched" in done.stderr
