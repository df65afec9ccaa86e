"""The i8042 keyboard controller: what Linux's driver needs to find it, and the reset line.

Linux reads and writes the controller's command byte (CTR) while probing and reboots with
`reboot=k` by pulsing the reset line (command 0xfe); vmrun ends the VM there. There is no
keyboard: no key data ever arrives.
"""

from __future__ import annotations

from collections.abc import Callable

DATA_PORT = 0x60
COMMAND_PORT = 0x64  # base 0x60: offsets 0 (data) and 4 (status/command)
PORT_SPAN = 5
IRQ = 1  # the keyboard's ISA IRQ, as on a PC (the DSDT says so; no key ever raises it)
CMD_READ_CTR, CMD_WRITE_CTR = 0x20, 0x60
CMD_SELF_TEST, CMD_KBD_TEST = 0xAA, 0xAB
CMD_PULSE_RESET = 0xFE
SELF_TEST_OK, KBD_TEST_OK = 0x55, 0x00
STATUS_OUTPUT_FULL = 0x01
STATUS_SYSTEM = 0x04  # the self-test passed at power-on
CTR_DEFAULT = 0x30  # both ports' clocks disabled, no interrupts: an idle controller


class I8042:
    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self._ctr = CTR_DEFAULT
        self._output: int | None = None
        self._expect_ctr = False

    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND_PORT - DATA_PORT:
            return STATUS_SYSTEM | (STATUS_OUTPUT_FULL if self._output is not None else 0)
        value, self._output = self._output, None
        return 0 if value is None else value

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            if self._expect_ctr:
                self._ctr, self._expect_ctr = value, False
            return
        if offset != COMMAND_PORT - DATA_PORT:
            return
        if value == CMD_PULSE_RESET:
            self._reset()
        elif value == CMD_READ_CTR:
            self._output = self._ctr
        elif value == CMD_WRITE_CTR:
            self._expect_ctr = True
        elif value == CMD_SELF_TEST:
            self._output = SELF_TEST_OK
        elif value == CMD_KBD_TEST:
            self._output = KBD_TEST_OK
