"""Legacy devices on the I/O-port bus, driven as Linux drives them."""

from __future__ import annotations

import io
import time

import pytest

from runner.devices.bus import BusError, IoBus
from runner.devices.legacy.cmos import Cmos
from runner.devices.legacy.guest_ports import DebugPort, ExitPort
from runner.devices.legacy.i8042 import I8042
from runner.devices.legacy.pci_absent import PciAbsent
from runner.devices.legacy.serial import COM_PORTS, Serial8250


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_bus_dispatches_by_port_and_floats_elsewhere() -> None:
    bus, dev = IoBus(), Recorder()
    bus.insert(0x3F8, 8, dev)
    assert bus.read(0x3FD, 1) == 5
    bus.write(0x3F8, 1, 0x41)
    assert dev.writes == [(0, 1, 0x41)]
    assert bus.read(0x3F7, 1) == 0xFF
    assert bus.read(0x400, 2) == 0xFFFF
    assert bus.read(0x1234, 4) == 0xFFFFFFFF
    bus.write(0x400, 1, 1)  # nobody there: ignored


@pytest.mark.parametrize(("base", "length"), [(0x3FF, 1), (0x3F0, 9), (0x3F7, 2), (0x3F8, 8)])
def test_bus_refuses_overlaps(base: int, length: int) -> None:
    bus = IoBus()
    bus.insert(0x3F8, 8, Recorder())
    with pytest.raises(BusError):
        bus.insert(base, length, Recorder())


def test_serial_writes_output_and_flushes_lines() -> None:
    sink = io.BytesIO()
    uart = Serial8250(sink, lambda: None)
    for byte in b"hi\n":
        uart.write(0, 1, byte)
    assert sink.getvalue() == b"hi\n"
    assert uart.read(5, 1) == 0x60  # THRE | TEMT


def test_serial_passes_linux_autoconfig() -> None:
    uart = Serial8250(io.BytesIO(), lambda: None)
    uart.write(7, 1, 0xA5)
    assert uart.read(7, 1) == 0xA5  # scratch register
    uart.write(4, 1, 0x10 | 0x0A)  # loopback, RTS, OUT2
    assert uart.read(6, 1) & 0xF0 == 0x90  # CTS and DCD mirror RTS and OUT2
    uart.write(4, 1, 0x10 | 0x1F)
    assert uart.read(6, 1) & 0xF0 == 0xF0
    uart.write(2, 1, 0x01)  # enable the FIFOs
    assert uart.read(2, 1) & 0xC0 == 0xC0  # a 16550A


def test_serial_loopback_output_stays_inside() -> None:
    sink = io.BytesIO()
    uart = Serial8250(sink, lambda: None)
    uart.write(4, 1, 0x10)
    uart.write(0, 1, ord("x"))
    assert sink.getvalue() == b""


def test_serial_divisor_latch() -> None:
    uart = Serial8250(io.BytesIO(), lambda: None)
    uart.write(3, 1, 0x80)
    uart.write(0, 1, 0x01)
    uart.write(1, 1, 0x00)
    assert (uart.read(0, 1), uart.read(1, 1)) == (1, 0)
    uart.write(3, 1, 0x03)
    assert uart.read(1, 1) == 0  # IER again, still 0


def test_serial_transmit_interrupt() -> None:
    raised: list[int] = []
    uart = Serial8250(io.BytesIO(), lambda: raised.append(1))
    uart.write(0, 1, 0x41)
    assert raised == []  # THRI not enabled
    uart.write(1, 1, 0x02)
    assert raised == [1]
    assert uart.read(2, 1) == 0x02  # THRE pending ...
    assert uart.read(2, 1) == 0x01  # ... and acknowledged by the read
    uart.write(0, 1, 0x42)
    assert raised == [1, 1]


def test_serial_interrupt_is_an_edge_of_the_intr_level() -> None:
    # A burst written while "transmitter empty" is signalled is one interrupt, as a FIFO's;
    # reading IIR until it says "none" lowers the level, and the next byte raises it anew.
    raised: list[int] = []
    uart = Serial8250(io.BytesIO(), lambda: raised.append(1))
    uart.write(1, 1, 0x02)
    for byte in b"sixteen bytes..":
        uart.write(0, 1, byte)
    assert raised == [1]
    assert uart.read(2, 1) == 0x02
    assert uart.read(2, 1) == 0x01
    uart.write(0, 1, 0x41)
    assert raised == [1, 1]
    uart.write(1, 1, 0x00)  # disabling the interrupt lowers the level ...
    uart.write(1, 1, 0x02)  # ... and enabling it with the transmitter empty raises it
    assert raised == [1, 1, 1]


def test_com_ports_are_the_pc_ones() -> None:
    assert COM_PORTS == ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))


def test_i8042_reset_ends_the_vm() -> None:
    resets: list[bool] = []
    kbd = I8042(lambda: resets.append(True))
    kbd.write(0, 1, 0xFE)  # the data port: not a command
    assert resets == []
    kbd.write(4, 1, 0xFE)
    assert resets == [True]


def test_i8042_command_byte_and_self_test() -> None:
    kbd = I8042(lambda: None)
    assert kbd.read(4, 1) == 0x04  # nothing to read
    kbd.write(4, 1, 0x20)
    assert kbd.read(4, 1) == 0x05  # output full
    assert kbd.read(0, 1) == 0x30
    assert kbd.read(4, 1) == 0x04
    kbd.write(4, 1, 0x60)
    kbd.write(0, 1, 0x47)
    kbd.write(4, 1, 0x20)
    assert kbd.read(0, 1) == 0x47
    kbd.write(4, 1, 0xAA)
    assert kbd.read(0, 1) == 0x55


def test_cmos_clock_in_bcd() -> None:
    when = time.mktime((2026, 11, 24, 16, 7, 9, 0, 0, 0)) - time.timezone
    cmos = Cmos(512 << 20, 0, now=lambda: when)
    fields = {}
    for index in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32, 0x0B, 0x0D):
        cmos.write(0, 1, index)
        fields[index] = cmos.read(1, 1)
    assert fields == {
        0x00: 0x09, 0x02: 0x07, 0x04: 0x16, 0x07: 0x24, 0x08: 0x11, 0x09: 0x26,
        0x32: 0x20, 0x0B: 0x02, 0x0D: 0x80,
    }  # fmt: skip


def test_cmos_memory_sizes() -> None:
    cmos = Cmos(3 << 30, 5 << 30)
    values = {}
    for index in (0x34, 0x35, 0x5B, 0x5C, 0x5D):
        cmos.write(0, 1, index)
        values[index] = cmos.read(1, 1)
    above_16m = ((3 << 30) - (16 << 20)) // 65536
    assert values[0x34] | values[0x35] << 8 == above_16m
    assert values[0x5B] | values[0x5C] << 8 | values[0x5D] << 16 == (5 << 30) // 65536


def test_exit_port_takes_only_the_magic() -> None:
    reported: list[int] = []
    port = ExitPort(reported.append)
    port.write(0, 1, 0x2A)
    port.write(0, 4, 0x002A)
    port.write(0, 4, 0x5600)
    port.write(0, 4, 0x562A)
    assert reported == [0, 42]


def test_debug_port_stamps_milestones_only() -> None:
    ticks = iter([1.0, 2.0])
    reported: list[str] = []
    port = DebugPort(reported.append, clock=lambda: next(ticks))
    port.write(0, 1, 0)  # the kernel's io delay
    port.write(0, 1, 1)
    port.write(0, 1, 6)
    port.write(0, 1, 7)
    assert port.stamps == {1: 1.0, 6: 2.0}
    assert reported == ["init started", "workload exited"]


def test_debug_port_keeps_each_milestone_once() -> None:
    # A hostile guest writing milestones in a loop must not grow the VMM's memory.
    port = DebugPort()
    for _ in range(100_000):
        port.write(0, 1, 5)
    port.write(0, 1, 1)
    assert list(port.stamps) == [5, 1]


def test_pci_config_space_has_no_device() -> None:
    pci = PciAbsent()
    pci.write(0, 4, 0x80000000)
    assert pci.read(0, 4) == 0x80000000
    assert pci.read(4, 4) == 0xFFFFFFFF
    assert pci.read(6, 2) == 0xFFFF
