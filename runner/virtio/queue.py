"""A split virtqueue, driven by the native engine (native/virtio/virtqueue.c).

The engine checks everything the guest wrote into a queue (DESIGN invariant 1); this class
only owns the C structures for it: the queue, the per-head in-flight array and one iovec array
for the chain being handled, all kept alive as long as the queue is. Device workers in C use
the same engine directly; Python devices (and the tests) use it through this class.

A queue points into guest memory: the GuestMemory must stay open while the queue is used
(the builder closes devices before memory, runner/kvm/memory.py). A call after it closed
raises GuestMemoryError here instead of touching unmapped memory; a native worker relies on
that order alone.
"""

from __future__ import annotations

import enum

import attrs

from runner.errors import VmrunError
from runner.kvm.memory import GuestMemory, GuestMemoryError
from runner.kvm.native import ffi, lib

MAX_SIZE = lib.VMRUN_VIRTQ_MAX_SIZE
# Buffers one chain may have (QEMU's VIRTQUEUE_MAX_SIZE): more is a broken queue.
MAX_SEGMENTS = 1024


class Direction(enum.IntFlag):
    """What a queue's device takes: buffers it reads, buffers it writes, or both."""

    READABLE = lib.VMRUN_VIRTQ_READABLE
    WRITABLE = lib.VMRUN_VIRTQ_WRITABLE
    # Opt-in: a chain whose buffers lie outside guest RAM is taken (they come as
    # OutsideRam) instead of breaking the queue; the device answers it with an error.
    KEEP_BAD_BUFFERS = lib.VMRUN_VIRTQ_KEEP_BAD_BUFFERS


class Feature(enum.IntEnum):
    """The transport feature bits the engine implements (bit numbers)."""

    INDIRECT_DESC = lib.VMRUN_VIRTIO_F_INDIRECT_DESC
    EVENT_IDX = lib.VMRUN_VIRTIO_F_EVENT_IDX
    VERSION_1 = lib.VMRUN_VIRTIO_F_VERSION_1


class QueueBroken(VmrunError):
    """The guest broke a rule of the queue; the device must be reset (DEVICE_NEEDS_RESET)."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"virtqueue: {error_text(code)}")


def error_text(code: int) -> str:
    return ffi.string(lib.vmrun_virtq_strerror(code)).decode()


@attrs.frozen
class OutsideRam:
    """A buffer the driver placed outside guest RAM (only under KEEP_BAD_BUFFERS): its length,
    never any bytes."""

    length: int

    def __len__(self) -> int:
        return self.length


@attrs.frozen
class Chain:
    """A chain taken from the queue: its head, and its buffers as (gpa-free) memoryviews
    (OutsideRam for one outside guest RAM, under KEEP_BAD_BUFFERS)."""

    head: int
    readable: tuple[memoryview | OutsideRam, ...]
    writable: tuple[memoryview | OutsideRam, ...]

    @property
    def outside(self) -> int:
        """Buffers outside guest RAM."""
        return sum(isinstance(b, OutsideRam) for b in (*self.readable, *self.writable))

    @property
    def readable_bytes(self) -> int:
        return sum(len(b) for b in self.readable)

    @property
    def writable_bytes(self) -> int:
        return sum(len(b) for b in self.writable)

    def read_all(self) -> bytes:
        assert not self.outside, "a chain with buffers outside RAM has no bytes to read"
        return b"".join(bytes(b) for b in self.readable)  # type: ignore[arg-type]

    def write(self, data: bytes) -> int:
        """Fill the writable buffers in order with `data`; the bytes written."""
        assert not self.outside, "a chain with buffers outside RAM cannot be written"
        done = 0
        for buffer in self.writable:
            assert isinstance(buffer, memoryview)
            if done >= len(data):
                break
            part = data[done : done + len(buffer)]
            buffer[: len(part)] = part
            done += len(part)
        return done


class Virtqueue:
    """Queue `size` of the rings at `desc`, `avail` and `used` (guest physical), with the
    negotiated `features`. Raises QueueBroken when the rings are not valid."""

    def __init__(
        self,
        memory: GuestMemory,
        size: int,
        desc: int,
        avail: int,
        used: int,
        features: int = 0,
        max_segments: int = MAX_SEGMENTS,
    ) -> None:
        self._memory = memory  # kept: the engine's pointers are into it
        regions, count = memory.native_regions
        self._q = ffi.new("struct vmrun_virtq *")
        # Out of range: 0, which the engine refuses with its own error (VMRUN_VIRTQ_E_SIZE).
        self._q.size = size if 0 <= size <= MAX_SIZE else 0
        self._q.desc_addr = desc
        self._q.avail_addr = avail
        self._q.used_addr = used
        self._q.features = features
        self._q.regions = regions
        self._q.region_count = count
        self._in_flight = ffi.new("uint64_t[]", max(1, min(size, MAX_SIZE)))
        self._iov = ffi.new("struct vmrun_iovec[]", max_segments)
        self._chain = ffi.new("struct vmrun_virtq_chain *")
        self._chain.iov = self._iov
        self._chain.capacity = max_segments
        error = lib.vmrun_virtq_setup(self._q, self._in_flight)
        if error:
            raise QueueBroken(error)

    @property
    def native(self) -> object:
        """The engine's `struct vmrun_virtq *`, for a native worker; valid while this lives."""
        return self._q

    @property
    def error(self) -> int:
        """0, or the code of the rule the guest broke."""
        return self._q.error

    @property
    def broken(self) -> bool:
        return self._q.error != 0

    def pop(self, directions: Direction = Direction.READABLE | Direction.WRITABLE) -> Chain | None:
        """The next chain, None when there is none; QueueBroken for a bad one."""
        self._check_memory()
        result = lib.vmrun_virtq_pop(self._q, self._chain, int(directions))
        if result < 0:
            raise QueueBroken(result)
        if result == 0:
            return None
        chain = self._chain
        views = tuple(
            OutsideRam(chain.iov[i].len)
            if chain.iov[i].base == ffi.NULL
            else memoryview(ffi.buffer(chain.iov[i].base, chain.iov[i].len))
            for i in range(chain.readable + chain.writable)
        )
        assert chain.outside == sum(isinstance(view, OutsideRam) for view in views)
        return Chain(chain.head, views[: chain.readable], views[chain.readable :])

    def push(self, head: int, written: int) -> None:
        """Give chain `head` back, with `written` bytes in its writable buffers."""
        self._check_memory()
        result = lib.vmrun_virtq_push(self._q, head, written)
        if result < 0:
            raise QueueBroken(result)

    def should_interrupt(self) -> bool:
        self._check_memory()
        return bool(lib.vmrun_virtq_should_interrupt(self._q))

    def notify(self, enable: bool) -> bool:
        """Ask for notifications or not; True when enabling found chains waiting."""
        self._check_memory()
        return bool(lib.vmrun_virtq_notify(self._q, int(enable)))

    def pending(self) -> int:
        self._check_memory()
        return lib.vmrun_virtq_pending(self._q)

    def _check_memory(self) -> None:
        if self._memory.closed:
            raise GuestMemoryError("the queue's guest memory is closed")
