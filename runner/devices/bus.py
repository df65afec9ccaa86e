"""The I/O-port bus: which device answers a port, found once per exit.

Ports nobody decodes read as all ones (what an ISA bus floats to) and ignore writes, so a
guest probing for absent hardware finds nothing, quietly.
"""

from __future__ import annotations

import bisect
from typing import Protocol


class PortDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(ValueError):
    """Two devices claim the same port."""


class IoBus:
    def __init__(self) -> None:
        self._bases: list[int] = []
        self._ranges: list[tuple[int, int, PortDevice]] = []

    def insert(self, base: int, length: int, device: PortDevice) -> None:
        if length <= 0 or base < 0 or base + length > 0x10000:
            raise BusError(f"ports {base:#x}+{length} are outside the I/O space")
        at = bisect.bisect_left(self._bases, base)
        if at > 0:
            prev_base, prev_len, _ = self._ranges[at - 1]
            if prev_base + prev_len > base:
                raise BusError(f"ports {base:#x}+{length} overlap {prev_base:#x}+{prev_len}")
        if at < len(self._bases) and base + length > self._bases[at]:
            raise BusError(f"ports {base:#x}+{length} overlap {self._bases[at]:#x}")
        self._bases.insert(at, base)
        self._ranges.insert(at, (base, length, device))

    def _find(self, port: int) -> tuple[PortDevice, int] | None:
        at = bisect.bisect_right(self._bases, port) - 1
        if at >= 0:
            base, length, device = self._ranges[at]
            if port < base + length:
                return device, port - base
        return None

    def read(self, port: int, size: int) -> int:
        found = self._find(port)
        if found is None:
            return (1 << (8 * size)) - 1
        device, offset = found
        return device.read(offset, size)

    def write(self, port: int, size: int, value: int) -> None:
        found = self._find(port)
        if found is not None:
            device, offset = found
            device.write(offset, size, value)
