"""The trust boundary (detect/boundary.py) on real files, links, FIFOs and programs.

Files owned by another user need root to make (chown); those tests run as root, as CI
does, and say so where a developer runs them as a user.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from mullvad_allow_k8s.detect import boundary
from mullvad_allow_k8s.detect.boundary import UntrustedError, read_text

USER = 4242  # an unprivileged uid, as a local user's files have
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/k").mkdir(parents=True)
    (root / "etc/k/ok.yaml").write_text("a: 1\n")
    return root


def test_a_root_file_is_read(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert read_text(root, "etc/k/ok.yaml") == "a: 1\n"
    assert read_text(root, "etc/k/missing.yaml") is None
    assert read_text(root, "etc/none/x.yaml") is None


@as_root
def test_a_file_another_user_owns_is_not_trusted(tmp_path: Path) -> None:
    root = tree(tmp_path)
    os.chown(root / "etc/k/ok.yaml", USER, USER)
    with pytest.raises(UntrustedError, match="uid 4242"):
        read_text(root, "etc/k/ok.yaml")


@as_root
def test_a_directory_another_user_owns_is_not_trusted(tmp_path: Path) -> None:
    root = tree(tmp_path)
    os.chown(root / "etc/k", USER, USER)
    with pytest.raises(UntrustedError, match="directory 'k'"):
        read_text(root, "etc/k/ok.yaml")


def test_writable_by_everyone_is_not_trusted(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "etc/k/ok.yaml").chmod(0o666)
    with pytest.raises(UntrustedError, match="writable by every user"):
        read_text(root, "etc/k/ok.yaml")
    (root / "etc/k/ok.yaml").chmod(0o644)
    (root / "etc/k").chmod(0o777)
    with pytest.raises(UntrustedError, match="writable by every user"):
        read_text(root, "etc/k/ok.yaml")


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    root = tree(tmp_path)
    os.mkfifo(root / "etc/k/fifo.yaml")
    start = time.monotonic()
    with pytest.raises(UntrustedError, match="not a regular file"):
        read_text(root, "etc/k/fifo.yaml")
    assert time.monotonic() - start < 1


def test_a_link_to_a_device_is_refused(tmp_path: Path) -> None:
    """Inside a fake root an absolute link stays in that root; at / it reaches the device,
    which is no regular file."""
    root = tree(tmp_path)
    (root / "etc/k/zero.yaml").symlink_to("/dev/zero")
    assert read_text(root, "etc/k/zero.yaml") is None  # <root>/dev/zero: not there
    relative = os.path.relpath(root / "etc/k/zero.yaml", "/")
    with pytest.raises(UntrustedError, match="not a regular file"):
        read_text(Path("/"), relative)


def test_links_never_leave_the_tree(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (tmp_path / "outside.yaml").write_text("secret: 1\n")
    (root / "etc/k/up.yaml").symlink_to("../../../../outside.yaml")
    assert read_text(root, "etc/k/up.yaml") is None  # '..' stops at the tree's root
    (root / "outside.yaml").write_text("inside: 1\n")
    assert read_text(root, "etc/k/up.yaml") == "inside: 1\n"
    (root / "etc/k/abs.yaml").symlink_to("/etc/k/ok.yaml")
    assert read_text(root, "etc/k/abs.yaml") == "a: 1\n"


@as_root
def test_a_link_another_user_made_is_not_followed(tmp_path: Path) -> None:
    root = tree(tmp_path)
    link = root / "etc/k/link.yaml"
    link.symlink_to("ok.yaml")
    os.lchown(link, USER, USER)
    with pytest.raises(UntrustedError, match=r"link 'link\.yaml'"):
        read_text(root, "etc/k/link.yaml")


def test_loops_end(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "etc/k/a").symlink_to("b")
    (root / "etc/k/b").symlink_to("a")
    with pytest.raises(UntrustedError, match="too many levels"):
        read_text(root, "etc/k/a")


def test_a_large_file_is_refused_unread(tmp_path: Path) -> None:
    root = tree(tmp_path)
    with (root / "etc/k/big.yaml").open("wb") as f:
        f.truncate(100 * 1024 * 1024)  # sparse: 100 MB that cost nothing to make
    start = time.monotonic()
    with pytest.raises(UntrustedError, match="larger than"):
        read_text(root, "etc/k/big.yaml")
    assert time.monotonic() - start < 1


def test_listing_and_presence(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert boundary.list_dir(root, "etc/k") == ["ok.yaml"]
    assert boundary.list_dir(root, "etc/none") is None
    assert boundary.present(root, "etc/k/ok.yaml")
    assert not boundary.present(root, "etc/k/no.yaml")
    assert boundary.is_dir(root, "etc/k") and not boundary.is_dir(root, "etc/k/ok.yaml")


# --- programs ---------------------------------------------------------------------------


def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A `docker` in a directory that stands for the fixed search path (which is then
    also its whole PATH: the body names programs by their full path)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    program = bindir / "docker"
    program.write_text(f"#!/bin/sh\n{body}\n")
    program.chmod(0o755)
    monkeypatch.setattr(boundary, "SEARCH_PATH", (str(bindir),))
    return program


def test_only_our_argv_shapes_run() -> None:
    for argv in (
        [sys.executable, "-c", "pass"],
        ["sh", "-c", "id"],
        ["virsh", "--connect", "qemu+ext:///system?command=/tmp/x", "net-list"],
        ["docker", "network", "inspect", "--filter=label=x"],
        ["docker", "network", "inspect", "-x"],
        ["podman", "network", "inspect", "a b"],
    ):
        with pytest.raises(ValueError, match=r"not a program|neither a constant nor a name"):
            boundary.run(argv)


def test_the_callers_path_and_environment_do_not_reach_a_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake(tmp_path, monkeypatch, 'echo "$PATH|${DOCKER_HOST:-}|${LD_PRELOAD:-}"')
    other = tmp_path / "other"
    other.mkdir()
    (other / "docker").write_text("#!/bin/sh\necho hijacked\n")
    (other / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    result = boundary.run(["docker", "network", "ls"])
    assert result is not None
    status, out = result
    assert status == 0
    assert out.decode().strip() == f"{':'.join(boundary.SEARCH_PATH)}||"


def test_a_program_that_hangs_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path, monkeypatch, "/bin/sleep 60 &\n/bin/sleep 60")
    start = time.monotonic()
    with pytest.raises(UntrustedError, match=r"took longer than 0\.5 s"):
        boundary.run(["docker", "network", "ls"], timeout=0.5)
    assert time.monotonic() - start < 3


def test_a_program_that_floods_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path, monkeypatch, "exec /bin/cat /dev/zero")
    with pytest.raises(UntrustedError, match="printed more than 1000 bytes"):
        boundary.run(["docker", "network", "ls"], limit=1000)


def test_a_missing_program_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(boundary, "SEARCH_PATH", (str(tmp_path),))
    assert boundary.run(["docker", "network", "ls"]) is None


@as_root
def test_a_program_another_user_owns_is_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = fake(tmp_path, monkeypatch, "echo ran")
    os.chown(program, USER, USER)
    assert boundary.run(["docker", "network", "ls"]) is None
