"""Guest RAM: one memfd, one shared mapping per region, and THE checked accessor.

The guest is hostile (DESIGN invariant 1): every guest physical address and length that comes
from it is checked before use, here in `GuestMemory.read`/`write` for Python and in
`vmrun_guest_ptr` (native/kvm/vmrun_kvm.c) for C, with the same rule:

    a range [gpa, gpa + length) is valid when it lies entirely inside ONE region;
    a zero-length range still needs gpa inside a region;
    nothing wraps around 2**64, and no range spans two regions, even adjacent ones.

Anything else raises GuestMemoryError (Python) or gives NULL (C). Nothing else does guest
pointer arithmetic (STYLE 6).

Layout: the regions are laid one after another in a memfd (sealed against resizing, so the
host can never fault on a truncated file), and each is mapped MAP_SHARED at its own host
address. KVM gets one memory slot per region (`Vm.map_memory`); C code gets the table
`native_regions` (struct vmrun_guest_region[]), which `close` empties before unmapping.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
from collections.abc import Iterable, Sequence

import attrs

from runner.errors import VmrunError
from runner.kvm.native import Cdata, ffi, host_address

PAGE_SIZE = mmap.PAGESIZE
ADDRESS_LIMIT = 1 << 64  # guest physical addresses and lengths are u64


class GuestMemoryError(VmrunError):
    """A guest-memory range is out of bounds, or the memory could not be set up."""


@attrs.frozen
class Region:
    """Guest physical [guest_addr, guest_addr + size)."""

    guest_addr: int
    size: int

    @property
    def end(self) -> int:
        return self.guest_addr + self.size


def _checked_layout(regions: Iterable[Region | tuple[int, int]]) -> tuple[Region, ...]:
    layout = tuple(r if isinstance(r, Region) else Region(*r) for r in regions)
    if not layout:
        raise GuestMemoryError("guest memory needs at least one region")
    for r in layout:
        if r.size <= 0 or r.size % PAGE_SIZE or r.guest_addr < 0 or r.guest_addr % PAGE_SIZE:
            raise GuestMemoryError(
                f"region at {r.guest_addr:#x} of {r.size:#x} bytes: the start must be a "
                f"non-negative multiple of the page size ({PAGE_SIZE:#x}), the size a positive one"
            )
        if r.end > ADDRESS_LIMIT:
            raise GuestMemoryError(f"region at {r.guest_addr:#x} ends beyond 2**64")
    ordered = sorted(layout, key=lambda r: r.guest_addr)
    for before, after in itertools.pairwise(ordered):
        if after.guest_addr < before.end:
            raise GuestMemoryError(
                f"regions at {before.guest_addr:#x} and {after.guest_addr:#x} overlap"
            )
    return tuple(ordered)


def _ask_for_huge_pages(mapping: mmap.mmap) -> None:
    """Back guest RAM with 2 MiB pages where the host allows it, as QEMU asks for its RAM:
    KVM then maps the guest 2 MiB at a time, and a booting kernel's first touches of its
    memory take one fault per 2 MiB instead of one per 4 KiB (inside the emulated host, whose
    init allows huge shmem pages on request, the guest kernel's boot took 4 s less). A memfd
    gets them only where /sys/kernel/mm/transparent_hugepage/shmem_enabled is `advise` (or
    `always`); a host without transparent huge pages refuses the advice, and nothing changes."""
    with contextlib.suppress(OSError):
        mapping.madvise(mmap.MADV_HUGEPAGE)


class GuestMemory:
    """Guest RAM made of `regions` (Region or (guest_addr, size)), zero-filled.

    A context manager: leaving it unmaps the RAM and closes the memfd. Close it after the Vm
    that maps it (KVM would otherwise find the slots' memory gone)."""

    def __init__(
        self, regions: Iterable[Region | tuple[int, int]], *, name: str = "vmrun-guest-ram"
    ) -> None:
        self._regions = _checked_layout(regions)
        self._maps: list[mmap.mmap] = []
        self._fd = -1
        try:
            self._fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(self._fd, sum(r.size for r in self._regions))
            fcntl.fcntl(
                self._fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL,
            )
            offset = 0
            for r in self._regions:
                self._maps.append(
                    mmap.mmap(
                        self._fd,
                        r.size,
                        flags=mmap.MAP_SHARED,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE,
                        offset=offset,
                    )
                )
                offset += r.size
            for mapping in self._maps:
                _ask_for_huge_pages(mapping)
        except OSError as exc:
            self.close()
            raise GuestMemoryError(f"cannot set up guest memory: {exc}") from exc
        self._hosts = tuple(host_address(m) for m in self._maps)
        self._table = ffi.new("struct vmrun_guest_region[]", len(self._regions))
        for entry, r, host in zip(self._table, self._regions, self._hosts, strict=True):
            entry.guest_addr = r.guest_addr
            entry.size = r.size
            entry.host = ffi.cast("uint8_t *", host)

    @classmethod
    def flat(cls, size: int) -> GuestMemory:
        """One region of `size` bytes at guest physical 0."""
        return cls([Region(0, size)])

    # ---- the layout -----------------------------------------------------------------------

    @property
    def regions(self) -> tuple[Region, ...]:
        """The regions, in guest-address order."""
        return self._regions

    @property
    def size(self) -> int:
        """Total bytes of RAM."""
        return sum(r.size for r in self._regions)

    def host_regions(self) -> Sequence[tuple[Region, int]]:
        """Each region with the host address it is mapped at (for KVM memory slots)."""
        self._check_open()
        return tuple(zip(self._regions, self._hosts, strict=True))

    @property
    def native_regions(self) -> tuple[Cdata, int]:
        """(struct vmrun_guest_region *, count) for vmrun_guest_ptr and other C code. The table
        belongs to this object; after `close` it lists no region."""
        return self._table, len(self._regions)

    def allocated_bytes(self) -> int:
        """Host memory the guest's RAM holds now: the memfd's allocated blocks (pages never
        touched, or given back by the balloon, hold none)."""
        self._check_open()
        return os.fstat(self._fd).st_blocks * 512

    # ---- THE checked accessor --------------------------------------------------------------

    def _locate(self, gpa: int, length: int) -> tuple[mmap.mmap, int]:
        if not 0 <= gpa < ADDRESS_LIMIT or not 0 <= length < ADDRESS_LIMIT:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is not a u64 range")
        for index, r in enumerate(self._regions):
            if r.guest_addr <= gpa < r.end:
                offset = gpa - r.guest_addr
                if length > r.size - offset:
                    raise GuestMemoryError(
                        f"guest range {gpa:#x}+{length:#x} runs past the end of RAM region "
                        f"{r.guest_addr:#x}..{r.end:#x}"
                    )
                self._check_open()
                return self._maps[index], offset
        raise GuestMemoryError(f"guest address {gpa:#x} is not in guest RAM")

    def read(self, gpa: int, length: int) -> bytes:
        """The `length` bytes at guest physical `gpa`; GuestMemoryError if any is outside RAM."""
        mapping, offset = self._locate(gpa, length)
        return mapping[offset : offset + length]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Store `data` at guest physical `gpa`; GuestMemoryError (and nothing written) if any
        byte would fall outside RAM."""
        view = memoryview(data).cast("B")
        mapping, offset = self._locate(gpa, view.nbytes)
        mapping[offset : offset + view.nbytes] = view

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _check_open(self) -> None:
        if self._fd < 0:
            raise GuestMemoryError("guest memory is closed")

    def close(self) -> None:
        """Unmap the RAM and close the memfd; idempotent."""
        table = getattr(self, "_table", None)
        if table is not None:
            for entry in table:  # C code that still holds the table now finds no RAM
                entry.size = 0
                entry.host = ffi.NULL
        for mapping in self._maps:
            mapping.close()
        self._maps = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        spans = ", ".join(f"{r.guest_addr:#x}..{r.end:#x}" for r in self._regions)
        return f"GuestMemory({spans}{', closed' if self.closed else ''})"
