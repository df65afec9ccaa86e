"""The MMIO bus beside the I/O-port one (whose tests are in test_legacy.py)."""

from __future__ import annotations

import pytest

from runner.devices.bus import BusError, MmioBus


class Register:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0x1122_3344_5566_7788 >> (8 * offset)

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_mmio_bus_dispatches_and_reads_zeros_elsewhere() -> None:
    bus, dev = MmioBus(), Register()
    bus.insert(0xFEC0_0000, 0x1000, dev)
    assert bus.read(0xFEC0_0000, 4) == 0x5566_7788  # cut to the access's size
    assert bus.read(0xFEC0_0002, 1) == 0x66
    bus.write(0xFEC0_0010, 4, 0xDEAD)
    assert dev.writes == [(0x10, 4, 0xDEAD)]
    assert bus.read(0xFEBF_FFFF, 1) == 0  # nobody there
    assert bus.read(0xFEC0_1000, 8) == 0
    bus.write(0xD000_0000, 4, 1)  # ignored


def test_mmio_bus_refuses_overlaps_and_the_impossible() -> None:
    bus = MmioBus()
    bus.insert(0xFEC0_0000, 0x1000, Register())
    with pytest.raises(BusError, match="overlap"):
        bus.insert(0xFEC0_0800, 0x1000, Register())
    with pytest.raises(BusError, match="outside"):
        bus.insert(1 << 64, 1, Register())
    bus.insert(0xFEC0_1000, 0x1000, Register())  # adjacent is fine
