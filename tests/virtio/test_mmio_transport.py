"""The virtio-mmio transport and the virtio-rng worker, driven as a guest driver would, with a
fake Vm (STYLE 14): its ioeventfds are recorded, and a test writes them as KVM would."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import pytest
from driver import Driver, Heap, Rings

from runner.devices.virtio.interrupt import InterruptLine
from runner.devices.virtio.mmio import MAGIC, VENDOR_ID, MmioTransport, Reg, Status, VirtioBackend
from runner.devices.virtio.rng import QUEUE_SIZE, VirtioRng
from runner.kvm.memory import GuestMemory
from runner.kvm.native import Cdata, ffi, lib
from runner.virtio.queue import Virtqueue

BASE = 0xD000_0000
RINGS = Rings.packed(QUEUE_SIZE, 0x1000)
VERSION_1, INDIRECT, EVENT_IDX = 1 << 32, 1 << 28, 1 << 29


class FakeVm:
    def __init__(self) -> None:
        self.ioeventfds: list[tuple[int, int, int, bool, int | None]] = []

    def ioeventfd(
        self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None = None
    ) -> None:
        self.ioeventfds.append((fd, addr, length, pio, datamatch))


class Guest:
    """The transport as the guest's virtio_mmio driver sees it."""

    def __init__(self, transport: MmioTransport, vm: FakeVm, line: InterruptLine) -> None:
        self.transport, self.vm, self.line = transport, vm, line

    def read(self, reg: int) -> int:
        return self.transport.read(reg, 4)

    def write(self, reg: int, value: int) -> None:
        self.transport.write(reg, 4, value)

    def features(self) -> int:
        pages = []
        for page in (0, 1):
            self.write(Reg.DEVICE_FEATURES_SEL, page)
            pages.append(self.read(Reg.DEVICE_FEATURES))
        return pages[0] | pages[1] << 32

    def negotiate(self, features: int) -> int:
        self.write(Reg.STATUS, Status.ACKNOWLEDGE)
        self.write(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
        for page in (0, 1):
            self.write(Reg.DRIVER_FEATURES_SEL, page)
            self.write(Reg.DRIVER_FEATURES, (features >> (32 * page)) & 0xFFFFFFFF)
        self.write(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        return self.read(Reg.STATUS)

    def set_up_queue(self, rings: Rings, size: int = QUEUE_SIZE, index: int = 0) -> None:
        self.write(Reg.QUEUE_SEL, index)
        self.write(Reg.QUEUE_NUM, size)
        for low, value in (
            (Reg.QUEUE_DESC_LOW, rings.desc),
            (Reg.QUEUE_DRIVER_LOW, rings.avail),
            (Reg.QUEUE_DEVICE_LOW, rings.used),
        ):
            self.write(low, value & 0xFFFFFFFF)
            self.write(low + 4, value >> 32)
        self.write(Reg.QUEUE_READY, 1)

    def driver_ok(self) -> None:
        self.write(Reg.STATUS, self.read(Reg.STATUS) | Status.DRIVER_OK)

    def notify(self, index: int = 0) -> None:
        """What KVM does for a QueueNotify write of `index`: signal that queue's ioeventfd."""
        fd, addr, length, pio, _ = next(e for e in self.vm.ioeventfds if e[4] == index)
        assert (addr, length, pio) == (BASE + Reg.QUEUE_NOTIFY, 4, False)
        os.eventfd_write(fd, 1)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    with GuestMemory.flat(0x40000) as memory:
        yield memory


G = TypeVar("G", bound=Guest)


@contextlib.contextmanager
def attached(
    backend: VirtioBackend,
    memory: GuestMemory,
    guest: type[G] = Guest,  # type: ignore[assignment]
) -> Iterator[G]:
    """`backend` behind a transport at BASE, with a fake VM and an eventfd for its line, as
    `guest` (a Guest class) drives it; the transport closed afterwards."""
    vm = FakeVm()
    irq = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    line = InterruptLine(irq, lambda: os.close(irq))
    transport = MmioTransport(backend, memory, vm, BASE, line)  # type: ignore[arg-type]
    try:
        yield guest(transport, vm, line)
    finally:
        transport.close()


@pytest.fixture
def guest(memory: GuestMemory) -> Iterator[Guest]:
    with attached(VirtioRng(), memory) as guest:
        yield guest


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def interrupted(guest: Guest) -> bool:
    return bool(select.select([guest.line.fd], [], [], 5)[0])


def test_the_registers_say_what_the_device_is(guest: Guest) -> None:
    assert guest.read(Reg.MAGIC_VALUE) == MAGIC
    assert guest.read(Reg.VERSION) == 2
    assert guest.read(Reg.DEVICE_ID) == 4  # entropy source
    assert guest.read(Reg.VENDOR_ID) == VENDOR_ID
    assert guest.features() == VERSION_1 | INDIRECT | EVENT_IDX
    assert guest.read(Reg.QUEUE_NUM_MAX) == QUEUE_SIZE
    guest.write(Reg.QUEUE_SEL, 1)  # no second queue
    assert guest.read(Reg.QUEUE_NUM_MAX) == 0
    # Only aligned 32-bit accesses reach registers (4.2.2.2); others read 0.
    assert guest.transport.read(Reg.MAGIC_VALUE, 2) == 0
    assert guest.transport.read(Reg.MAGIC_VALUE + 1, 4) == 0


@pytest.mark.parametrize(
    ("features", "accepted"),
    [
        (VERSION_1, True),
        (VERSION_1 | INDIRECT | EVENT_IDX, True),
        (INDIRECT, False),  # a legacy driver: no VERSION_1
        (VERSION_1 | 1 << 5, False),  # a bit the device does not offer
    ],
)
def test_features_ok_only_for_what_the_device_offers(
    guest: Guest, features: int, accepted: bool
) -> None:
    assert bool(guest.negotiate(features) & Status.FEATURES_OK) == accepted


def test_a_request_is_filled_from_the_host_and_interrupts(
    guest: Guest, memory: GuestMemory
) -> None:
    driver = Driver(memory, QUEUE_SIZE, RINGS, Heap([(0x10000, 0x40000)]))
    assert guest.negotiate(VERSION_1 | EVENT_IDX) & Status.FEATURES_OK
    guest.set_up_queue(RINGS)
    guest.driver_ok()
    head = driver.add_chain([(0x20000, 64, True), (0x21000, 64, True)])
    driver.publish()
    guest.notify()
    wait_for(lambda: driver.used_idx == 1, "the used ring")
    assert driver.take_used() == [(head, 128)]
    filled = memory.read(0x20000, 64) + memory.read(0x21000, 64)
    assert filled != bytes(128) and len(set(filled)) > 16
    assert interrupted(guest)
    assert guest.read(Reg.INTERRUPT_STATUS) == lib.VMRUN_VIRTIO_INT_USED
    guest.write(Reg.INTERRUPT_ACK, lib.VMRUN_VIRTIO_INT_USED)
    assert guest.read(Reg.INTERRUPT_STATUS) == 0
    assert guest.transport.backend.served() == 1


def test_a_request_larger_than_the_limit_gets_the_limit(guest: Guest, memory: GuestMemory) -> None:
    driver = Driver(memory, QUEUE_SIZE, RINGS, Heap([(0x10000, 0x40000)]))
    guest.negotiate(VERSION_1)
    guest.set_up_queue(RINGS)
    guest.driver_ok()
    driver.add_chain([(0x10000, 0x30000, True)])  # 192 KiB asked
    driver.publish()
    guest.notify()
    wait_for(lambda: driver.used_idx == 1, "the used ring")
    assert driver.take_used() == [(0, lib.VMRUN_RNG_CHAIN_LIMIT)]


def test_a_readable_buffer_breaks_the_device_and_vmrun_goes_on(
    guest: Guest, memory: GuestMemory
) -> None:
    driver = Driver(memory, QUEUE_SIZE, RINGS, Heap([(0x10000, 0x40000)]))
    guest.negotiate(VERSION_1)
    guest.set_up_queue(RINGS)
    guest.driver_ok()
    driver.add_chain([(0x20000, 64, False)])  # the device only writes
    driver.publish()
    guest.notify()
    wait_for(lambda: guest.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET, "DEVICE_NEEDS_RESET")
    assert guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_CONFIG
    assert driver.used_idx == 0
    # A reset gives the guest a working device again.
    guest.write(Reg.STATUS, 0)
    assert guest.read(Reg.STATUS) == 0 and guest.read(Reg.INTERRUPT_STATUS) == 0
    fresh = Driver(memory, QUEUE_SIZE, RINGS, Heap([(0x10000, 0x40000)]))
    guest.negotiate(VERSION_1)
    guest.set_up_queue(RINGS)
    guest.driver_ok()
    fresh.add_chain([(0x20000, 16, True)])
    fresh.publish()
    guest.notify()
    wait_for(lambda: fresh.used_idx == 1, "the used ring after the reset")


@pytest.mark.parametrize(
    ("rings", "size"),
    [
        (Rings(0x1001, 0x2000, 0x3000), QUEUE_SIZE),  # a misaligned descriptor table
        (Rings(0x1000, 0x2000, 0x7FFF_0000), QUEUE_SIZE),  # the used ring outside RAM
        (RINGS, 100),  # no power of 2
    ],
)
def test_rings_the_engine_refuses_ask_for_a_reset(guest: Guest, rings: Rings, size: int) -> None:
    guest.negotiate(VERSION_1)
    guest.set_up_queue(rings, size)
    guest.driver_ok()
    assert guest.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET
    assert interrupted(guest)
    assert guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_CONFIG


def test_driver_ok_without_the_queue_asks_for_a_reset(guest: Guest) -> None:
    guest.negotiate(VERSION_1)
    guest.driver_ok()
    assert guest.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET


def test_a_live_queue_keeps_its_rings(guest: Guest, memory: GuestMemory) -> None:
    driver = Driver(memory, QUEUE_SIZE, RINGS, Heap([(0x10000, 0x40000)]))
    guest.negotiate(VERSION_1)
    guest.set_up_queue(RINGS)
    guest.driver_ok()
    guest.write(Reg.QUEUE_DESC_LOW, 0x30000)  # ignored: the queue is ready
    guest.write(Reg.QUEUE_NUM, 8)
    driver.add_chain([(0x20000, 16, True)])
    driver.publish()
    guest.notify()
    wait_for(lambda: driver.used_idx == 1, "the used ring")


def test_closing_stops_the_worker_before_memory_goes(memory: GuestMemory) -> None:
    vm = FakeVm()
    irq = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    line = InterruptLine(irq, lambda: None)
    transport = MmioTransport(VirtioRng(), memory, vm, BASE, line)  # type: ignore[arg-type]
    guest = Guest(transport, vm, line)
    guest.negotiate(VERSION_1)
    guest.set_up_queue(RINGS)
    guest.driver_ok()
    transport.close()
    assert transport.backend.served() == 0  # no worker left
    os.close(irq)


def test_a_relayed_line_raises_one_edge_per_wake_up() -> None:
    # With a split irqchip, the main thread's event loop reads the line's eventfd (however
    # many writes it holds) and raises one edge on vmrun's I/O APIC.
    watched: dict[int, Callable[[], None]] = {}
    edges: list[int] = []
    line = InterruptLine.relayed(watched.__setitem__, lambda: edges.append(1))
    try:
        (relay,) = watched.values()
        status = ffi.new("uint32_t *")
        lib.vmrun_virtio_interrupt_raise(status, lib.VMRUN_VIRTIO_INT_USED, line.fd)
        lib.vmrun_virtio_interrupt_raise(status, lib.VMRUN_VIRTIO_INT_USED, line.fd)
        relay()
        relay()  # nothing more to read: no edge
        assert edges == [1] and status[0] == lib.VMRUN_VIRTIO_INT_USED
    finally:
        line.close()


class TwoModes:
    """A device of three queues whose third belongs to a feature (bit 5), with one writable
    config byte range: the transport's optional hooks, recorded."""

    device_id = 42
    features = 1 << 5
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []
        self.activated: list[tuple[int, int]] = []  # (queues, notify fds) handed over

    def config(self) -> bytes:
        return bytes(range(8))

    def config_generation(self) -> int:
        return 7

    def write_config(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))

    def queues_needed(self, features: int) -> int:
        return 3 if features >> 5 & 1 else 2

    def activate(
        self, queues: Sequence[Virtqueue], notify_fds: Sequence[int], irq_fd: int, status: Cdata
    ) -> None:
        self.activated.append((len(queues), len(notify_fds)))

    def reset(self) -> None:
        pass


@pytest.fixture
def two_modes(memory: GuestMemory) -> Iterator[Guest]:
    with attached(TwoModes(), memory) as guest:
        yield guest


def set_up_queues(guest: Guest, count: int) -> None:
    for index in range(count):
        guest.write(Reg.QUEUE_SEL, index)
        guest.write(Reg.QUEUE_NUM, 16)
        rings = Rings.packed(16, 0x1000 + 0x1000 * index)
        for low, value in (
            (Reg.QUEUE_DESC_LOW, rings.desc),
            (Reg.QUEUE_DRIVER_LOW, rings.avail),
            (Reg.QUEUE_DEVICE_LOW, rings.used),
        ):
            guest.write(low, value)
        guest.write(Reg.QUEUE_READY, 1)


@pytest.mark.parametrize(("features", "queues"), [(VERSION_1, 2), (VERSION_1 | 1 << 5, 3)])
def test_the_device_says_which_queues_the_features_need(
    two_modes: Guest, features: int, queues: int
) -> None:
    two_modes.negotiate(features)
    set_up_queues(two_modes, queues)
    two_modes.driver_ok()
    assert not two_modes.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET
    assert two_modes.transport.backend.activated == [(queues, queues)]


def test_a_queue_the_features_need_is_still_needed(two_modes: Guest) -> None:
    two_modes.negotiate(VERSION_1 | 1 << 5)
    set_up_queues(two_modes, 2)
    two_modes.driver_ok()
    assert two_modes.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET
    assert two_modes.transport.backend.activated == []


def test_config_writes_reach_a_device_that_takes_them(two_modes: Guest) -> None:
    transport = two_modes.transport
    transport.write(Reg.CONFIG + 4, 4, 0x11223344)
    transport.write(Reg.CONFIG + 1, 1, 0x1FF)  # a byte: only its byte
    transport.write(Reg.CONFIG + 2, 2, 0xBEEF)
    assert transport.backend.writes == [
        (4, bytes.fromhex("44332211")),
        (1, b"\xff"),
        (2, bytes.fromhex("efbe")),
    ]
    assert transport.read(Reg.CONFIG_GENERATION, 4) == 7


def test_config_writes_to_a_device_without_writable_fields_are_ignored(guest: Guest) -> None:
    guest.transport.write(Reg.CONFIG, 4, 0x12345678)  # the rng has no configuration
    assert guest.transport.read(Reg.CONFIG, 4) == 0
    assert guest.read(Reg.MAGIC_VALUE) == MAGIC
