"""The ports vmrun's guest init writes (native/init/ports.h): its exit status, once, and its
boot milestones for the boot-time benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable

EXIT_PORT = 0xF4
EXIT_PORT_WIDTH = 4
EXIT_MAGIC = 0x5600
EXIT_MAGIC_MASK = 0xFF00
DEBUG_PORT = 0x80
MILESTONES = {
    1: "init started",
    2: "mounts done",
    3: "modules loaded",
    4: "root mounted",
    5: "workload started",
    6: "workload exited",
}


class ExitPort:
    """Accepts only a 4-byte write of EXIT_MAGIC | status; anything else is noise."""

    def __init__(self, report: Callable[[int], None]) -> None:
        self._report = report

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == EXIT_PORT_WIDTH and value & EXIT_MAGIC_MASK == EXIT_MAGIC:
            self._report(value & 0xFF)


class DebugPort:
    """Stamps each milestone the first time it is written, with the monotonic clock, and
    passes its name to `report` (the run's timeline); repeats and other values (io delays)
    are ignored, so a guest writing in a loop grows nothing."""

    def __init__(
        self,
        report: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report = report
        self._clock = clock
        self.stamps: dict[int, float] = {}

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 1 and value in MILESTONES and value not in self.stamps:
            self.stamps[value] = self._clock()
            self._report(MILESTONES[value])
