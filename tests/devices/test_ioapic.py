"""The user-space I/O APIC, driven through its MMIO window as Linux drives it, with a sink
that records the MSIs and GSI routes it would hand to KVM."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from runner.devices.ioapic import IOREGSEL, IOWIN, IoApic, msi_message


class Sink:
    def __init__(self) -> None:
        self.msis: list[tuple[int, int]] = []
        self.routes: list[tuple[tuple[int, int, int], ...]] = []

    def signal_msi(self, address: int, data: int) -> int:
        self.msis.append((address, data))
        return 1

    def set_gsi_routing(self, routes: Sequence[tuple[int, int, int]]) -> None:
        self.routes.append(tuple(routes))


def write_reg(ioapic: IoApic, index: int, value: int) -> None:
    ioapic.write(IOREGSEL, 4, index)
    ioapic.write(IOWIN, 4, value)


def read_reg(ioapic: IoApic, index: int) -> int:
    ioapic.write(IOREGSEL, 4, index)
    return ioapic.read(IOWIN, 4)


def program(ioapic: IoApic, pin: int, low: int, high: int = 0) -> None:
    """As Linux writes an entry: the high half (destination) first, then the low half."""
    write_reg(ioapic, 0x11 + 2 * pin, high)
    write_reg(ioapic, 0x10 + 2 * pin, low)


def make(apic_id: int = 2) -> tuple[IoApic, Sink]:
    sink = Sink()
    return IoApic(sink, apic_id), sink


EDGE_0X30 = 0x30  # vector 0x30, fixed, physical, active high, edge, unmasked
LEVEL_0X41 = 0x41 | 1 << 15  # vector 0x41, fixed, physical, level, unmasked
MASK = 1 << 16
REMOTE_IRR = 1 << 14


# ---- registers ------------------------------------------------------------------------------


def test_id_version_and_arbitration_registers() -> None:
    ioapic, _ = make(apic_id=2)
    assert read_reg(ioapic, 0x00) == 0x0200_0000  # ID in bits 24-27
    assert read_reg(ioapic, 0x01) == 0x0017_0011  # 24 entries (max 23), version 0x11
    assert read_reg(ioapic, 0x02) == 0x0200_0000  # ARB starts as the ID
    write_reg(ioapic, 0x00, 0x0500_0000)
    assert read_reg(ioapic, 0x00) == read_reg(ioapic, 0x02) == 0x0500_0000  # ARB follows ID
    write_reg(ioapic, 0x01, 0xFFFF_FFFF)
    write_reg(ioapic, 0x02, 0x0F00_0000)
    assert read_reg(ioapic, 0x01) == 0x0017_0011  # read-only
    assert read_reg(ioapic, 0x02) == 0x0500_0000
    write_reg(ioapic, 0x00, 0xFF00_0000)
    assert read_reg(ioapic, 0x00) == 0x0F00_0000  # four bits of ID
    assert read_reg(ioapic, 0x03) == read_reg(ioapic, 0x40) == 0  # no such registers


def test_ioregsel_reads_back_and_widths() -> None:
    ioapic, _ = make()
    ioapic.write(IOREGSEL, 1, 0x01)
    assert ioapic.read(IOREGSEL, 4) == 0x01
    assert ioapic.read(IOWIN, 4) == 0x0017_0011
    assert ioapic.read(IOWIN + 2, 1) == 0x17  # one byte of the window
    assert ioapic.read(IOWIN, 2) == 0x0011
    assert ioapic.read(0x20, 4) == 0  # nothing else in the page
    assert ioapic.read(IOWIN + 2, 4) == 0  # across the register's end


def test_redirection_entries_reset_masked_and_read_back() -> None:
    ioapic, sink = make()
    for pin in range(24):
        assert read_reg(ioapic, 0x10 + 2 * pin) == MASK
        assert read_reg(ioapic, 0x11 + 2 * pin) == 0
    # vector 0x31, lowest priority, logical, active low, level; destination 3
    program(ioapic, 23, 0xA931 | 1 << 12 | REMOTE_IRR, 0x0300_0000)
    assert read_reg(ioapic, 0x10 + 46) == 0xA931  # delivery status and Remote IRR read-only
    assert read_reg(ioapic, 0x11 + 46) == 0x0300_0000
    assert sink.msis == []  # programming sends nothing
    ioapic.write(IOREGSEL, 4, 0x10 + 46)
    ioapic.write(IOWIN + 2, 1, 0x01)  # a byte write: set the mask bit only
    assert read_reg(ioapic, 0x10 + 46) == 0xA931 | MASK


@pytest.mark.parametrize(
    ("entry", "address", "data"),
    [
        (0x30 | 1 << 56, 0xFEE0_1000, 0x0030),  # fixed, physical APIC 1, edge
        (0x41 | 1 << 8 | 1 << 11 | 1 << 15 | 0x0F << 56, 0xFEE0_F004, 0xC141),  # lowest, logical
        (0x02 | 4 << 8 | 0xFE << 56, 0xFEEF_E000, 0x0402),  # NMI to APIC 0xfe
        (0x30 | 1 << 13 | MASK, 0xFEE0_0000, 0x0030),  # polarity and mask are not in the message
    ],
)
def test_msi_message(entry: int, address: int, data: int) -> None:
    assert msi_message(entry) == (address, data)


# ---- interrupts -----------------------------------------------------------------------------


def test_an_edge_sends_one_message_unless_masked() -> None:
    ioapic, sink = make()
    ioapic.raise_edge(4)
    assert sink.msis == []  # masked since reset: the edge is lost
    program(ioapic, 4, EDGE_0X30, 0x0100_0000)
    assert sink.routes == [((4, 0xFEE0_1000, 0x30),)]  # the unmasked entry is routed
    ioapic.raise_edge(4)
    ioapic.raise_edge(4)
    assert sink.msis == [(0xFEE0_1000, 0x30)] * 2
    program(ioapic, 4, EDGE_0X30 | MASK, 0x0100_0000)
    assert sink.routes[-1] == ()
    ioapic.raise_edge(4)
    assert len(sink.msis) == 2
    program(ioapic, 4, EDGE_0X30, 0x0100_0000)
    assert len(sink.msis) == 2  # the lost edge stays lost


def test_edge_lines_send_on_rising_edges_only() -> None:
    ioapic, sink = make()
    program(ioapic, 9, EDGE_0X30)
    ioapic.set_level(9, True)
    ioapic.set_level(9, True)
    assert len(sink.msis) == 1
    ioapic.set_level(9, False)
    ioapic.set_level(9, True)
    assert len(sink.msis) == 2


def test_level_line_waits_for_its_eoi() -> None:
    ioapic, sink = make()
    program(ioapic, 5, LEVEL_0X41)
    # Level routes carry the trigger bit: KVM then reports the vector's EOI.
    assert sink.routes == [((5, 0xFEE0_0000, 0xC041),)]
    ioapic.set_level(5, True)
    assert sink.msis == [(0xFEE0_0000, 0xC041)]
    assert read_reg(ioapic, 0x10 + 10) == LEVEL_0X41 | REMOTE_IRR
    ioapic.set_level(5, True)  # still in service: nothing more
    ioapic.end_of_interrupt(0x42)  # another vector's EOI
    assert len(sink.msis) == 1
    ioapic.end_of_interrupt(0x41)  # the line is still up: it sends again
    assert len(sink.msis) == 2
    assert read_reg(ioapic, 0x10 + 10) & REMOTE_IRR
    ioapic.set_level(5, False)
    ioapic.end_of_interrupt(0x41)
    assert len(sink.msis) == 2
    assert read_reg(ioapic, 0x10 + 10) == LEVEL_0X41


def test_a_level_pulse_is_one_message_until_eoi() -> None:
    ioapic, sink = make()
    program(ioapic, 3, LEVEL_0X41)
    ioapic.raise_edge(3)
    ioapic.raise_edge(3)
    assert len(sink.msis) == 1
    ioapic.end_of_interrupt(0x41)  # the line is down after a pulse: nothing resent
    assert len(sink.msis) == 1
    ioapic.raise_edge(3)
    assert len(sink.msis) == 2


def test_unmasking_an_asserted_level_line_sends() -> None:
    ioapic, sink = make()
    program(ioapic, 7, LEVEL_0X41 | MASK)
    ioapic.set_level(7, True)
    assert sink.msis == []
    program(ioapic, 7, LEVEL_0X41)
    assert sink.msis == [(0xFEE0_0000, 0xC041)]


def test_a_masked_entry_keeps_its_route_until_its_eoi() -> None:
    ioapic, sink = make()
    program(ioapic, 5, LEVEL_0X41)
    ioapic.set_level(5, True)
    program(ioapic, 5, LEVEL_0X41 | MASK)  # masked while in service
    assert sink.routes[-1] == ((5, 0xFEE0_0000, 0xC041),)
    ioapic.set_level(5, False)
    ioapic.end_of_interrupt(0x41)
    assert sink.routes[-1] == ()
    assert len(sink.msis) == 1


def test_switching_to_edge_clears_remote_irr() -> None:
    # Linux's way to unstick a level entry on an I/O APIC without an EOI register.
    ioapic, sink = make()
    program(ioapic, 5, LEVEL_0X41)
    ioapic.set_level(5, True)
    write_reg(ioapic, 0x10 + 10, 0x41 | MASK)
    assert not read_reg(ioapic, 0x10 + 10) & REMOTE_IRR
    write_reg(ioapic, 0x10 + 10, LEVEL_0X41)  # back to level, unmasked: the line is still up
    assert len(sink.msis) == 2


def test_routes_are_set_only_when_they_change() -> None:
    ioapic, sink = make()
    program(ioapic, 4, EDGE_0X30)  # the high half (unchanged, masked) sets nothing
    program(ioapic, 4, EDGE_0X30)
    program(ioapic, 6, EDGE_0X30 | 1, 0x0100_0000)
    assert sink.routes == [
        ((4, 0xFEE0_0000, 0x30),),
        ((4, 0xFEE0_0000, 0x30), (6, 0xFEE0_1000, 0x31)),
    ]


def test_pins_out_of_range_are_a_bug() -> None:
    ioapic, _ = make()
    with pytest.raises(ValueError, match=r"pins 0\.\.23, not 24"):
        ioapic.raise_edge(24)
    with pytest.raises(ValueError):
        ioapic.set_level(-1, True)


def test_concurrent_edges_all_arrive() -> None:
    ioapic, sink = make()
    for pin in range(4):
        program(ioapic, pin, EDGE_0X30 + pin)

    def pulses(pin: int) -> None:
        for _ in range(500):
            ioapic.raise_edge(pin)
            ioapic.end_of_interrupt(0x30 + pin)  # EOIs from vCPU threads meanwhile

    threads = [threading.Thread(target=pulses, args=(pin,)) for pin in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for pin in range(4):
        assert sink.msis.count((0xFEE0_0000, 0x30 + pin)) == 500
