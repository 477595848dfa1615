"""debian/ against the schema and Debian's checkers: no drift, lintian clean, right contents."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mullvad_allow_k8s import __version__
from mullvad_allow_k8s.settings import PRESET_CHOICES, SCHEMA, render_settings_file
from tests.deb.conftest import REPO, need_tools, run
from tests.packages import Builds

pytestmark = pytest.mark.deb

DEBIAN = REPO / "debian"
TEMPLATES = DEBIAN / "mullvad-allow-k8s.templates"
ERROR_TEMPLATES = {"invalid", "invalid_file"}
ASKED = [f for f in SCHEMA if f.asked]


def parse_templates(text: str) -> dict[str, dict[str, str]]:
    """Template name (without the package prefix) -> fields (first line of each)."""
    out: dict[str, dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] in (" ", "#"):
                continue
            name, _, value = line.partition(":")
            fields[name.lstrip("_")] = value.strip()
        out[fields["Template"].removeprefix("mullvad-allow-k8s/")] = fields
    return out


def script_keys(script: str) -> list[str]:
    match = re.search(r'^KEYS="([A-Z_ ]+)"$', (DEBIAN / script).read_text(), re.MULTILINE)
    assert match, f"{script} has no KEYS= line"
    return match.group(1).split()


def test_every_asked_field_has_its_question_and_nothing_else_does() -> None:
    questions = set(parse_templates(TEMPLATES.read_text())) - ERROR_TEMPLATES
    assert questions == {f.key.lower() for f in ASKED}


def test_question_defaults_are_the_schema_defaults() -> None:
    templates = parse_templates(TEMPLATES.read_text())
    for field in ASKED:
        assert templates[field.key.lower()].get("Default", "") == field.default, field.key


def test_preset_choices_are_the_presets() -> None:
    preset = parse_templates(TEMPLATES.read_text())["preset"]
    assert preset["Type"] == "select"
    assert preset["Choices"].split(", ") == list(PRESET_CHOICES)


@pytest.mark.parametrize("script", ["mullvad-allow-k8s.config", "mullvad-allow-k8s.postinst"])
def test_maintainer_scripts_know_the_asked_keys_in_schema_order(script: str) -> None:
    assert script_keys(script) == [f.key for f in ASKED]


def test_templates_pot_is_current(tmp_path: Path) -> None:
    need_tools("debconf-updatepo")
    copy = tmp_path / "debian"
    shutil.copytree(DEBIAN, copy, symlinks=True)
    run(["debconf-updatepo"], cwd=copy)

    def strip(text: str) -> str:
        return re.sub(r'"POT-Creation-Date: .*\n', "", text)

    assert strip((copy / "po/templates.pot").read_text()) == strip(
        (DEBIAN / "po/templates.pot").read_text()
    ), "run debconf-updatepo in debian/ and commit po/templates.pot"


def test_maintainer_scripts_pass_shellcheck_as_posix_sh() -> None:
    need_tools("shellcheck")
    scripts = [DEBIAN / f"mullvad-allow-k8s.{s}" for s in ("config", "postinst", "prerm", "postrm")]
    proc = run(["shellcheck", "--shell=sh", *map(str, scripts)], check=False)
    assert proc.returncode == 0, proc.stdout
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n")
        assert "\nset -e\n" in text


def test_lintian_reports_no_errors_or_warnings(builds: Builds) -> None:
    need_tools("lintian")
    proc = run(
        ["lintian", "--display-info", "--fail-on", "error,warning", str(builds.changes)],
        check=False,
    )
    print(proc.stdout)  # the report quotes it
    tags = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert tags == []
    assert proc.returncode == 0, proc.stderr


def test_package_contents(builds: Builds, tmp_path: Path) -> None:
    fields = run(["dpkg-deb", "--field", str(builds.deb), "Architecture", "Depends"]).stdout
    assert "Architecture: all" in fields
    depends = {d.strip().split(" ")[0] for d in fields.split("Depends:")[1].split(",")}
    assert {"nftables", "python3-nftables", "python3-netaddr"} <= depends

    listing = run(["dpkg-deb", "--contents", str(builds.deb)]).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    assert "/usr/bin/mullvad-allow-k8s" in paths
    assert "/usr/share/man/man8/mullvad-allow-k8s.8.gz" in paths
    # Nothing in /etc: the settings file is written by postinst, never a conffile.
    assert not [p for p in paths if p.startswith("/etc/") and p != "/etc/"]

    subprocess.run(["dpkg-deb", "--extract", str(builds.deb), str(tmp_path)], check=True)
    units = [
        tmp_path / d / "mullvad-allow-k8s.service"
        for d in ("lib/systemd/system", "usr/lib/systemd/system")
        if (tmp_path / d / "mullvad-allow-k8s.service").exists()
    ]
    assert len(units) == 1
    assert units[0].read_text() == (REPO / "data/mullvad-allow-k8s.service").read_text()
    template = tmp_path / "usr/share/mullvad-allow-k8s/settings.default"
    assert template.read_text() == render_settings_file()


def test_changelog_version_is_the_python_package_version() -> None:
    need_tools("dpkg-parsechangelog")
    version = run(["dpkg-parsechangelog", "--show-field", "Version"], cwd=REPO).stdout.strip()
    assert version == __version__, "bump debian/changelog with pyproject.toml (native package)"
