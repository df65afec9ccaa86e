"""The guest's side of a virtio-blk device (virtio 1.2, 5.2.6), as a driver written from the
spec plays it over tests/virtio/driver.py and the transport's test Guest: a test double for
tests/virtio/test_blk.py (STYLE 14)."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from driver import Buffer, Driver, Heap, Rings
from test_mmio_transport import BASE, EVENT_IDX, INDIRECT, VERSION_1, FakeVm, Guest, wait_for

from runner.config.devices import BlockDevice
from runner.devices.virtio.blk import RawDisk, VirtioBlk
from runner.devices.virtio.interrupt import InterruptLine
from runner.devices.virtio.mmio import MmioTransport, Reg, Status
from runner.kvm.memory import GuestMemory

HEADER = struct.Struct("<IIQ")  # struct virtio_blk_req's head: type, reserved, sector
SEGMENT = struct.Struct("<QII")  # struct virtio_blk_discard_write_zeroes
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
FLAG_UNMAP = 1
OUTSIDE_RAM = 0x7000_0000  # far beyond the test's guest memory
HEAP_START = 0x10000


class Answer:
    """What the device returned for one chain."""

    def __init__(self, status: int | None, written: int, data: bytes) -> None:
        self.status, self.written, self.data = status, written, data

    def __repr__(self) -> str:
        return f"Answer(status={self.status}, written={self.written}, {len(self.data)} bytes)"


class BlkDevice:
    """A virtio-blk device over `config` behind its transport, and the guest's driver."""

    def __init__(self, memory: GuestMemory, config: BlockDevice) -> None:
        self.memory = memory
        self.disk = RawDisk(config)
        self.backend = VirtioBlk(config, self.disk)
        self.vm = FakeVm()
        self.irq = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        line = InterruptLine(self.irq, lambda: None)
        self.transport = MmioTransport(self.backend, memory, self.vm, BASE, line)  # type: ignore[arg-type]
        self.guest = Guest(self.transport, self.vm, line)  # type: ignore[arg-type]
        self.heap = Heap([(HEAP_START, memory.size)])
        self.queue: Driver | None = None
        # head -> (buffers, where the status byte is or None, data buffers the device writes)
        self.chains: dict[int, tuple[list[Buffer], int | None]] = {}

    def start(self, features: int | None = None) -> None:
        wanted = VERSION_1 | EVENT_IDX | INDIRECT | self.backend.features
        assert self.guest.negotiate(wanted if features is None else features) & Status.FEATURES_OK
        size = self.backend.queue_sizes[0]
        rings = Rings.packed(size, 0x1000)
        self.queue = Driver(self.memory, size, rings, self.heap)
        self.guest.set_up_queue(rings, size)
        self.guest.driver_ok()
        assert not self.broken

    @property
    def broken(self) -> bool:
        return bool(self.guest.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET)

    def config(self) -> bytes:
        return b"".join(
            self.transport.read(Reg.CONFIG + at, 4).to_bytes(4, "little") for at in range(0, 72, 4)
        )

    # ---- chains --------------------------------------------------------------------------

    def put(self, data: bytes, align: int = 16) -> int:
        gpa = self.heap.alloc(len(data), align)
        self.memory.write(gpa, data)
        return gpa

    def offer(
        self,
        buffers: Sequence[Buffer],
        status: int | None,
        kick: bool = True,
        indirect: bool = False,
    ) -> int:
        assert self.queue is not None
        head = self.queue.add_chain(list(buffers), indirect=indirect)
        self.chains[head] = (list(buffers), status)
        self.queue.publish()
        if kick:
            self.guest.notify()
        return head

    def request(
        self,
        type: int,
        sector: int = 0,
        out: bytes = b"",
        in_length: int = 0,
        *,
        pieces: int = 1,
        align: int = 16,
        kick: bool = True,
    ) -> int:
        """A well-formed chain: header, `out` (readable) or `in_length` bytes (writable) in
        `pieces` buffers at `align`, then the status byte; its head."""
        buffers = [Buffer(self.put(HEADER.pack(type, 0, sector)), HEADER.size, False)]
        length = len(out) or in_length
        step = -(-length // pieces) if length else 0
        for at in range(0, length, step or 1):
            part = min(step, length - at)
            if out:
                buffers.append(Buffer(self.put(out[at : at + part], align), part, False))
            else:
                buffers.append(Buffer(self.heap.alloc(part, align), part, True))
        status = self.heap.alloc(1, 1)
        self.memory.write(status, b"\xee")  # neither OK, IOERR nor UNSUPP until answered
        buffers.append(Buffer(status, 1, True))
        return self.offer(buffers, status, kick)

    def wait(self, count: int) -> dict[int, Answer]:
        """The next `count` chains returned: head -> answer."""
        queue = self.queue
        assert queue is not None
        wait_for(lambda: (queue.used_idx - queue.last_used) % 65536 >= count, "used chains")
        answers = {}
        for head, written in queue.take_used():
            buffers, status = self.chains.pop(head)
            data = b""
            for buffer in buffers:
                if buffer.writable and buffer.gpa != status and buffer.gpa < OUTSIDE_RAM:
                    data += self.memory.read(buffer.gpa, buffer.length)
            value = self.memory.read(status, 1)[0] if status is not None else None
            answers[head] = Answer(value, written, data)
        return answers

    def do(self, type: int, sector: int = 0, out: bytes = b"", in_length: int = 0, **kw) -> Answer:
        """One request, waited for."""
        head = self.request(type, sector, out, in_length, **kw)
        return self.wait(1)[head]

    def read(self, sector: int, length: int, **kw) -> Answer:
        return self.do(T_IN, sector, in_length=length, **kw)

    def write(self, sector: int, data: bytes, **kw) -> Answer:
        return self.do(T_OUT, sector, data, **kw)

    def ranges(self, type: int, segments: Sequence[tuple[int, int, int]]) -> Answer:
        data = b"".join(SEGMENT.pack(*segment) for segment in segments)
        return self.do(type, 0, data)

    def reset(self) -> None:
        self.guest.write(Reg.STATUS, 0)

    def close(self) -> None:
        self.transport.close()
        self.backend.close()
        os.close(self.irq)
