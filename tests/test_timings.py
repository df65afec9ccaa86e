"""The --timings timeline: off by default, a table of phases when on, and inside the
emulated host each mark goes to the events port as a line instead."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from runner.timings import EVENTS_ENV, Timeline, process_age


def test_off_it_records_and_reports_nothing() -> None:
    timeline = Timeline()
    timeline.mark("never")
    out = io.StringIO()
    timeline.report(out)
    assert (timeline.marks(), out.getvalue()) == ([], "")


def test_on_each_phase_with_when_it_ended_and_how_long_it_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(EVENTS_ENV, raising=False)
    clock = iter([10.0, 12.5, 13.0])
    monkeypatch.setattr("runner.timings.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("runner.timings.process_age", lambda: 0.5)
    timeline = Timeline()
    timeline.enable()  # the process started at 9.5
    timeline.mark("loaded")
    timeline.mark("booted")
    out = io.StringIO()
    timeline.report(out)
    assert out.getvalue().splitlines() == [
        "vmrun: timings (seconds since vmrun started; phase took)",
        "     3.00    3.00  loaded",
        "     3.50    0.50  booted",
    ]


def test_inside_the_emulated_host_marks_go_to_the_events_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = tmp_path / "events"
    port.touch()
    monkeypatch.setenv(EVENTS_ENV, str(port))
    timeline = Timeline()
    timeline.enable()
    timeline.mark("init started")
    timeline.mark("workload exited")
    out = io.StringIO()
    timeline.report(out)  # the vmrun outside reports
    assert port.read_text() == "init started\nworkload exited\n"
    assert (timeline.marks(), out.getvalue()) == ([], "")


def test_the_process_age_counts_from_its_start() -> None:
    assert 0.0 < process_age() < 3600.0
