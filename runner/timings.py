"""`vmrun run --timings`: when each phase of a run ended, printed on stderr at the end.

One timeline per vmrun process, off unless `--timings` turns it on; `mark` is then a list
append, cheap enough for a vCPU thread. Through the emulated host, the vmrun inside sends
each mark as it happens, as a line on the host's `events` port (`EVENTS_ENV` names it), and
the vmrun outside stamps it on arrival: every time in the report is on the outer clock, so
the emulated host's own clock (which runs on QEMU's emulation) never enters it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import BinaryIO, TextIO

# Set for a vmrun inside the emulated host: the device its marks go to, one line each.
EVENTS_ENV = "VMRUN_TIMINGS_EVENTS"


def process_age() -> float:
    """Seconds since this process started (the kernel's start time of the process: the
    interpreter's own start-up counts too); 0.0 where /proc does not say."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


class Timeline:
    """Phase names with the time each ended, in seconds since the process started."""

    def __init__(self) -> None:
        self._start: float | None = None  # monotonic time of the process's start; None: off
        self._marks: list[tuple[str, float]] = []
        self._events: BinaryIO | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._start is not None

    def enable(self) -> None:
        """Start recording; inside the emulated host, marks go to its events port instead."""
        self._start = time.monotonic() - process_age()
        device = os.environ.get(EVENTS_ENV)
        if device:
            try:
                self._events = open(device, "wb", buffering=0)  # noqa: SIM115 (process-long)
            except OSError:
                self._events = None

    def mark(self, phase: str) -> None:
        """`phase` ended now; nothing when off."""
        if self._start is None:
            return
        now = time.monotonic()
        with self._lock:
            if self._events is not None:
                try:
                    self._events.write(phase.encode() + b"\n")
                except OSError:
                    self._events = None
                return
            self._marks.append((phase, now - self._start))

    def marks(self) -> list[tuple[str, float]]:
        with self._lock:
            return sorted(self._marks, key=lambda mark: mark[1])

    def report(self, stream: TextIO) -> None:
        """The table: each phase with when it ended and how long it took."""
        if self._start is None or self._events is not None:
            return  # off, or the vmrun outside reports
        lines = ["vmrun: timings (seconds since vmrun started; phase took)"]
        previous = 0.0
        for phase, at in self.marks():
            lines.append(f"  {at:7.2f}  {at - previous:6.2f}  {phase}")
            previous = at
        stream.write("\n".join(lines) + "\n")
        stream.flush()


TIMELINE = Timeline()


def mark(phase: str) -> None:
    TIMELINE.mark(phase)
