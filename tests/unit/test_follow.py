"""follow's loop and the engines' event streams, with real subprocesses as streams."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mullvad_allow_k8s import follow as following
from mullvad_allow_k8s.detect import boundary
from mullvad_allow_k8s.follow import EventStreams, follow

PODMAN_EVENTS = following.ENGINE_EVENTS[1]


def fake_podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """`podman` on the trust boundary's search path (then the program's whole PATH)."""
    (tmp_path / "podman").write_text(f"#!/bin/sh\n{body}\n")
    (tmp_path / "podman").chmod(0o755)
    monkeypatch.setattr(boundary, "SEARCH_PATH", (str(tmp_path),))


def test_an_event_wakes_the_loop_after_a_quiet_spell(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(following, "QUIET", 0.3)
    fake_podman(
        tmp_path, monkeypatch, "/bin/sleep 0.2; echo create; echo start; exec /bin/sleep 30"
    )
    streams = EventStreams([PODMAN_EVENTS])
    start = time.monotonic()
    try:
        assert streams.wait(20) is True
        waited = time.monotonic() - start
        assert 0.4 < waited < 10, waited  # the burst, then QUIET seconds of nothing
        assert streams.wait(0.5) is False  # nothing more: the interval runs out
    finally:
        streams.close()
    assert all(p.poll() is not None for p in streams.running.values())


def test_a_stream_that_ends_is_started_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(following, "QUIET", 0.2)
    fake_podman(tmp_path, monkeypatch, "echo event")
    once = PODMAN_EVENTS
    streams = EventStreams([once])
    try:
        assert streams.wait(5) is True
        first = streams.running[once]
        first.wait(5)
        assert streams.wait(5) is True  # restarted: a daemon that came back
        assert streams.running[once] is not first
    finally:
        streams.close()


def test_engines_that_are_not_installed_are_not_started() -> None:
    streams = EventStreams([("mak-no-such-engine", "events")])
    assert streams.commands == []
    assert streams.wait(0.1) is False


def test_follow_runs_the_step_each_round_and_logs_what_it_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    said = iter(["applied: x", None, "applied: y"])
    assert follow(lambda: next(said), interval=0.01, events=EventStreams([]), rounds=3) == 0
    assert capsys.readouterr().err == "applied: x\napplied: y\n"
