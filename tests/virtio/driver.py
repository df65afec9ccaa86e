"""The driver's side of a split virtqueue (virtio 1.2, section 2.7), over a GuestMemory.

A test double (STYLE 14) and the oracle the engine's tests compare against: it is written from
the spec, not from native/virtio/virtqueue.c. `Driver` lays out and fills the rings as a guest
driver would (and, for hostile tests, writes whatever it is told); `reference_pop` says what a
device that keeps the engine's rules (native/virtio/virtqueue.h) must make of a chain.

Layout of a queue of `size` entries, every field little-endian:

    descriptor table  16 * size, 16-aligned  { le64 addr; le32 len; le16 flags; le16 next; }
    available ring    6 + 2 * size, 2-aligned  { le16 flags; le16 idx; le16 ring[size];
                                                 le16 used_event; }
    used ring         6 + 8 * size, 4-aligned  { le16 flags; le16 idx;
                                                 { le32 id; le32 len; } ring[size];
                                                 le16 avail_event; }
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from runner.kvm.memory import GuestMemory
from runner.kvm.native import ffi, lib

DESCRIPTOR = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED_ELEMENT = struct.Struct("<II")

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29

DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4
MAX_QUEUE_SIZE = 32768
U16_MOD = 1 << 16
U32_MAX = (1 << 32) - 1


def desc_table_bytes(size: int) -> int:
    return DESCRIPTOR.size * size


def avail_ring_bytes(size: int) -> int:
    return 6 + 2 * size


def used_ring_bytes(size: int) -> int:
    return 6 + USED_ELEMENT.size * size


def inside_ram(memory: GuestMemory, gpa: int, length: int) -> bool:
    """The guest-memory rule (runner/kvm/memory.py): [gpa, gpa + length) inside ONE region."""
    return any(r.guest_addr <= gpa < r.end and length <= r.end - gpa for r in memory.regions)


def guest_address(memory: GuestMemory, view: memoryview) -> int:
    """The guest address of a buffer the engine handed out, found from its host address;
    AssertionError unless all of it lies inside one region's mapping."""
    host = int(ffi.cast("uintptr_t", ffi.from_buffer(view)))
    for region, start in memory.host_regions():
        if start <= host < start + region.size:
            assert len(view) <= start + region.size - host, f"buffer runs past {region}"
            return region.guest_addr + host - start
    raise AssertionError(f"buffer at host {host:#x} is not in guest RAM")


class Buffer(NamedTuple):
    """One buffer of a chain, as the driver offers it."""

    gpa: int
    length: int
    writable: bool


class Rings(NamedTuple):
    """Guest physical addresses of the three parts of a queue."""

    desc: int
    avail: int
    used: int

    @classmethod
    def packed(cls, size: int, base: int) -> Rings:
        """The three parts one after another from `base` (16-aligned), each aligned."""
        desc = base
        avail = desc + desc_table_bytes(size)
        used = _align_up(avail + avail_ring_bytes(size), USED_ALIGN)
        return cls(desc, avail, used)


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


class Heap:
    """A bump allocator for buffers and indirect tables over guest ranges [start, end)."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        self._spans = [list(span) for span in spans]

    def alloc(self, length: int, align: int = 16) -> int:
        for span in self._spans:
            gpa = _align_up(span[0], align)
            if gpa + length <= span[1]:
                span[0] = gpa + length
                return gpa
        raise AssertionError(f"test heap: no room for {length} bytes")


class Driver:
    """The driver of queue `size` at `rings` in `memory`: zeroes the rings, then offers chains.

    Offering (`add_chain`, `offer`) writes the available ring's slots; `publish` is the separate
    store of avail idx that makes them visible, as in Linux's virtqueue_add / virtqueue_kick.
    """

    def __init__(
        self, memory: GuestMemory, size: int, rings: Rings, heap: Heap | None = None
    ) -> None:
        self.memory = memory
        self.size = size
        self.rings = rings
        self.heap = heap
        self.free = list(range(size))  # descriptors of the main table not in any chain
        self.owned: dict[int, list[int]] = {}  # head -> main-table descriptors of its chain
        self.next_avail = 0  # the driver's shadow of avail idx (u16, wraps)
        self.last_used = 0  # the next used-ring slot the driver will read
        memory.write(rings.desc, bytes(desc_table_bytes(size)))
        memory.write(rings.avail, bytes(avail_ring_bytes(size)))
        memory.write(rings.used, bytes(used_ring_bytes(size)))

    # ---- descriptors ------------------------------------------------------------------------

    def add_raw_descriptor(self, index: int, addr: int, length: int, flags: int, next: int) -> None:
        """Write entry `index` of the main descriptor table as it is (no checks: for hostile
        tests; `index` must still lie in the table)."""
        assert 0 <= index < self.size
        self.write_table_entry(self.rings.desc, index, addr, length, flags, next)

    def write_table_entry(
        self, table: int, index: int, addr: int, length: int, flags: int, next: int
    ) -> None:
        """Write entry `index` of the descriptor table at guest address `table`."""
        self.memory.write(
            table + DESCRIPTOR.size * index, DESCRIPTOR.pack(addr, length, flags, next)
        )

    def add_chain(
        self,
        buffers: Sequence[Buffer | tuple[int, int, bool]],
        indirect: bool = False,
        table: int | None = None,
    ) -> int:
        """Lay out a chain of `buffers` and offer it (not yet published); its head.

        Direct: one descriptor per buffer, from the free list. Indirect: one descriptor
        pointing at a table of them, at `table` or taken from the heap."""
        buffers = [Buffer(*b) for b in buffers]
        assert buffers, "a chain has at least one buffer"
        if indirect:
            if table is None:
                assert self.heap is not None, "an indirect chain needs a heap for its table"
                table = self.heap.alloc(DESCRIPTOR.size * len(buffers))
            self._write_links(table, list(range(len(buffers))), buffers)
            (head,) = self._take_descriptors(1)
            self.add_raw_descriptor(head, table, DESCRIPTOR.size * len(buffers), DESC_F_INDIRECT, 0)
        else:
            indexes = self._take_descriptors(len(buffers))
            self._write_links(self.rings.desc, indexes, buffers)
            head = indexes[0]
        self.offer(head)
        return head

    def _take_descriptors(self, count: int) -> list[int]:
        assert count <= len(self.free), f"{count} descriptors wanted, {len(self.free)} free"
        taken, self.free = self.free[:count], self.free[count:]
        self.owned[taken[0]] = taken
        return taken

    def _write_links(self, table: int, indexes: list[int], buffers: list[Buffer]) -> None:
        for position, (index, buffer) in enumerate(zip(indexes, buffers, strict=True)):
            last = position == len(indexes) - 1
            flags = (0 if last else DESC_F_NEXT) | (DESC_F_WRITE if buffer.writable else 0)
            next = 0 if last else indexes[position + 1]
            self.write_table_entry(table, index, buffer.gpa, buffer.length, flags, next)

    # ---- the available ring -----------------------------------------------------------------

    def offer(self, head: int) -> None:
        """Put `head` (any u16) into the next available-ring slot; `publish` makes it seen."""
        slot = self.next_avail % self.size
        self.memory.write(self.rings.avail + 4 + 2 * slot, U16.pack(head))
        self.next_avail = (self.next_avail + 1) % U16_MOD

    def publish(self, count: int | None = None) -> None:
        """Advance avail idx by `count` offered chains, or to every chain offered so far."""
        if count is None:
            self.set_avail_idx(self.next_avail)
        else:
            self.set_avail_idx((self.avail_idx + count) % U16_MOD)

    def set_avail_idx(self, value: int) -> None:
        """Store avail idx (taken modulo 2**16, as the field wraps)."""
        self.memory.write(self.rings.avail + 2, U16.pack(value % U16_MOD))

    @property
    def avail_idx(self) -> int:
        return U16.unpack(self.memory.read(self.rings.avail + 2, 2))[0]

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write(self.rings.avail, U16.pack(flags))

    def set_used_event(self, value: int) -> None:
        """The used index at which the driver wants an interrupt (EVENT_IDX)."""
        self.memory.write(self.rings.avail + 4 + 2 * self.size, U16.pack(value % U16_MOD))

    # ---- the used ring ----------------------------------------------------------------------

    @property
    def used_flags(self) -> int:
        return U16.unpack(self.memory.read(self.rings.used, 2))[0]

    @property
    def used_idx(self) -> int:
        return U16.unpack(self.memory.read(self.rings.used + 2, 2))[0]

    @property
    def avail_event(self) -> int:
        """The avail index at which the device wants a notification (EVENT_IDX)."""
        offset = 4 + USED_ELEMENT.size * self.size
        return U16.unpack(self.memory.read(self.rings.used + offset, 2))[0]

    def used_element(self, index: int) -> tuple[int, int]:
        """(id, len) of used-ring entry for used index `index` (taken modulo the size)."""
        slot = index % self.size
        return USED_ELEMENT.unpack(
            self.memory.read(self.rings.used + 4 + USED_ELEMENT.size * slot, USED_ELEMENT.size)
        )

    def take_used(self) -> list[tuple[int, int]]:
        """The (id, len) entries the device returned since the last call; their chains'
        descriptors go back to the free list."""
        entries = []
        while self.last_used != self.used_idx:
            entry = self.used_element(self.last_used)
            entries.append(entry)
            self.free.extend(self.owned.pop(entry[0], []))
            self.last_used = (self.last_used + 1) % U16_MOD
        return entries


# ---- what a device must make of a chain ----------------------------------------------------
# The engine's rules (native/virtio/virtqueue.h), written from the spec and that header's words:
# a chain is followed from its head; one indirect table at most (spec 2.7.5.3.1: negotiated, no
# F_NEXT on it, no indirect within a table, the table a whole number of descriptors, at most
# 32768 of them); no table walked for more entries than it holds (2.7.5.2: a chain is no
# longer than the queue size); every buffer non-empty and inside one region of RAM, in a
# direction the device takes, readable ones first (2.7.4.2); at most `max_segments` buffers
# and 4 GiB - 1 bytes in all. The F_WRITE flag of the descriptor naming an indirect table is
# ignored (2.7.5.3.2). With KEEP_BAD_BUFFERS among the directions, a buffer outside RAM
# breaks nothing: the chain is taken, that buffer reported at OUTSIDE (an indirect table
# outside RAM still breaks the queue: its chain cannot be read).

# Spec 2.7.5.3.2: "The device MUST handle the case of zero or more normal chained descriptors
# followed by a single descriptor with flags&VIRTQ_DESC_F_INDIRECT": an indirect descriptor
# may come after direct ones, as the chain's last.

# The engine's code for each rule: its interface, not its logic.
AVAIL_IDX = lib.VMRUN_VIRTQ_E_AVAIL_IDX
HEAD = lib.VMRUN_VIRTQ_E_HEAD
NEXT = lib.VMRUN_VIRTQ_E_NEXT
LOOP = lib.VMRUN_VIRTQ_E_LOOP
BUFFER = lib.VMRUN_VIRTQ_E_BUFFER
ZERO_LENGTH = lib.VMRUN_VIRTQ_E_ZERO_LENGTH
OVERLONG = lib.VMRUN_VIRTQ_E_OVERLONG
DIRECTION = lib.VMRUN_VIRTQ_E_DIRECTION
ORDER = lib.VMRUN_VIRTQ_E_ORDER
INDIRECT = lib.VMRUN_VIRTQ_E_INDIRECT
INDIRECT_NESTED = lib.VMRUN_VIRTQ_E_INDIRECT_NESTED
INDIRECT_TABLE = lib.VMRUN_VIRTQ_E_INDIRECT_TABLE
SEGMENTS = lib.VMRUN_VIRTQ_E_SEGMENTS
READABLE, WRITABLE = lib.VMRUN_VIRTQ_READABLE, lib.VMRUN_VIRTQ_WRITABLE
KEEP_BAD_BUFFERS = lib.VMRUN_VIRTQ_KEEP_BAD_BUFFERS
# The gpa a popped buffer outside guest RAM is reported with (the device gets no address).
OUTSIDE = -1


class Broken(NamedTuple):
    """The chain breaks the queue; `codes` are the rules its first bad descriptor breaks (the
    engine reports one of them: which one first is its own choice)."""

    codes: frozenset[int]


class Popped(NamedTuple):
    head: int
    buffers: tuple[Buffer, ...]


def reference_pop(
    memory: GuestMemory,
    size: int,
    rings: Rings,
    next_avail: int,
    in_flight: set[int],
    *,
    indirect_negotiated: bool,
    directions: int,
    max_segments: int,
) -> Popped | Broken | None:
    """What popping the chain at avail slot `next_avail` must give: the chain, a breakage, or
    None when the ring is empty. `in_flight` are heads popped and not yet pushed."""
    avail_idx = U16.unpack(memory.read(rings.avail + 2, 2))[0]
    waiting = (avail_idx - next_avail) % U16_MOD
    if waiting > size:
        return Broken(frozenset({AVAIL_IDX}))
    if waiting == 0:
        return None
    slot = next_avail % size
    head = U16.unpack(memory.read(rings.avail + 4 + 2 * slot, 2))[0]
    if head >= size or head in in_flight:
        return Broken(frozenset({HEAD}))

    table, table_size, index, steps, in_table = rings.desc, size, head, 0, False
    buffers: list[Buffer] = []
    while True:
        steps += 1
        if steps > table_size:
            return Broken(frozenset({LOOP}))
        addr, length, flags, next = DESCRIPTOR.unpack(
            memory.read(table + DESCRIPTOR.size * index, DESCRIPTOR.size)
        )
        wrong: set[int] = set()
        if flags & DESC_F_INDIRECT:
            if in_table:
                wrong.add(INDIRECT_NESTED)
            if not indirect_negotiated or flags & DESC_F_NEXT:
                wrong.add(INDIRECT)
            entries, rest = divmod(length, DESCRIPTOR.size)
            if entries == 0 or rest or entries > MAX_QUEUE_SIZE:
                wrong.add(INDIRECT_TABLE)
            elif not inside_ram(memory, addr, length):
                wrong.add(BUFFER)
            if wrong:
                return Broken(frozenset(wrong))
            table, table_size, index, steps, in_table = addr, entries, 0, 0, True
            continue
        writable = bool(flags & DESC_F_WRITE)
        if length == 0:
            wrong.add(ZERO_LENGTH)
        outside = not inside_ram(memory, addr, length)
        if outside and not directions & KEEP_BAD_BUFFERS:
            wrong.add(BUFFER)
        if not directions & (WRITABLE if writable else READABLE):
            wrong.add(DIRECTION)
        if not writable and any(b.writable for b in buffers):
            wrong.add(ORDER)
        if len(buffers) >= max_segments:
            wrong.add(SEGMENTS)
        if sum(b.length for b in buffers) + length > U32_MAX:
            wrong.add(OVERLONG)
        if flags & DESC_F_NEXT and next >= table_size:
            wrong.add(NEXT)
        if wrong:
            return Broken(frozenset(wrong))
        buffers.append(Buffer(OUTSIDE if outside else addr, length, writable))
        if not flags & DESC_F_NEXT:
            return Popped(head, tuple(buffers))
        index = next


def need_interrupt(used_event: int, new: int, old: int) -> bool:
    """EVENT_IDX (spec 2.7.10): the driver wants an interrupt when the used index passes
    `used_event`, i.e. when used_event lies among the indices [old, new) just published."""
    return (used_event - old) % U16_MOD < (new - old) % U16_MOD
