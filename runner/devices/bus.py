"""The buses: which device answers an I/O port or an MMIO address, found once per exit.

Ports nobody decodes read as all ones (what an ISA bus floats to) and ignore writes, so a
guest probing for absent hardware finds nothing, quietly. MMIO addresses nobody claims read
as zeros and ignore writes, as they did before any MMIO device existed here.
"""

from __future__ import annotations

import bisect
from typing import Protocol

from runner.errors import VmrunError


class BusDevice(Protocol):
    """A device on a bus: `offset` is from the start of the range it was inserted with."""

    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(VmrunError, ValueError):
    """Two devices claim the same address, or a range lies outside the bus's space."""


class Bus:
    """Non-overlapping ranges of one address space, each answered by a device."""

    def __init__(self, space_size: int, unclaimed_ones: bool, what: str) -> None:
        self._space_size = space_size
        self._unclaimed_ones = unclaimed_ones
        self._what = what  # "ports", "MMIO": for messages
        self._bases: list[int] = []
        self._ranges: list[tuple[int, int, BusDevice]] = []

    def insert(self, base: int, length: int, device: BusDevice) -> None:
        what = self._what
        if length <= 0 or base < 0 or base + length > self._space_size:
            raise BusError(f"{what} {base:#x}+{length} are outside the address space")
        at = bisect.bisect_left(self._bases, base)
        if at > 0:
            prev_base, prev_len, _ = self._ranges[at - 1]
            if prev_base + prev_len > base:
                raise BusError(f"{what} {base:#x}+{length} overlap {prev_base:#x}+{prev_len}")
        if at < len(self._bases) and base + length > self._bases[at]:
            raise BusError(f"{what} {base:#x}+{length} overlap {self._bases[at]:#x}")
        self._bases.insert(at, base)
        self._ranges.insert(at, (base, length, device))

    def _find(self, address: int) -> tuple[BusDevice, int] | None:
        at = bisect.bisect_right(self._bases, address) - 1
        if at >= 0:
            base, length, device = self._ranges[at]
            if address < base + length:
                return device, address - base
        return None

    def read(self, address: int, size: int) -> int:
        """The device's answer, cut to `size` bytes; all ones or zeros where nobody is."""
        mask = (1 << (8 * size)) - 1
        found = self._find(address)
        if found is None:
            return mask if self._unclaimed_ones else 0
        device, offset = found
        return device.read(offset, size) & mask

    def write(self, address: int, size: int, value: int) -> None:
        found = self._find(address)
        if found is not None:
            device, offset = found
            device.write(offset, size, value)


class IoBus(Bus):
    """The 64 KiB I/O-port space; absent ports float to all ones."""

    def __init__(self) -> None:
        super().__init__(0x10000, unclaimed_ones=True, what="ports")


class MmioBus(Bus):
    """Guest physical addresses that are not RAM and exit to user space (KVM_EXIT_MMIO);
    unclaimed ones read as zeros."""

    def __init__(self) -> None:
        super().__init__(1 << 64, unclaimed_ones=False, what="MMIO")
