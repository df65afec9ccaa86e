"""An 82093AA-style I/O APIC in user space, for KVM's split irqchip.

With KVM_CAP_SPLIT_IRQCHIP the local APICs stay in the kernel and the I/O APIC is vmrun's:
its MMIO window exits to user space, and an interrupt it lets through is sent to the local
APICs as the MSI the redirection entry describes (KVM_SIGNAL_MSI).

Facts (Intel 82093AA datasheet, 290566; Intel SDM vol. 3 10.11 "Message Signalled
Interrupts"; Linux arch/x86/kvm/irq_comm.c, lapic.c, Documentation/virt/kvm/api.rst):

- Two registers in the MMIO window: IOREGSEL (+0x00, 8 bits) picks an indirect register,
  IOWIN (+0x10, 32 bits) reads or writes it. Indirect registers: 0x00 ID (bits 24-27), 0x01
  VER (version 0x11 in bits 0-7, the highest redirection entry, 23, in bits 16-23), 0x02 ARB
  (the arbitration id in bits 24-27, read-only, loaded from the ID when the ID is written),
  0x10 + 2n and 0x11 + 2n the low and high halves of redirection entry n. Other indexes read
  as 0 and ignore writes.
- A redirection entry: vector (bits 0-7), delivery mode (8-10), destination mode (11: logical),
  delivery status (12, read-only: always idle here, a message goes out at once), polarity
  (13), Remote IRR (14, read-only), trigger mode (15: level), mask (16), destination (56-63).
  Reset: masked, everything else 0. Version 0x11 has no EOI register: Linux clears a stuck
  Remote IRR by switching the entry to edge and back, so switching to edge clears it here.
- The MSI for an entry: address 0xFEE00000 | destination << 12 | destination mode << 2; data
  vector | delivery mode << 8 | trigger mode << 15, with bit 14 (level assert) set for a
  level-triggered entry (the SDM ignores it for edge).
- Edge-triggered pins send one message per rising edge; an edge on a masked pin is lost
  (datasheet). Level-triggered pins send while the line is asserted, then set Remote IRR and
  send no more until the local APIC's EOI for that vector clears it; an asserted line sends
  again then, and on unmasking. Inputs are taken as asserted or not: polarity is the guest's
  description of the wire, and vmrun's devices raise their lines logically.
- KVM reports the EOI of a vector to user space (KVM_EXIT_IOAPIC_EOI) only if it is in the
  vCPU's ioapic_handled_vectors, which KVM fills by scanning the GSI routing table: MSI routes
  of GSIs below the split irqchip's pin count whose data says level-triggered and whose
  destination is that vCPU, or whose vector is in service there (kvm_scan_ioapic_routes,
  rescanned on every KVM_SET_GSI_ROUTING). So this I/O APIC keeps one MSI route per pin (GSI
  = pin) mirroring each entry that is unmasked or still waits for its EOI, as QEMU does;
  it never raises those GSIs itself.
- vCPU threads (MMIO, EOIs, device interrupts) and device threads call in concurrently: one
  lock covers the registers, the line states and the routes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

MMIO_SIZE = 0x1000  # the page at layout.IOAPIC_START that the guest maps
IOREGSEL, IOWIN = 0x00, 0x10

PINS = 24
VERSION = 0x11
REG_ID, REG_VER, REG_ARB, REG_REDTBL = 0x00, 0x01, 0x02, 0x10
VER_VALUE = (PINS - 1) << 16 | VERSION
ID_SHIFT, ID_MASK = 24, 0x0F

VECTOR_MASK = 0xFF
DELIVERY_MODE_SHIFT = 8
DELIVERY_MODE_MASK = 0x7
DEST_MODE_LOGICAL = 1 << 11
DELIVERY_STATUS = 1 << 12
POLARITY_LOW = 1 << 13
REMOTE_IRR = 1 << 14
TRIGGER_LEVEL = 1 << 15
MASKED = 1 << 16
DEST_SHIFT = 56
READ_ONLY = DELIVERY_STATUS | REMOTE_IRR
RESET_ENTRY = MASKED

MSI_ADDRESS_BASE = 0xFEE0_0000
MSI_DEST_SHIFT = 12
MSI_DEST_MODE_SHIFT = 2
MSI_DELIVERY_MODE_SHIFT = 8
MSI_LEVEL_ASSERT = 1 << 14
MSI_TRIGGER_LEVEL = 1 << 15


class MsiSink(Protocol):
    """Where the messages go: runner.kvm.vm.Vm in a VM, a recorder in tests."""

    def signal_msi(self, address: int, data: int) -> int: ...
    def set_gsi_routing(self, routes: Sequence[tuple[int, int, int]]) -> None: ...


def msi_message(entry: int) -> tuple[int, int]:
    """The MSI (address, data) that redirection entry `entry` sends."""
    dest = entry >> DEST_SHIFT & 0xFF
    address = (
        MSI_ADDRESS_BASE
        | dest << MSI_DEST_SHIFT
        | bool(entry & DEST_MODE_LOGICAL) << MSI_DEST_MODE_SHIFT
    )
    mode = entry >> DELIVERY_MODE_SHIFT & DELIVERY_MODE_MASK
    data = entry & VECTOR_MASK | mode << MSI_DELIVERY_MODE_SHIFT
    if entry & TRIGGER_LEVEL:
        data |= MSI_TRIGGER_LEVEL | MSI_LEVEL_ASSERT
    return address, data


class IoApic:
    """The I/O APIC at layout.IOAPIC_START: an MMIO device (read/write), interrupt inputs
    (raise_edge, set_level) and the EOI input (end_of_interrupt)."""

    def __init__(self, sink: MsiSink, apic_id: int = 0) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._select = 0
        self._id = apic_id & ID_MASK
        self._arb = self._id
        self._entries = [RESET_ENTRY] * PINS
        self._lines = 0  # bit n: input n is asserted (set_level)
        self._routes: tuple[tuple[int, int, int], ...] = ()  # as KVM has them: none at first

    # ---- the MMIO window ---------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        register, shift = offset & ~3, (offset & 3) * 8
        if shift + size * 8 > 32:
            return 0  # an access across two registers: nothing answers
        with self._lock:
            if register == IOREGSEL:
                value = self._select
            elif register == IOWIN:
                value = self._read_indirect(self._select)
            else:
                return 0
        return value >> shift & ((1 << size * 8) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        register, shift = offset & ~3, (offset & 3) * 8
        if shift + size * 8 > 32:
            return
        with self._lock:
            if register == IOREGSEL:
                if shift == 0:
                    self._select = value & 0xFF
            elif register == IOWIN:  # a narrow write changes only its bytes of the register
                mask = ((1 << size * 8) - 1) << shift
                old = self._read_indirect(self._select)
                self._write_indirect(self._select, old & ~mask | value << shift & mask)

    def _read_indirect(self, index: int) -> int:
        if index == REG_ID:
            return self._id << ID_SHIFT
        if index == REG_VER:
            return VER_VALUE
        if index == REG_ARB:
            return self._arb << ID_SHIFT
        pin, high = self._redirection(index)
        if pin is None:
            return 0
        return self._entries[pin] >> (32 if high else 0) & 0xFFFF_FFFF

    def _write_indirect(self, index: int, value: int) -> None:
        if index == REG_ID:
            self._id = self._arb = value >> ID_SHIFT & ID_MASK
            return
        pin, high = self._redirection(index)
        if pin is None:
            return  # VER, ARB and unknown registers are read-only
        old = self._entries[pin]
        half = 32 if high else 0
        entry = old & ~(0xFFFF_FFFF << half) | (value & 0xFFFF_FFFF) << half
        entry = entry & ~READ_ONLY | old & READ_ONLY
        if not entry & TRIGGER_LEVEL:
            entry &= ~REMOTE_IRR
        self._entries[pin] = entry
        self._sync_routes()
        self._service_level(pin)

    @staticmethod
    def _redirection(index: int) -> tuple[int | None, bool]:
        if REG_REDTBL <= index < REG_REDTBL + 2 * PINS:
            return (index - REG_REDTBL) // 2, bool(index & 1)
        return None, False

    # ---- interrupt inputs ----------------------------------------------------------------

    def raise_edge(self, pin: int) -> None:
        """A pulse on input `pin` (an ISA device's interrupt): one message unless masked, or,
        on a level-triggered entry, waiting for its EOI."""
        self._check(pin)
        with self._lock:
            entry = self._entries[pin]
            if entry & MASKED or entry & REMOTE_IRR:
                return
            self._send(pin)

    def set_level(self, pin: int, level: bool) -> None:
        """Input `pin` asserted (True) or not: an edge entry sends on assertion, a level entry
        while asserted (once per EOI)."""
        self._check(pin)
        bit = 1 << pin
        with self._lock:
            was = self._lines & bit
            self._lines = self._lines | bit if level else self._lines & ~bit
            entry = self._entries[pin]
            if not level or entry & MASKED:
                return
            if entry & TRIGGER_LEVEL:
                self._service_level(pin)
            elif not was:
                self._send(pin)

    def end_of_interrupt(self, vector: int) -> None:
        """A local APIC's EOI for `vector` (KVM_EXIT_IOAPIC_EOI): clears Remote IRR of the
        level entries with that vector, which send again if their line is still asserted."""
        with self._lock:
            cleared = False
            for pin, entry in enumerate(self._entries):
                if entry & REMOTE_IRR and entry & VECTOR_MASK == vector:
                    self._entries[pin] = entry & ~REMOTE_IRR
                    cleared = True
                    self._service_level(pin)
            if cleared:
                self._sync_routes()

    @staticmethod
    def _check(pin: int) -> None:
        if not 0 <= pin < PINS:
            raise ValueError(f"the I/O APIC has pins 0..{PINS - 1}, not {pin}")

    # ---- under the lock ------------------------------------------------------------------

    def _service_level(self, pin: int) -> None:
        """Send for a level entry whose line is asserted, if nothing holds it back."""
        entry = self._entries[pin]
        if entry & TRIGGER_LEVEL and self._lines >> pin & 1 and not entry & (MASKED | REMOTE_IRR):
            self._send(pin)

    def _send(self, pin: int) -> None:
        entry = self._entries[pin]
        if entry & TRIGGER_LEVEL:
            # Set whether or not a local APIC took it (as QEMU and KVM's own I/O APIC do): a
            # message no vCPU accepted is lost, and the guest reprograms a stuck entry.
            self._entries[pin] = entry | REMOTE_IRR
        self._sink.signal_msi(*msi_message(entry))

    def _sync_routes(self) -> None:
        """KVM's routing table mirrors the entries that can still need an EOI exit."""
        routes = tuple(
            (pin, *msi_message(entry))
            for pin, entry in enumerate(self._entries)
            if not entry & MASKED or entry & REMOTE_IRR
        )
        if routes != self._routes:
            self._sink.set_gsi_routing(routes)
            self._routes = routes
