"""CMOS RAM and its real-time clock (ports 0x70/0x71), enough for Linux: the wall-clock time
at boot (in BCD, 24-hour), the status registers saying the clock is valid and not updating,
and the memory-size bytes firmware would fill in."""

from __future__ import annotations

import time
from collections.abc import Callable

PORT, PORT_COUNT = 0x70, 2  # as on a PC; its interrupt is the RTC's, ISA IRQ 8
INDEX, DATA = 0, 1
SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, STATUS_C, STATUS_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
STATUS_B_24H = 0x02  # BCD (bit 2 clear), 24-hour mode
STATUS_D_VALID = 0x80  # RAM and time valid
MIB, GIB = 1 << 20, 1 << 30


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


class Cmos:
    def __init__(
        self, mem_below_4g: int, mem_above_4g: int, now: Callable[[], float] = time.time
    ) -> None:
        self._index = 0
        self._now = now
        self._ram = bytearray(128)
        self._ram[STATUS_A] = 0x26  # 32.768 kHz divider, 1024 Hz rate; never "update in progress"
        self._ram[STATUS_B] = STATUS_B_24H
        self._ram[STATUS_D] = STATUS_D_VALID
        # Memory above 16 MiB in 64 KiB units (0x34/0x35) and above 4 GiB (0x5b..0x5d),
        # as SeaBIOS reports them.
        above_16m = max(0, min(mem_below_4g, 0xFFFF * 64 * 1024 + 16 * MIB) - 16 * MIB) // (
            64 * 1024
        )
        self._ram[0x34], self._ram[0x35] = above_16m & 0xFF, above_16m >> 8
        high = mem_above_4g // (64 * 1024)
        self._ram[0x5B], self._ram[0x5C], self._ram[0x5D] = (
            high & 0xFF,
            (high >> 8) & 0xFF,
            (high >> 16) & 0xFF,
        )

    def read(self, offset: int, size: int) -> int:
        if offset != DATA:
            return 0xFF
        index = self._index & 0x7F
        t = time.gmtime(self._now())
        clock = {
            SECONDS: t.tm_sec, MINUTES: t.tm_min, HOURS: t.tm_hour, WEEKDAY: t.tm_wday + 1,
            DAY: t.tm_mday, MONTH: t.tm_mon, YEAR: t.tm_year % 100, CENTURY: t.tm_year // 100,
        }  # fmt: skip
        if index in clock:
            return _bcd(clock[index])
        if index == STATUS_C:
            return 0  # no interrupt flags
        return self._ram[index]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == INDEX:
            self._index = value & 0xFF  # bit 7 is the NMI mask: ignored
        elif self._index & 0x7F not in (STATUS_A, STATUS_C, STATUS_D):
            self._ram[self._index & 0x7F] = value & 0xFF
