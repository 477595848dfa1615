"""The man page and README keep up with the schema and the commands."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mullvad_allow_k8s.cli import build_parser
from mullvad_allow_k8s.settings import SCHEMA
from tests.conftest import ROOT

MAN = ROOT / "data" / "mullvad-allow-k8s.8"


def commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def test_man_page_documents_every_setting_and_command() -> None:
    text = MAN.read_text()
    for field in SCHEMA:
        assert f".BR {field.key} " in text, field.key
        assert field.flag.replace("-", "\\-") in text, field.flag
    for command in commands():
        assert f".B {command}\n" in text, command


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed")
def test_man_page_renders_without_warnings() -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0 and result.stderr == ""


def test_readme_documents_every_setting_and_command() -> None:
    text = (ROOT / "README.md").read_text()
    for field in SCHEMA:
        assert f"`{field.key}`" in text, field.key
    for command in commands():
        assert f"`{command}`" in text, command
