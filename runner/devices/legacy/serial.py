"""A 16550A UART, as much of it as Linux's 8250 driver uses.

Output goes to a sink as the guest writes it; input is not wired yet (an `input` other than
`null` is refused by the builder). Interrupts: "transmitter empty" when the guest enables
it, raised on the COM port's ISA line, so the tty layer's interrupt-driven output flows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import BinaryIO

# COM1..COM4: port base and ISA IRQ (the PC's fixed assignment; Linux probes these).
COM_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
PORT_COUNT = 8

THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
IER_THRI = 0x02
IIR_NONE, IIR_THRI, IIR_FIFO = 0x01, 0x02, 0xC0
LCR_DLAB = 0x80
MCR_LOOP = 0x10
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
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> int:
        with self._lock:  # vCPU threads reach the UART concurrently
            return self._read(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._write(offset, value)

    def _read(self, offset: int) -> int:
        dlab = self._regs[LCR] & LCR_DLAB
        if offset in (THR, IER) and dlab:
            return self._divisor[offset]
        if offset == THR:
            return 0  # no input
        if offset == IIR:
            fifo = IIR_FIFO if self._fifo else 0
            if self._thri_pending:
                self._thri_pending = False  # reading IIR acknowledges THRE
                return IIR_THRI | fifo
            return IIR_NONE | fifo
        if offset == LSR:
            return LSR_THRE_TEMT
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
            self._transmitter_empty()
        elif offset == IIR:  # FCR
            self._fifo = bool(value & 0x01)
        elif offset in (LCR, MCR, SCR):
            self._regs[offset] = value

    def _transmitter_empty(self) -> None:
        if self._regs[IER] & IER_THRI:
            self._thri_pending = True
            self._raise_irq()

    def _loopback_msr(self) -> int:
        # In loopback the modem inputs mirror the outputs (Linux's autoconfig checks this):
        # DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        mcr = self._regs[MCR]
        return ((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()
