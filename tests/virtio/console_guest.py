"""The guest's side of a virtio-console, as Linux's virtio_console driver plays it (virtio 1.2,
5.3), written from the spec over tests/virtio/driver.py and the transport's test Guest: a test
double for tests/virtio/test_console.py (STYLE 14)."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence

from driver import Buffer, Driver, Heap, Rings
from test_mmio_transport import BASE, EVENT_IDX, VERSION_1, FakeVm, Guest, wait_for

from runner.devices.virtio.console import ConsolePort, VirtioConsole
from runner.devices.virtio.interrupt import InterruptLine
from runner.devices.virtio.mmio import MmioTransport, Reg, Status
from runner.kvm.memory import GuestMemory

CONTROL = struct.Struct("<IHH")  # struct virtio_console_control: id, event, value
CONTROL_RX, CONTROL_TX = 2, 3
DEVICE_READY, DEVICE_ADD, PORT_READY, CONSOLE_PORT, RESIZE, PORT_OPEN, PORT_NAME = (
    0, 1, 3, 4, 5, 6, 7,
)  # fmt: skip
BAD_ID = 0xFFFFFFFF  # what Linux sends DEVICE_READY with


class Device:
    """A console behind its transport, and the guest's driver of every queue."""

    def __init__(self, memory: GuestMemory, ports: Sequence[ConsolePort], multiport: bool):
        self.memory = memory
        self.backend = VirtioConsole(ports, multiport=multiport)
        self.vm = FakeVm()
        self.irq = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        line = InterruptLine(self.irq, lambda: None)
        self.transport = MmioTransport(self.backend, memory, self.vm, BASE, line)  # type: ignore[arg-type]
        self.guest = Guest(self.transport, self.vm, line)  # type: ignore[arg-type]
        self.heap = Heap([(0x40000, memory.size)])
        self.queues: list[Driver] = []
        self.chains: dict[tuple[int, int], list[Buffer]] = {}

    def start(self) -> None:
        guest = self.guest
        assert guest.negotiate(VERSION_1 | EVENT_IDX | self.backend.features) & Status.FEATURES_OK
        for index, size in enumerate(self.backend.queue_sizes):
            rings = Rings.packed(size, 0x1000 + 0x2000 * index)
            self.queues.append(Driver(self.memory, size, rings, self.heap))
            guest.write(Reg.QUEUE_SEL, index)
            guest.write(Reg.QUEUE_NUM, size)
            for low, gpa in zip(
                (Reg.QUEUE_DESC_LOW, Reg.QUEUE_DRIVER_LOW, Reg.QUEUE_DEVICE_LOW), rings, strict=True
            ):
                guest.write(low, gpa & 0xFFFFFFFF)
                guest.write(low + 4, gpa >> 32)
            guest.write(Reg.QUEUE_READY, 1)
        guest.driver_ok()
        assert not self.broken

    @property
    def broken(self) -> bool:
        return bool(self.guest.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET)

    def kick(self, queue: int) -> None:
        """What KVM does for a QueueNotify write of `queue`."""
        os.eventfd_write(next(fd for fd, *_, match in self.vm.ioeventfds if match == queue), 1)

    def offer(self, queue: int, buffers: list[Buffer], kick: bool = True) -> int:
        head = self.queues[queue].add_chain(buffers)
        self.chains[queue, head] = buffers
        self.queues[queue].publish()
        if kick:
            self.kick(queue)
        return head

    def send(self, queue: int, data: bytes, pieces: int = 1, kick: bool = True) -> int:
        """A chain of `data` in `pieces` readable buffers."""
        step = -(-len(data) // pieces)
        buffers = []
        for at in range(0, len(data), step):
            gpa = self.heap.alloc(len(data[at : at + step]))
            self.memory.write(gpa, data[at : at + step])
            buffers.append(Buffer(gpa, len(data[at : at + step]), False))
        return self.offer(queue, buffers, kick)

    def give(self, queue: int, count: int = 1, length: int = 4096, writable: bool = True) -> None:
        for _ in range(count):
            self.offer(queue, [Buffer(self.heap.alloc(length), length, writable)], kick=False)
        self.kick(queue)

    def received(self, queue: int) -> list[bytes]:
        """What the device wrote into each chain it returned since the last call."""
        out = []
        for head, length in self.queues[queue].take_used():
            data = b""
            for buffer in self.chains.pop((queue, head)):
                if buffer.writable and len(data) < length:
                    data += self.memory.read(buffer.gpa, min(buffer.length, length - len(data)))
            out.append(data)
        return out

    def wait_used(self, queue: int, count: int) -> None:
        driver = self.queues[queue]
        wait_for(lambda: (driver.used_idx - driver.last_used) % 65536 >= count, f"queue {queue}")

    def control(self, id: int, event: int, value: int = 1, pieces: int = 1) -> None:
        self.send(CONTROL_TX, CONTROL.pack(id, event, value), pieces)

    def messages(self, count: int) -> list[tuple[int, int, int, bytes]]:
        """The next `count` control messages: (id, event, value, payload)."""
        self.wait_used(CONTROL_RX, count)
        return [(*CONTROL.unpack(m[:8]), m[8:]) for m in self.received(CONTROL_RX)]

    def close(self) -> None:
        self.backend.close()
        self.transport.close()
        os.close(self.irq)


def new_pipe(pipes: list[int]) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    pipes += [read_end, write_end]
    return read_end, write_end


def close_end(pipes: list[int], fd: int) -> None:
    """Close a pipe's end before the test ends."""
    os.close(fd)
    pipes[pipes.index(fd)] = -1


def quiet(seconds: float = 0.1) -> None:
    """Time for the worker to do what it should not."""
    time.sleep(seconds)


def read_exactly(fd: int, count: int) -> bytes:
    data = b""
    while len(data) < count:
        data += os.read(fd, count - len(data))
    return data
