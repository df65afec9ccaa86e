"""PCI configuration ports (0xcf8 address, 0xcfc data) answering "no device": every read of
the data port is all ones. The command line says pci=off; this keeps any probe quiet."""

from __future__ import annotations

CONFIG_ADDRESS = 0xCF8
PORT_SPAN = 8


class PciAbsent:
    def __init__(self) -> None:
        self._address = 0

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            return (
                self._address
                if size == 4
                else (self._address >> (8 * offset)) & ((1 << (8 * size)) - 1)
            )
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self._address = value & 0xFFFFFFFF
