"""The harness itself, without containers: image list, tags, snapshots, transactions."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.install import engine, imagelist
from tests.install.harness import snapshot_diff
from tests.nftmonitor import table_present_after_each


def test_pytest_container_is_installed() -> None:
    try:
        importlib.import_module("pytest_container")
    except ImportError:
        pytest.skip(
            "pytest-container is not installed, so tests/install collected nothing: "
            "`make venv` installs it (pip install pytest-container)"
        )


def test_every_image_of_the_list_has_a_tag_and_a_way_to_be_built() -> None:
    images = imagelist.load()
    assert len({i.tag for i in images}) == len(images)
    for image in images:
        assert image.tag.startswith(f"{imagelist.REPOSITORY}/{image.name}:")
        assert image.suite or image.parent or image.registry
        assert image.how_to_build.startswith("`make images")
    names = {i.name for i in images}
    for suite in ("bookworm", "trixie", "sid"):
        assert {suite, f"{suite}-systemd"} <= names
    assert any(i.family == "rpm" and i.rpm_shim and not i.needs_registry for i in images)


def test_a_changed_recipe_changes_the_tags_of_the_image_and_its_children(tmp_path: Path) -> None:
    text = imagelist.IMAGES_TOML.read_text()
    edited = tmp_path / "images.toml"
    edited.write_text(text.replace('suite = "bookworm"', 'suite = "bookworm"\ninclude = ["less"]'))
    before = {i.name: i.tag for i in imagelist.load()}
    after = {i.name: i.tag for i in imagelist.load(edited)}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {
        "bookworm",
        "bookworm-systemd",
        "rpm-bookworm-systemd",
        "rpm-bookworm-py313-systemd",
    }


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ('name = "x"\nfamily = "deb"', "give exactly one of suite, from"),
        ('name = "x"\nfamily = "apk"\nsuite = "sid"', "family must be deb or rpm"),
        ('name = "x"\nfamily = "deb"\nfrom = "nothing"', "neither an image listed above"),
        ('name = "x"\nfamily = "deb"\nfrom = "a.io/x:1"', "installs its packages in `prepare`"),
        ('name = "x"\nfamily = "deb"\nsuite = "sid"\nsytemd = true', "unknown key(s) sytemd"),
    ],
)
def test_a_wrong_image_entry_is_refused_naming_it(tmp_path: Path, entry: str, why: str) -> None:
    path = tmp_path / "images.toml"
    path.write_text(f"[deb]\ninclude = []\n\n[[image]]\n{entry}\n")
    with pytest.raises(ValueError, match=f"image x: .*{re.escape(why)}"):
        imagelist.load(path)


def test_table_gaps_are_found_per_transaction() -> None:
    replace = ["delete table inet mullvad_allow_k8s", "add table inet mullvad_allow_k8s"]
    assert table_present_after_each([replace, ["add table inet other"]]) == []
    gap = [["delete table inet mullvad_allow_k8s"], ["add table inet mullvad_allow_k8s"]]
    assert table_present_after_each(gap) == [0]
    assert table_present_after_each([["delete table inet mullvad_allow_k8s_2"]]) == []


def test_snapshot_diff_names_what_was_left_removed_or_changed() -> None:
    before = {"/etc/a": "-rw-r--r-- 0:0 sha256:1", "/usr/b": "x"}
    after = {"/etc/a": "-rw-r--r-- 0:0 sha256:2", "/etc/c": "y"}
    assert snapshot_diff(before, after) == [
        "left behind: /etc/c (y)",
        "removed: /usr/b (x)",
        "changed: /etc/a: -rw-r--r-- 0:0 sha256:1 -> -rw-r--r-- 0:0 sha256:2",
    ]


def test_the_engine_probe_says_why_podman_cannot_be_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTAINER_RUNTIME", raising=False)
    monkeypatch.setattr(
        engine.shutil, "which", lambda name: "/usr/bin/docker" if name == "docker" else None
    )
    reason = engine.probe()
    assert reason is not None
    assert reason.startswith("podman is not installed (a docker client is installed")
    assert "make deps" in reason

    monkeypatch.setenv("CONTAINER_RUNTIME", "docker")
    assert engine.probe() == (
        "CONTAINER_RUNTIME=docker: tests/install needs podman "
        "(systemd as PID 1, images in containers-storage); unset it"
    )
