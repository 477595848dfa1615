"""Unit tests never read the machine they run on: `auto` detects nothing here unless a
test hands the CLI its own detection (monkeypatching cli.machine_detection)."""

from __future__ import annotations

import pytest

from mullvad_allow_k8s import cli


@pytest.fixture(autouse=True)
def _no_machine_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "machine_detection", lambda engines=True: ([], []))
