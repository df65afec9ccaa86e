"""virtio-balloon through the virtio-mmio transport, driven as Linux's virtio_balloon would
(tests/virtio/driver.py), over a real GuestMemory whose memfd says what the host holds."""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Iterator

import pytest
from driver import Driver, Heap, Rings
from test_mmio_transport import Guest as TransportGuest
from test_mmio_transport import attached, wait_for

from runner.devices.virtio.balloon import (
    F_DEFLATE_ON_OOM,
    F_REPORTING,
    QUEUE_SIZE,
    VirtioBalloon,
)
from runner.devices.virtio.mmio import Reg, Status
from runner.kvm.memory import GuestMemory, Region
from runner.kvm.native import lib

BASE = 0xD000_0000
VERSION_1, INDIRECT, EVENT_IDX = 1 << 32, 1 << 28, 1 << 29
REPORTING, DEFLATE_ON_OOM = 1 << F_REPORTING, 1 << F_DEFLATE_ON_OOM
STATS_VQ, FREE_PAGE_HINT = 1 << 1, 1 << 3
PAGE = 4096
MIB = 1 << 20
INFLATE, DEFLATE, REPORT = 0, 1, 2

# Guest RAM: 8 MiB at 0, a hole, 1 MiB at 16 MiB. Rings in the first MiB, buffers (page
# numbers) in the second, pages to give back from 4 MiB.
LOW = Region(0, 8 * MIB)
HIGH = Region(16 * MIB, MIB)
RINGS = [Rings.packed(QUEUE_SIZE, 0x1000 + index * 0x4000) for index in range(3)]
HEAP = (MIB, 2 * MIB)
PAGES = 4 * MIB


class Guest(TransportGuest):
    """The transport as Linux's virtio_mmio and virtio_balloon drive it."""

    @property
    def backend(self) -> VirtioBalloon:
        return self.transport.backend  # type: ignore[return-value]

    def set_up_queue(self, index: int) -> None:  # type: ignore[override]
        super().set_up_queue(RINGS[index], QUEUE_SIZE, index)

    def start(self, features: int, queues: int) -> None:
        assert self.negotiate(features) & Status.FEATURES_OK
        for index in range(queues):
            self.set_up_queue(index)
        self.driver_ok()

    @property
    def needs_reset(self) -> bool:
        return bool(self.read(Reg.STATUS) & Status.DEVICE_NEEDS_RESET)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    with GuestMemory([LOW, HIGH]) as memory:
        yield memory


@pytest.fixture
def guest(memory: GuestMemory) -> Iterator[Guest]:
    with attached(VirtioBalloon(), memory, Guest) as guest:
        yield guest


def drivers(memory: GuestMemory, count: int) -> list[Driver]:
    heap = Heap([HEAP])
    return [Driver(memory, QUEUE_SIZE, RINGS[index], heap) for index in range(count)]


def returned(driver: Driver, count: int = 1) -> list[tuple[int, int]]:
    wait_for(lambda: (driver.used_idx - driver.last_used) % 65536 >= count, "the used ring")
    return driver.take_used()


def touch(memory: GuestMemory, gpa: int, length: int, byte: int = 0xA5) -> None:
    memory.write(gpa, bytes([byte]) * length)


def pfn_buffer(memory: GuestMemory, heap_driver: Driver, pfns: list[int]) -> tuple[int, int]:
    data = struct.pack(f"<{len(pfns)}I", *pfns)
    assert heap_driver.heap is not None
    gpa = heap_driver.heap.alloc(len(data))
    memory.write(gpa, data)
    return gpa, len(data)


# ---- what the device offers ------------------------------------------------------------------


def test_the_device_offers_reporting_and_deflate_on_oom_only(guest: Guest) -> None:
    assert guest.read(Reg.DEVICE_ID) == 5
    assert guest.features() == VERSION_1 | INDIRECT | EVENT_IDX | REPORTING | DEFLATE_ON_OOM
    for index in range(3):
        guest.write(Reg.QUEUE_SEL, index)
        assert guest.read(Reg.QUEUE_NUM_MAX) == QUEUE_SIZE
    guest.write(Reg.QUEUE_SEL, 3)
    assert guest.read(Reg.QUEUE_NUM_MAX) == 0


@pytest.mark.parametrize("unoffered", [STATS_VQ, FREE_PAGE_HINT])
def test_features_not_offered_are_refused(guest: Guest, unoffered: int) -> None:
    assert not guest.negotiate(VERSION_1 | REPORTING | unoffered) & Status.FEATURES_OK


def test_without_reporting_two_queues_are_the_device(guest: Guest, memory: GuestMemory) -> None:
    inflate, _deflate = drivers(memory, 2)
    guest.start(VERSION_1 | DEFLATE_ON_OOM, queues=2)
    assert not guest.needs_reset
    touch(memory, PAGES, PAGE)
    inflate.add_chain([(*pfn_buffer(memory, inflate, [PAGES // PAGE]), False)])
    inflate.publish()
    guest.notify(INFLATE)
    assert returned(inflate) == [(0, 0)]
    assert guest.backend.pages_freed() == 1


def test_with_reporting_the_third_queue_is_needed(guest: Guest) -> None:
    guest.start(VERSION_1 | REPORTING, queues=2)
    assert guest.needs_reset
    assert guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_CONFIG


def test_with_reporting_three_queues_are_the_device(guest: Guest) -> None:
    guest.start(VERSION_1 | REPORTING | DEFLATE_ON_OOM | EVENT_IDX, queues=3)
    assert not guest.needs_reset


# ---- free page reporting ---------------------------------------------------------------------


def test_reported_pages_leave_the_host(guest: Guest, memory: GuestMemory) -> None:
    *_, report = drivers(memory, 3)
    guest.start(VERSION_1 | REPORTING, queues=3)
    touch(memory, PAGES, 4 * MIB)
    before = memory.allocated_bytes()
    assert before >= 4 * MIB
    # Two blocks of 2 MiB, as Linux reports them (device-writable, no bytes written back).
    head = report.add_chain([(PAGES, 2 * MIB, True), (PAGES + 2 * MIB, 2 * MIB, True)])
    report.publish()
    guest.notify(REPORT)
    assert returned(report) == [(head, 0)]
    assert before - memory.allocated_bytes() == 4 * MIB
    assert memory.read(PAGES, 4 * MIB) == bytes(4 * MIB)  # a hole reads as zeros
    assert guest.backend.pages_freed() == 4 * MIB // PAGE
    assert select.select([guest.line.fd], [], [], 5)[0]  # the driver waits for its chain
    assert guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_USED


def test_only_whole_host_pages_inside_a_buffer_are_given_back(
    guest: Guest, memory: GuestMemory
) -> None:
    *_, report = drivers(memory, 3)
    guest.start(VERSION_1 | REPORTING, queues=3)
    touch(memory, PAGES, 4 * PAGE)
    report.add_chain([(PAGES + 0x800, 2 * PAGE, True)])  # half, whole, half
    report.publish()
    guest.notify(REPORT)
    returned(report)
    assert memory.read(PAGES, PAGE) == b"\xa5" * PAGE
    assert memory.read(PAGES + PAGE, PAGE) == bytes(PAGE)
    assert memory.read(PAGES + 2 * PAGE, PAGE) == b"\xa5" * PAGE
    assert guest.backend.pages_freed() == 1


# ---- inflate and deflate ---------------------------------------------------------------------


def test_inflated_pages_leave_the_host_and_pages_outside_ram_are_skipped(
    guest: Guest, memory: GuestMemory
) -> None:
    inflate, _deflate = drivers(memory, 2)
    guest.start(VERSION_1 | DEFLATE_ON_OOM, queues=2)
    touch(memory, PAGES, 8 * PAGE)
    touch(memory, HIGH.guest_addr, HIGH.size, 0x5A)
    first = PAGES // PAGE
    inside = [first, first + 1, first + 2, first + 5, HIGH.guest_addr // PAGE + 3]
    outside = [
        LOW.end // PAGE,  # the hole between the regions
        HIGH.end // PAGE,  # past the end of RAM
        0xFFFFFFFF,  # the largest page number there is
    ]
    gpa, length = pfn_buffer(memory, inflate, [*outside[:2], *inside, outside[2]])
    before = memory.allocated_bytes()
    # The numbers cut across two buffers, one of them not a whole number of entries.
    inflate.add_chain([(gpa, 6, False), (gpa + 6, length - 6, False)])
    inflate.publish()
    guest.notify(INFLATE)
    assert returned(inflate) == [(0, 0)]
    assert guest.backend.pages_freed() == len(inside)
    assert before - memory.allocated_bytes() == len(inside) * PAGE
    for page in range(8):
        gone = first + page in inside
        assert memory.read(PAGES + page * PAGE, PAGE) == (bytes(PAGE) if gone else b"\xa5" * PAGE)
    high = memory.read(HIGH.guest_addr, HIGH.size)
    assert high[3 * PAGE : 4 * PAGE] == bytes(PAGE)
    assert high[: 3 * PAGE] + high[4 * PAGE :] == b"\x5a" * (HIGH.size - PAGE)


def test_an_inflate_chain_is_read_up_to_its_bound(guest: Guest, memory: GuestMemory) -> None:
    inflate, _deflate = drivers(memory, 2)
    guest.start(VERSION_1, queues=2)
    touch(memory, PAGES, 2 * PAGE)
    limit = lib.VMRUN_BALLOON_CHAIN_PFNS
    # The limit's worth of numbers outside RAM, then one page of RAM: past the bound.
    pfns = [LOW.end // PAGE] * limit + [PAGES // PAGE + 1]
    inflate.add_chain([(*pfn_buffer(memory, inflate, pfns), False)])
    inflate.publish()
    guest.notify(INFLATE)
    assert returned(inflate) == [(0, 0)]
    assert guest.backend.pages_freed() == 0
    assert memory.read(PAGES + PAGE, PAGE) == b"\xa5" * PAGE


def test_deflate_chains_are_returned_and_free_nothing(guest: Guest, memory: GuestMemory) -> None:
    _inflate, deflate = drivers(memory, 2)
    guest.start(VERSION_1, queues=2)
    touch(memory, PAGES, PAGE)
    heads = [
        deflate.add_chain([(*pfn_buffer(memory, deflate, [PAGES // PAGE + n]), False)])
        for n in range(3)
    ]
    deflate.publish()
    guest.notify(DEFLATE)
    assert returned(deflate, 3) == [(head, 0) for head in heads]
    assert guest.backend.pages_freed() == 0
    assert guest.backend.chains() == 3
    assert memory.read(PAGES, PAGE) == b"\xa5" * PAGE


# ---- the configuration space -----------------------------------------------------------------


def config(guest: Guest, offset: int) -> int:
    return guest.transport.read(Reg.CONFIG + offset, 4)


def test_the_driver_writes_actual_and_only_actual(guest: Guest) -> None:
    assert (config(guest, 0), config(guest, 4)) == (0, 0)
    generation = guest.read(Reg.CONFIG_GENERATION)
    guest.transport.write(Reg.CONFIG + 4, 4, 1234)  # Linux's virtio_cwrite_le of actual
    assert guest.backend.actual == 1234 and config(guest, 4) == 1234
    guest.transport.write(Reg.CONFIG + 0, 4, 99)  # num_pages is the host's
    guest.transport.write(Reg.CONFIG + 2, 4, 0xFFFFFFFF)  # half of it, half of actual
    assert config(guest, 0) == 0 and guest.backend.num_pages == 0
    assert guest.backend.actual == 0xFFFF
    guest.transport.write(Reg.CONFIG + 8, 4, 7)  # past the fields: nothing
    assert guest.backend.config() == struct.pack("<II", 0, 0xFFFF)
    # The driver's own write is no change of the device's: the generation stays.
    assert guest.read(Reg.CONFIG_GENERATION) == generation


def test_a_new_target_is_a_configuration_change(guest: Guest, memory: GuestMemory) -> None:
    drivers(memory, 2)
    guest.start(VERSION_1, queues=2)
    generation = guest.read(Reg.CONFIG_GENERATION)
    guest.backend.set_target(256)
    assert config(guest, 0) == 256
    assert guest.read(Reg.CONFIG_GENERATION) != generation
    assert select.select([guest.line.fd], [], [], 5)[0]
    assert guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_CONFIG
    with pytest.raises(ValueError, match="u32"):
        guest.backend.set_target(1 << 32)


def test_inflating_to_a_target_as_linux_does(guest: Guest, memory: GuestMemory) -> None:
    inflate, _deflate = drivers(memory, 2)
    guest.start(VERSION_1 | DEFLATE_ON_OOM, queues=2)
    touch(memory, PAGES, 16 * PAGE)
    guest.backend.set_target(16)
    # The driver: target minus what its balloon holds, pages given, then `actual` told.
    wanted = config(guest, 0) - config(guest, 4)
    pfns = list(range(PAGES // PAGE, PAGES // PAGE + wanted))
    inflate.add_chain([(*pfn_buffer(memory, inflate, pfns), False)])
    inflate.publish()
    guest.notify(INFLATE)
    returned(inflate)
    guest.transport.write(Reg.CONFIG + 4, 4, wanted)
    assert guest.backend.actual == guest.backend.num_pages == 16
    assert guest.backend.pages_freed() == 16
    assert memory.read(PAGES, 16 * PAGE) == bytes(16 * PAGE)


# ---- a hostile guest -------------------------------------------------------------------------


def test_a_broken_chain_breaks_only_the_device(guest: Guest, memory: GuestMemory) -> None:
    inflate, _deflate, report = drivers(memory, 3)
    guest.start(VERSION_1 | REPORTING, queues=3)
    touch(memory, PAGES, PAGE)
    inflate.add_chain([(PAGES, PAGE, True)])  # inflate buffers are the driver's to write
    inflate.publish()
    guest.notify(INFLATE)
    wait_for(lambda: guest.needs_reset, "DEVICE_NEEDS_RESET")
    assert guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_CONFIG
    assert inflate.used_idx == 0
    assert memory.read(PAGES, PAGE) == b"\xa5" * PAGE
    # The other queues are not served any more, and nothing crashed.
    report.add_chain([(PAGES, PAGE, True)])
    report.publish()
    guest.notify(REPORT)
    time.sleep(0.1)
    assert report.used_idx == 0 and memory.read(PAGES, PAGE) == b"\xa5" * PAGE
    # A reset gives the guest a working device again.
    guest.write(Reg.STATUS, 0)
    assert not guest.needs_reset
    *_, fresh = drivers(memory, 3)
    guest.start(VERSION_1 | REPORTING, queues=3)
    fresh.add_chain([(PAGES, PAGE, True)])
    fresh.publish()
    guest.notify(REPORT)
    returned(fresh)
    assert memory.read(PAGES, PAGE) == bytes(PAGE)


def test_a_reported_buffer_outside_ram_breaks_the_queue_and_touches_nothing(
    guest: Guest, memory: GuestMemory
) -> None:
    *_, report = drivers(memory, 3)
    guest.start(VERSION_1 | REPORTING, queues=3)
    touch(memory, HIGH.guest_addr, PAGE)
    report.add_chain([(HIGH.guest_addr, 2 * MIB, True)])  # runs past the end of RAM
    report.publish()
    guest.notify(REPORT)
    wait_for(lambda: guest.needs_reset, "DEVICE_NEEDS_RESET")
    assert guest.backend.pages_freed() == 0
    assert memory.read(HIGH.guest_addr, PAGE) == b"\xa5" * PAGE
