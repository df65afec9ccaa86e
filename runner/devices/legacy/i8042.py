"""The i8042 keyboard controller: only what a microVM needs from it, the reset line.

Linux reboots with `reboot=k` by writing 0xfe (pulse reset) to the command port; vmrun
ends the VM there. Everything else reads as an idle controller with no keyboard data.
"""

from __future__ import annotations

from collections.abc import Callable

DATA_PORT = 0x60
COMMAND_PORT = 0x64  # base 0x60: offsets 0 (data) and 4 (status/command)
PORT_SPAN = 5
CMD_PULSE_RESET = 0xFE
STATUS_IDLE = 0x00  # output buffer empty, input buffer empty


class I8042:
    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset

    def read(self, offset: int, size: int) -> int:
        return STATUS_IDLE

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == COMMAND_PORT - DATA_PORT and value & 0xFF == CMD_PULSE_RESET:
            self._reset()
