"""A 16550A UART, as much of it as Linux's 8250 driver uses.

Output goes to a sink as the guest writes it. Input arrives through `receive` (from
`serial_input.SerialInput`, which reads the host side) into a receive buffer the guest reads
through RBR, with "data ready" in LSR. Two interrupt conditions, so the tty layer's
interrupt-driven input and output flow: "received data available" while the buffer holds
bytes, and "transmitter empty" from each byte the guest sends (the transmitter empties at
once) until the guest reads IIR. IIR names the first by priority, as the chip does.

The chip's INTR output is a level, the OR of the enabled conditions; the COM port's ISA
line is edge-triggered, so an interrupt is raised when that level rises. A burst of bytes
written while "transmitter empty" is already signalled raises one interrupt, not one per
byte, as a 16550A's FIFO does: Linux's handler reads IIR until it says "none", which
lowers the level, so every later condition makes a fresh edge.

The receive buffer holds RX_CAPACITY bytes, more than the chip's 16-byte FIFO: the host side
waits for room instead of overrunning. It takes bytes, and shows them (LSR "data ready",
RBR), only while the guest has "data available" interrupts enabled. Linux reads RBR to
clear it several times while it probes and opens the port (autoconfig even enables every
interrupt for a moment to test IER, then start-up "clears the interrupt registers" twice
and once more "for luck"), and each read would drop a byte a real line had sent too early;
nothing typed before the port is open is lost here. The same rule is the tty layer's flow
control: a throttled port turns that interrupt off.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

# COM1..COM4: port base and ISA IRQ (the PC's fixed assignment; Linux probes these).
COM_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
PORT_COUNT = 8

RX_CAPACITY = 64

THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
RBR = THR  # reads of offset 0: the receive buffer
IER_RDI, IER_THRI = 0x01, 0x02
IIR_NONE, IIR_THRI, IIR_RDI, IIR_FIFO = 0x01, 0x02, 0x04, 0xC0
LCR_DLAB = 0x80
MCR_LOOP = 0x10
LSR_DR = 0x01
LSR_THRE_TEMT = 0x60  # the transmitter is always empty: output is written at once
MSR_IDLE = 0xB0  # DCD, DSR, CTS: a line that is up and ready


class Serial8250:
    def __init__(self, sink: BinaryIO | None, raise_irq: Callable[[], None]) -> None:
        self._sink = sink
        self._raise_irq = raise_irq
        self._regs = {IER: 0, LCR: 0x03, MCR: 0x08, SCR: 0}
        self._divisor = [0x0C, 0x00]  # 9600 baud
        self._fifo = False
        self._thri_pending = False
        self._intr = False  # the INTR output's level
        self._rx: deque[int] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # the receive buffer has room again

    def receive(self, data: bytes) -> int:
        """Bytes from the host side into the receive buffer: as many as fit (returned)."""
        with self._lock:
            taken = data[: self._rx_room()]
            self._rx.extend(taken)
            self._update_intr()
            return len(taken)

    def wait_for_room(self, timeout: float) -> bool:
        """Whether the receive buffer has room, waiting up to `timeout` seconds for it."""
        with self._room:
            return self._room.wait_for(lambda: self._rx_room() > 0, timeout)

    def _rx_room(self) -> int:
        return RX_CAPACITY - len(self._rx) if self._regs[IER] & IER_RDI else 0

    def read(self, offset: int, size: int) -> int:
        with self._lock:  # vCPU threads reach the UART concurrently
            value = self._read(offset)
            self._update_intr()
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._write(offset, value)
            self._update_intr()

    def _update_intr(self) -> None:
        level = self._receiving() or bool(self._thri_pending and self._regs[IER] & IER_THRI)
        if level and not self._intr:
            self._raise_irq()
        self._intr = level

    def _read(self, offset: int) -> int:
        dlab = self._regs[LCR] & LCR_DLAB
        if offset in (THR, IER) and dlab:
            return self._divisor[offset]
        if offset == RBR:
            return self._take_received()
        if offset == IIR:
            fifo = IIR_FIFO if self._fifo else 0
            if self._receiving():
                return IIR_RDI | fifo  # until the buffer is read empty
            if self._thri_pending and self._regs[IER] & IER_THRI:
                self._thri_pending = False  # reading IIR acknowledges THRE
                return IIR_THRI | fifo
            return IIR_NONE | fifo
        if offset == LSR:
            return LSR_THRE_TEMT | (LSR_DR if self._receiving() else 0)
        if offset == MSR:
            return self._loopback_msr() if self._regs[MCR] & MCR_LOOP else MSR_IDLE
        return self._regs.get(offset, 0)

    def _write(self, offset: int, value: int) -> None:
        value &= 0xFF
        dlab = self._regs[LCR] & LCR_DLAB
        if offset in (THR, IER) and dlab:
            self._divisor[offset] = value
        elif offset == THR:
            if not self._regs[MCR] & MCR_LOOP and self._sink is not None:
                self._sink.write(bytes((value,)))
                if value == 0x0A:
                    self._sink.flush()
            self._transmitter_empty()
        elif offset == IER:
            self._regs[IER] = value & 0x0F
            if value & IER_RDI:
                self._room.notify_all()
            self._transmitter_empty()
        elif offset == IIR:  # FCR
            self._fifo = bool(value & 0x01)
        elif offset in (LCR, MCR, SCR):
            self._regs[offset] = value

    def _receiving(self) -> bool:
        return bool(self._rx and self._regs[IER] & IER_RDI)

    def _take_received(self) -> int:
        if not self._receiving():
            return 0
        byte = self._rx.popleft()
        self._room.notify_all()
        return byte

    def _transmitter_empty(self) -> None:
        if self._regs[IER] & IER_THRI:
            self._thri_pending = True

    def _loopback_msr(self) -> int:
        # In loopback the modem inputs mirror the outputs (Linux's autoconfig checks this):
        # DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        mcr = self._regs[MCR]
        return ((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()
