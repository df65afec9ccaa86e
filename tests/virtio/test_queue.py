"""The virtqueue engine (native/virtio/virtqueue.c) through runner.virtio.queue, driven by the
mock driver in driver.py: chains as the driver wrote them, every rule a hostile driver can
break, ring setup, interrupt and notification suppression."""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

import pytest
from driver import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    USED_F_NO_NOTIFY,
    Buffer,
    Driver,
    Heap,
    Rings,
    avail_ring_bytes,
    need_interrupt,
)

from runner.kvm.memory import GuestMemory, GuestMemoryError
from runner.kvm.native import lib
from runner.virtio.queue import MAX_SIZE, Direction, Feature, OutsideRam, QueueBroken, Virtqueue

PAGE = mmap.PAGESIZE
RAM = 0x10000  # one flat region: rings from 0, buffers and tables from HEAP
HEAP = 0x4000
INDIRECT = 1 << Feature.INDIRECT_DESC
EVENT_IDX = 1 << Feature.EVENT_IDX
BOTH = Direction.READABLE | Direction.WRITABLE
# Two adjacent regions and one beyond a gap: [0, 64K) [64K, 128K) hole [192K, 256K).
REGIONS = [(0, 0x10000), (0x10000, 0x10000), (0x30000, 0x10000)]


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    with GuestMemory.flat(RAM) as memory:
        yield memory


@pytest.fixture
def regions() -> Iterator[GuestMemory]:
    with GuestMemory(REGIONS) as memory:
        yield memory


def queue_over(
    memory: GuestMemory, size: int = 8, features: int = 0, **options: int
) -> tuple[Driver, Virtqueue]:
    rings = Rings.packed(size, 0)
    driver = Driver(memory, size, rings, Heap([(HEAP, memory.regions[0].end)]))
    return driver, Virtqueue(memory, size, *rings, features=features, **options)


def breaks(queue: Virtqueue, code: int, directions: Direction = BOTH) -> None:
    """Popping raises QueueBroken with `code`, and the queue keeps that code."""
    with pytest.raises(QueueBroken) as raised:
        queue.pop(directions)
    assert raised.value.code == code
    assert queue.broken and queue.error == code


# ---- chains as the driver wrote them ---------------------------------------------------------


def test_readable_then_writable_chain_pops_and_is_returned(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    memory.write(0x4000, b"request head")
    memory.write(0x5000, b"payload")
    head = driver.add_chain([(0x4000, 12, False), (0x5000, 7, False), (0x6000, 32, True)])
    driver.publish()
    assert queue.pending() == 1

    chain = queue.pop()
    assert chain is not None and chain.head == head
    assert [len(b) for b in chain.readable] == [12, 7]
    assert [len(b) for b in chain.writable] == [32]
    assert chain.read_all() == b"request headpayload"
    assert (chain.readable_bytes, chain.writable_bytes) == (12 + 7, 32)
    assert chain.write(b"answer: twenty bytes") == 20
    assert memory.read(0x6000, 21) == b"answer: twenty bytes\0"
    assert queue.pending() == 0 and queue.pop() is None

    assert driver.used_idx == 0
    queue.push(chain.head, 20)
    assert driver.used_idx == 1
    assert driver.take_used() == [(head, 20)]
    assert not queue.broken


def test_chains_pop_in_ring_order_with_the_heads_the_driver_offered(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    # Descriptors written out of order, offered in yet another order.
    for index, gpa in ((5, 0x4000), (2, 0x4100), (7, 0x4200)):
        driver.add_raw_descriptor(index, gpa, 16 + index, 0, 0)
    for head in (7, 2, 5):
        driver.offer(head)
    driver.publish(2)
    assert queue.pending() == 2
    assert [queue.pop().head, queue.pop().head, queue.pop()] == [7, 2, None]
    driver.publish(1)
    chain = queue.pop()
    assert chain.head == 5 and [len(b) for b in chain.readable] == [21]
    for head in (2, 5, 7):  # returned in another order again: used entries follow the pushes
        queue.push(head, 0)
    assert driver.take_used() == [(2, 0), (5, 0), (7, 0)]


def test_a_chain_may_span_regions_buffer_by_buffer(regions: GuestMemory) -> None:
    driver = Driver(regions, 4, Rings.packed(4, 0))
    queue = Virtqueue(regions, 4, *driver.rings)
    regions.write(0xFFF0, b"A" * 16)  # ends exactly at the end of region 0
    regions.write(0x10000, b"B" * 16)  # starts exactly at region 1
    regions.write(0x3FFF0, b"C" * 16)  # the last bytes of RAM
    driver.add_chain([(0xFFF0, 16, False), (0x10000, 16, False), (0x3FFF0, 16, True)])
    driver.publish()
    chain = queue.pop()
    assert chain.read_all() == b"A" * 16 + b"B" * 16
    assert bytes(chain.writable[0]) == b"C" * 16


def test_a_full_ring_of_size_chains_pops(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, size=4)
    heads = [driver.add_chain([(0x4000 + 0x100 * i, 8, False)]) for i in range(4)]
    driver.publish()
    assert queue.pending() == 4  # avail idx exactly `size` ahead is allowed
    assert [queue.pop().head for _ in range(4)] == heads
    assert queue.pop() is None


def test_one_buffer_chains_of_either_direction_pop_for_that_direction(
    memory: GuestMemory,
) -> None:
    driver, queue = queue_over(memory)
    driver.add_chain([(0x4000, 4, False)])
    driver.add_chain([(0x5000, 4, True)])
    driver.publish()
    assert len(queue.pop(Direction.READABLE).readable) == 1
    assert len(queue.pop(Direction.WRITABLE).writable) == 1


def test_a_max_segments_chain_pops_and_one_more_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, max_segments=3)
    driver.add_chain([(0x4000, 1, False), (0x4100, 1, True), (0x4200, 1, True)])
    driver.add_chain([(0x4000, 1, False), (0x4100, 1, True), (0x4200, 1, True), (0x4300, 1, True)])
    driver.publish()
    assert len(queue.pop().writable) == 2
    breaks(queue, lib.VMRUN_VIRTQ_E_SEGMENTS)


# ---- indirect descriptors --------------------------------------------------------------------


def test_indirect_chains_pop_like_direct_ones(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    memory.write(0x5000, b"first")
    memory.write(0x5100, b"second")
    buffers = [(0x5000, 5, False), (0x5100, 6, False), (0x5200, 64, True), (0x5300, 8, True)]
    direct = driver.add_chain(buffers)
    indirect = driver.add_chain(buffers, indirect=True)
    driver.publish()
    popped = [queue.pop(), queue.pop()]
    assert [c.head for c in popped] == [direct, indirect]
    for chain in popped:
        assert chain.read_all() == b"firstsecond"
        assert [len(b) for b in chain.writable] == [64, 8]
    popped[1].write(b"x" * 70)
    assert memory.read(0x5200, 64) == b"x" * 64 and memory.read(0x5300, 8) == b"x" * 6 + bytes(2)
    queue.push(indirect, 70)
    queue.push(direct, 0)
    assert driver.take_used() == [(indirect, 70), (direct, 0)]
    assert sorted(driver.free) == list(range(8))  # 4 + 1 descriptors back


def test_an_indirect_table_may_hold_more_buffers_than_the_queue_size(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, size=2, features=INDIRECT)
    driver.add_chain([(0x5000 + 0x10 * i, 16, i >= 10) for i in range(20)], indirect=True)
    driver.publish()
    chain = queue.pop()
    assert (len(chain.readable), len(chain.writable)) == (10, 10)


def test_the_write_flag_of_an_indirect_descriptor_is_ignored(memory: GuestMemory) -> None:
    # virtio 1.2, 2.7.5.3.2: "The device MUST ignore the write-only flag ... in the descriptor
    # that refers to an indirect table."
    driver, queue = queue_over(memory, features=INDIRECT)
    driver.write_table_entry(0x6000, 0, 0x5000, 8, 0, 0)
    driver.add_raw_descriptor(0, 0x6000, 16, DESC_F_INDIRECT | DESC_F_WRITE, 0)
    driver.offer(0)
    driver.publish()
    chain = queue.pop(Direction.READABLE)
    assert [len(b) for b in chain.readable] == [8] and chain.writable == ()


def offer_indirect(
    driver: Driver, length: int = 32, flags: int = DESC_F_INDIRECT, table: int = 0x6000
) -> None:
    """Head 0 names the table at `table` (two readable buffers, valid unless a test
    changes them) with `length` and `flags`."""
    driver.write_table_entry(0x6000, 0, 0x5000, 8, DESC_F_NEXT, 1)
    driver.write_table_entry(0x6000, 1, 0x5100, 8, 0, 0)
    driver.add_raw_descriptor(0, table, length, flags, 1)
    driver.offer(0)
    driver.publish()


def test_an_indirect_descriptor_without_the_feature_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, features=0)
    offer_indirect(driver)
    breaks(queue, lib.VMRUN_VIRTQ_E_INDIRECT)


def test_an_indirect_descriptor_with_next_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    driver.add_raw_descriptor(1, 0x5200, 8, 0, 0)  # a valid descriptor to go on to
    offer_indirect(driver, flags=DESC_F_INDIRECT | DESC_F_NEXT)
    breaks(queue, lib.VMRUN_VIRTQ_E_INDIRECT)


def test_direct_descriptors_followed_by_an_indirect_one_pop_as_one_chain(
    memory: GuestMemory,
) -> None:
    # Virtio 1.2, 2.7.5.3.2: the device MUST take direct descriptors followed by one
    # indirect descriptor (vhost and rust-vmm do; QEMU does not).
    driver, queue = queue_over(memory, features=INDIRECT)
    memory.write(0x5000, b"direct")
    memory.write(0x5100, b"indirect")
    driver.write_table_entry(0x6000, 0, 0x5100, 8, DESC_F_NEXT, 1)
    driver.write_table_entry(0x6000, 1, 0x5200, 16, DESC_F_WRITE, 0)
    driver.add_raw_descriptor(2, 0x5000, 6, DESC_F_NEXT, 5)
    driver.add_raw_descriptor(5, 0x6000, 32, DESC_F_INDIRECT, 0)
    driver.offer(2)
    driver.publish()
    chain = queue.pop()
    assert chain.head == 2 and chain.read_all() == b"directindirect"
    assert [len(b) for b in chain.writable] == [16]


def test_an_indirect_table_inside_an_indirect_table_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    offer_indirect(driver)
    driver.write_table_entry(0x6000, 1, 0x7000, 16, DESC_F_INDIRECT, 0)
    driver.write_table_entry(0x7000, 0, 0x5100, 8, 0, 0)
    breaks(queue, lib.VMRUN_VIRTQ_E_INDIRECT_NESTED)


def test_an_indirect_table_inside_itself_as_its_first_entry_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    offer_indirect(driver)
    driver.write_table_entry(0x6000, 0, 0x6000, 32, DESC_F_INDIRECT, 0)
    breaks(queue, lib.VMRUN_VIRTQ_E_INDIRECT_NESTED)


@pytest.mark.parametrize("length", [0, 8, 24, 33, 16 * (MAX_SIZE + 1)])
def test_an_indirect_table_not_a_whole_number_of_entries_breaks(
    memory: GuestMemory, length: int
) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    offer_indirect(driver, length=length)
    breaks(queue, lib.VMRUN_VIRTQ_E_INDIRECT_TABLE)


def test_the_largest_indirect_table_is_taken() -> None:
    # 32768 entries (512 KiB): as many as a queue can hold. Each entry is a buffer, so the
    # iovec array must take them all.
    with GuestMemory.flat(0x100000) as memory:
        driver, queue = queue_over(memory, features=INDIRECT, max_segments=MAX_SIZE)
        table = bytearray()
        for i in range(MAX_SIZE):
            last = i == MAX_SIZE - 1
            table += (0x4000).to_bytes(8, "little") + (1).to_bytes(4, "little")
            table += (0 if last else DESC_F_NEXT).to_bytes(2, "little")
            table += (0 if last else i + 1).to_bytes(2, "little")
        memory.write(0x80000, table)
        driver.add_raw_descriptor(0, 0x80000, 16 * MAX_SIZE, DESC_F_INDIRECT, 0)
        driver.offer(0)
        driver.publish()
        assert len(queue.pop().readable) == MAX_SIZE


@pytest.mark.parametrize("table", [RAM, RAM - 16, (1 << 64) - 16])
def test_an_indirect_table_outside_ram_breaks(memory: GuestMemory, table: int) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    offer_indirect(driver, table=table)
    breaks(queue, lib.VMRUN_VIRTQ_E_BUFFER)


def test_a_loop_inside_an_indirect_table_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    offer_indirect(driver)
    driver.write_table_entry(0x6000, 1, 0x5100, 8, DESC_F_NEXT, 0)
    breaks(queue, lib.VMRUN_VIRTQ_E_LOOP)


def test_a_next_beyond_the_indirect_table_breaks(memory: GuestMemory) -> None:
    # Next 2 is inside the queue (size 8) but not inside the two-entry table.
    driver, queue = queue_over(memory, features=INDIRECT)
    offer_indirect(driver)
    driver.write_table_entry(0x6000, 1, 0x5100, 8, DESC_F_NEXT, 2)
    breaks(queue, lib.VMRUN_VIRTQ_E_NEXT)


# ---- hostile chains --------------------------------------------------------------------------


def test_a_two_descriptor_loop_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.add_raw_descriptor(1, 0x4000, 8, DESC_F_NEXT, 2)
    driver.add_raw_descriptor(2, 0x4100, 8, DESC_F_NEXT, 1)
    driver.offer(1)
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_LOOP)


def test_a_self_loop_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.add_raw_descriptor(3, 0x4000, 8, DESC_F_NEXT, 3)
    driver.offer(3)
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_LOOP)


def test_a_chain_as_long_as_the_table_is_no_loop(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, size=4)
    for index in range(4):
        last = index == 3
        driver.add_raw_descriptor(index, 0x4000, 8, 0 if last else DESC_F_NEXT, index + 1)
    driver.offer(0)
    driver.publish()
    assert len(queue.pop().readable) == 4


@pytest.mark.parametrize("next_index", [8, 9, 0xFFFF])
def test_a_next_out_of_range_breaks(memory: GuestMemory, next_index: int) -> None:
    driver, queue = queue_over(memory)
    driver.add_raw_descriptor(0, 0x4000, 8, DESC_F_NEXT, next_index)
    driver.offer(0)
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_NEXT)


def test_a_next_out_of_range_is_ignored_without_the_next_flag(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.add_raw_descriptor(0, 0x4000, 8, 0, 0xFFFF)
    driver.offer(0)
    driver.publish()
    assert queue.pop().head == 0


@pytest.mark.parametrize("head", [8, 0xFFFF])
def test_a_head_out_of_range_breaks(memory: GuestMemory, head: int) -> None:
    driver, queue = queue_over(memory)
    driver.offer(head)
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_HEAD)


def test_a_zero_length_buffer_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.add_chain([(0x4000, 8, False), (0x4100, 0, True)])
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_ZERO_LENGTH)


@pytest.mark.parametrize(
    ("gpa", "length"),
    [
        (0x40000, 8),  # just past the end of RAM
        (0x3FFF8, 16),  # straddles the end of RAM
        (0x28000, 8),  # in the hole
        (0x1FFF8, 16),  # straddles the end of region 1 into the hole
        (0xFFF8, 16),  # straddles regions 0 and 1, adjacent though they are
        (0, 0x20000),  # covers regions 0 and 1 exactly
        ((1 << 64) - 8, 16),  # wraps around 2**64
        (0x1000, 0xFFFFFFFF),  # longer than any region
    ],
)
def test_a_buffer_outside_one_region_of_ram_breaks(
    regions: GuestMemory, gpa: int, length: int
) -> None:
    driver = Driver(regions, 8, Rings.packed(8, 0))
    queue = Virtqueue(regions, 8, *driver.rings)
    driver.add_chain([(0x4000, 8, False), (gpa, length, True)])
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_BUFFER)


@pytest.mark.parametrize(
    ("gpa", "length"),
    [(0x40000, 8), (0x28000, 8), (0xFFF8, 16), ((1 << 64) - 8, 16), (0x1000, 0x80000000)],
)
def test_with_keep_bad_buffers_a_buffer_outside_ram_is_taken_without_an_address(
    regions: GuestMemory, gpa: int, length: int
) -> None:
    driver = Driver(regions, 8, Rings.packed(8, 0))
    queue = Virtqueue(regions, 8, *driver.rings)
    head = driver.add_chain([(0x4000, 16, False), (gpa, length, False), (0x4100, 1, True)])
    driver.add_chain([(0x4200, 8, False), (0x4300, 8, True)])
    driver.publish()
    chain = queue.pop(BOTH | Direction.KEEP_BAD_BUFFERS)
    assert chain is not None and chain.head == head and chain.outside == 1
    assert chain.readable[1] == OutsideRam(length)
    assert [len(b) for b in chain.readable] == [16, length]
    assert chain.readable_bytes == 16 + length and chain.writable_bytes == 1
    queue.push(head, 1)
    assert driver.take_used() == [(head, 1)]
    good = queue.pop(BOTH | Direction.KEEP_BAD_BUFFERS)  # the queue goes on
    assert good is not None and good.outside == 0 and not queue.broken


def test_with_keep_bad_buffers_every_buffer_may_be_outside_ram(regions: GuestMemory) -> None:
    driver = Driver(regions, 8, Rings.packed(8, 0))
    queue = Virtqueue(regions, 8, *driver.rings)
    driver.add_chain([(0x28000, 16, False), (0x50000, 1, True)])
    driver.publish()
    chain = queue.pop(BOTH | Direction.KEEP_BAD_BUFFERS)
    assert chain is not None and chain.outside == 2
    assert chain.writable == (OutsideRam(1),)


@pytest.mark.parametrize(
    ("buffers", "code"),
    [
        ([(0x28000, 0, True)], lib.VMRUN_VIRTQ_E_ZERO_LENGTH),
        ([(0x28000, 8, True), (0x4000, 8, False)], lib.VMRUN_VIRTQ_E_ORDER),
    ],
)
def test_keep_bad_buffers_keeps_every_other_rule(
    regions: GuestMemory, buffers: list[tuple[int, int, bool]], code: int
) -> None:
    driver = Driver(regions, 8, Rings.packed(8, 0))
    queue = Virtqueue(regions, 8, *driver.rings)
    driver.add_chain(buffers)
    driver.publish()
    breaks(queue, code, BOTH | Direction.KEEP_BAD_BUFFERS)


def test_keep_bad_buffers_still_breaks_on_an_indirect_table_outside_ram(
    memory: GuestMemory,
) -> None:
    driver, queue = queue_over(memory, features=INDIRECT)
    driver.add_raw_descriptor(0, 0x20000, 16, DESC_F_INDIRECT, 0)  # past the end of RAM
    driver.offer(0)
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_BUFFER, BOTH | Direction.KEEP_BAD_BUFFERS)


def test_a_readable_buffer_after_a_writable_one_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.add_chain([(0x4000, 8, False), (0x4100, 8, True), (0x4200, 8, False)])
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_ORDER)


@pytest.mark.parametrize(
    ("writable", "directions"),
    [(True, Direction.READABLE), (False, Direction.WRITABLE)],
)
def test_a_buffer_in_a_direction_the_device_does_not_take_breaks(
    memory: GuestMemory, writable: bool, directions: Direction
) -> None:
    driver, queue = queue_over(memory)
    driver.add_chain([Buffer(0x4000, 8, writable)])
    driver.publish()
    breaks(queue, lib.VMRUN_VIRTQ_E_DIRECTION, directions)


def test_a_chain_of_4_gib_minus_1_pops_and_one_byte_more_breaks() -> None:
    # Buffers may overlap (the spec does not forbid it), so 4 GiB of buffers fit in 1 GiB of
    # RAM: four descriptors over the whole of it. Each must lie inside RAM, or the
    # buffer-outside-RAM rule would be met before the length one. The memfd is sparse and
    # nothing here touches the buffers, so this costs no memory.
    gib = 1 << 30
    with GuestMemory.flat(gib) as memory:
        driver, queue = queue_over(memory)
        driver.add_chain([(0, gib, False)] * 3 + [(0, gib - 1, True)])
        driver.add_chain([(0, gib, False)] * 3 + [(0, gib, True)])
        driver.publish()
        chain = queue.pop()
        assert chain.readable_bytes + chain.writable_bytes == (1 << 32) - 1
        breaks(queue, lib.VMRUN_VIRTQ_E_OVERLONG)


@pytest.mark.parametrize("ahead", [9, 0x8000, 0xFFFF])
def test_an_avail_idx_more_than_size_ahead_breaks(memory: GuestMemory, ahead: int) -> None:
    driver, queue = queue_over(memory)
    driver.set_avail_idx(ahead)
    breaks(queue, lib.VMRUN_VIRTQ_E_AVAIL_IDX)


def test_an_avail_idx_more_than_size_ahead_breaks_pending_too(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.set_avail_idx(9)
    assert queue.pending() == 0
    assert queue.error == lib.VMRUN_VIRTQ_E_AVAIL_IDX


def test_an_avail_idx_moved_back_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.add_chain([(0x4000, 8, False)])
    driver.publish()
    queue.pop()
    driver.set_avail_idx(0)  # one behind what the device has taken: 0xFFFF ahead
    breaks(queue, lib.VMRUN_VIRTQ_E_AVAIL_IDX)


def test_a_head_offered_twice_while_in_flight_breaks(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    head = driver.add_chain([(0x4000, 8, False)])
    driver.offer(head)
    driver.publish()
    assert queue.pop().head == head
    breaks(queue, lib.VMRUN_VIRTQ_E_HEAD)


def test_a_head_offered_again_after_its_return_pops(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    head = driver.add_chain([(0x4000, 8, False)])
    driver.offer(head)
    driver.publish()
    queue.push(queue.pop().head, 0)
    assert queue.pop().head == head


def offer_self_loop(driver: Driver) -> None:
    driver.add_raw_descriptor(5, 0x4000, 8, DESC_F_NEXT, 5)
    driver.offer(5)
    driver.publish()


def offer_head_out_of_range(driver: Driver) -> None:
    driver.offer(8)
    driver.publish()


def offer_buffer_outside_ram(driver: Driver) -> None:
    driver.add_chain([(RAM, 8, False)])
    driver.publish()


def jump_avail_idx(driver: Driver) -> None:
    driver.set_avail_idx(100)


HOSTILE_CASES = {
    "loop": (offer_self_loop, lib.VMRUN_VIRTQ_E_LOOP),
    "head": (offer_head_out_of_range, lib.VMRUN_VIRTQ_E_HEAD),
    "buffer": (offer_buffer_outside_ram, lib.VMRUN_VIRTQ_E_BUFFER),
    "idx": (jump_avail_idx, lib.VMRUN_VIRTQ_E_AVAIL_IDX),
}


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_a_broken_queue_stays_broken(memory: GuestMemory, case: str) -> None:
    driver, queue = queue_over(memory)
    good = driver.add_chain([(0x4000, 8, False), (0x4100, 8, True)])
    driver.publish()
    taken = queue.pop()
    offer, code = HOSTILE_CASES[case]
    offer(driver)
    breaks(queue, code)

    driver.add_chain([(0x4200, 8, False)])  # a valid chain now waits: still nothing
    driver.publish()
    for _ in range(3):
        with pytest.raises(QueueBroken) as again:
            queue.pop()
        assert again.value.code == lib.VMRUN_VIRTQ_E_BROKEN
    assert queue.pending() == 0
    assert queue.notify(True) is False
    assert queue.should_interrupt() is False
    with pytest.raises(QueueBroken) as pushed:
        queue.push(taken.head, 0)
    assert pushed.value.code == lib.VMRUN_VIRTQ_E_BROKEN
    assert driver.used_idx == 0 and good == taken.head
    assert queue.error == code  # the first rule broken stays the reason


# ---- ring setup ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 3, 6, 100, MAX_SIZE + 1, 2 * MAX_SIZE, 0xFFFF, -1, 1 << 16])
def test_setup_refuses_a_size_of_no_power_of_2_or_over_32768(size: int) -> None:
    with GuestMemory.flat(0x200000) as memory:
        with pytest.raises(QueueBroken) as raised:
            Virtqueue(memory, size, 0, 0x100000, 0x180000)
        assert raised.value.code == lib.VMRUN_VIRTQ_E_SIZE


@pytest.mark.parametrize("size", [1, 2, 256, MAX_SIZE])
def test_setup_takes_every_power_of_2_up_to_32768(size: int) -> None:
    with GuestMemory.flat(0x200000) as memory:
        queue = Virtqueue(memory, size, 0, 0x100000, 0x180000)
        assert not queue.broken and queue.pending() == 0 and queue.pop() is None


@pytest.mark.parametrize(
    ("desc", "avail", "used"),
    [
        (0x1008, 0x2000, 0x3000),  # descriptor table not 16-aligned
        (0x1000, 0x2001, 0x3000),  # available ring not 2-aligned
        (0x1000, 0x2000, 0x3002),  # used ring not 4-aligned
    ],
)
def test_setup_refuses_misaligned_rings(
    memory: GuestMemory, desc: int, avail: int, used: int
) -> None:
    with pytest.raises(QueueBroken) as raised:
        Virtqueue(memory, 8, desc, avail, used)
    assert raised.value.code == lib.VMRUN_VIRTQ_E_RING


def test_setup_takes_rings_at_their_least_alignment(memory: GuestMemory) -> None:
    driver = Driver(memory, 8, Rings(0x1010, 0x2002, 0x3004))
    queue = Virtqueue(memory, 8, *driver.rings)
    driver.add_chain([(0x4000, 8, True)])
    driver.publish()
    queue.push(queue.pop().head, 3)
    assert driver.take_used() == [(0, 3)]


SIZE8 = (16 * 8, avail_ring_bytes(8), 6 + 8 * 8)  # bytes of each ring of a size-8 queue


def straddling(end: int) -> Callable[[int], int]:
    """A 16-aligned start for a ring of n bytes whose last bytes lie past `end`."""
    return lambda n: end - ((n - 1) & ~15)


OUTSIDE_ONE_REGION = {
    "past-the-end": lambda n: 0x40000,
    "in-the-hole": lambda n: 0x28000,
    "straddling-the-end": straddling(0x40000),
    "straddling-adjacent-regions": straddling(0x10000),
    "straddling-into-the-hole": straddling(0x20000),
    "wrapping-2**64": lambda n: (1 << 64) - 16,
}


@pytest.mark.parametrize("ring", range(3))
@pytest.mark.parametrize("where", OUTSIDE_ONE_REGION)
def test_setup_refuses_rings_outside_one_region_of_ram(
    regions: GuestMemory, ring: int, where: str
) -> None:
    rings = [0x1000, 0x2000, 0x3000]
    rings[ring] = OUTSIDE_ONE_REGION[where](SIZE8[ring])
    with pytest.raises(QueueBroken) as raised:
        Virtqueue(regions, 8, *rings)
    assert raised.value.code == lib.VMRUN_VIRTQ_E_RING


def test_setup_takes_rings_ending_at_the_end_of_a_region(regions: GuestMemory) -> None:
    # The descriptor table's and available ring's last bytes are their regions' last; the used
    # ring (6 + 8n bytes, 4-aligned) can end no closer than 2 bytes before a page boundary.
    desc, avail, used = 0x10000 - SIZE8[0], 0x20000 - SIZE8[1], 0x40000 - SIZE8[2] - 2
    assert desc % 16 == 0 and avail % 2 == 0 and used % 4 == 0
    queue = Virtqueue(regions, 8, desc, avail, used)
    assert not queue.broken


def test_a_queue_set_up_again_starts_afresh(memory: GuestMemory) -> None:
    # The transport makes a new Virtqueue after a reset: nothing of the old one carries over.
    driver, queue = queue_over(memory)
    driver.set_avail_idx(100)
    breaks(queue, lib.VMRUN_VIRTQ_E_AVAIL_IDX)
    driver, queue = queue_over(memory)
    driver.add_chain([(0x4000, 8, False)])
    driver.publish()
    assert queue.pop().head == 0


# ---- pushing -----------------------------------------------------------------------------------


def test_a_push_says_at_most_what_the_chain_can_hold(memory: GuestMemory) -> None:
    # A device's miscount never tells the driver to read beyond its buffers.
    driver, queue = queue_over(memory)
    driver.add_chain([(0x4000, 8, False), (0x4100, 16, True), (0x4200, 4, True)])
    driver.add_chain([(0x4300, 8, False)])
    driver.publish()
    first, second = queue.pop(), queue.pop()
    queue.push(first.head, 0xFFFFFFFF)
    queue.push(second.head, 5)
    assert driver.take_used() == [(first.head, 20), (second.head, 0)]


def test_a_queue_whose_memory_is_closed_refuses_every_call() -> None:
    memory = GuestMemory.flat(0x10000)
    driver, queue = queue_over(memory)
    driver.add_chain([(0x4000, 8, True)])
    driver.publish()
    memory.close()
    for call in (queue.pop, queue.pending, queue.should_interrupt, lambda: queue.push(0, 1)):
        with pytest.raises(GuestMemoryError, match="closed"):
            call()


@pytest.mark.parametrize("head", [1, 7, 8, 0xFFFF])
def test_pushing_a_head_not_taken_is_refused_and_breaks_nothing(
    memory: GuestMemory, head: int
) -> None:
    driver, queue = queue_over(memory)
    taken = driver.add_chain([(0x4000, 8, True)])
    driver.publish()
    queue.pop()
    with pytest.raises(QueueBroken) as raised:
        queue.push(head, 0)
    assert raised.value.code == lib.VMRUN_VIRTQ_E_USED_HEAD
    assert not queue.broken and driver.used_idx == 0
    queue.push(taken, 8)
    assert driver.take_used() == [(taken, 8)]


def test_pushing_a_head_twice_is_refused_the_second_time(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    head = driver.add_chain([(0x4000, 8, False)])
    driver.publish()
    queue.pop()
    queue.push(head, 0)
    with pytest.raises(QueueBroken) as raised:
        queue.push(head, 0)
    assert raised.value.code == lib.VMRUN_VIRTQ_E_USED_HEAD
    assert driver.used_idx == 1 and not queue.broken


# ---- interrupt suppression ------------------------------------------------------------------


def pop_and_push(driver: Driver, queue: Virtqueue, count: int) -> None:
    """`count` one-buffer chains through the queue and back."""
    for _ in range(count):
        driver.add_chain([(0x4000, 8, False)])
    driver.publish()
    for _ in range(count):
        queue.push(queue.pop().head, 0)
    driver.take_used()


@pytest.mark.parametrize(
    ("flags", "interrupt"), [(0, True), (1, False), (0xFFFE, True), (0xFFFF, False)]
)
def test_without_event_idx_interrupts_follow_the_no_interrupt_flag(
    memory: GuestMemory, flags: int, interrupt: bool
) -> None:
    driver, queue = queue_over(memory)
    pop_and_push(driver, queue, 1)
    driver.set_avail_flags(flags)
    assert queue.should_interrupt() is interrupt
    driver.set_used_event(0)  # means nothing without EVENT_IDX
    assert queue.should_interrupt() is interrupt


def test_with_event_idx_the_first_interrupt_is_always_sent(memory: GuestMemory) -> None:
    # Nothing was signalled yet, so the device cannot know what the driver saw: vhost and
    # QEMU interrupt too (an extra interrupt costs little; a lost one hangs the driver).
    driver, queue = queue_over(memory, features=EVENT_IDX)
    pop_and_push(driver, queue, 1)
    driver.set_used_event(0x1234)
    driver.set_avail_flags(1)  # ignored with EVENT_IDX
    assert queue.should_interrupt() is True
    assert queue.should_interrupt() is False  # nothing new since


@pytest.mark.parametrize("event_from_old", [-1, 0, 1, 2, 3, 4, 0x7FFF, 0x8000])
def test_with_event_idx_interrupts_follow_used_event(
    memory: GuestMemory, event_from_old: int
) -> None:
    driver, queue = queue_over(memory, features=EVENT_IDX)
    pop_and_push(driver, queue, 1)
    queue.should_interrupt()
    old = driver.used_idx
    pop_and_push(driver, queue, 3)
    new = driver.used_idx
    event = (old + event_from_old) % (1 << 16)
    driver.set_used_event(event)
    # The window of new entries is [old, old + 3): an interrupt when used_event is in it.
    assert need_interrupt(event, new, old) is (event_from_old in (0, 1, 2))
    assert queue.should_interrupt() is need_interrupt(event, new, old)
    assert queue.should_interrupt() is False  # nothing new since


def test_with_event_idx_interrupts_follow_used_event_across_index_wraps(
    memory: GuestMemory,
) -> None:
    # Over 65536 chains through a queue of 4, so both 16-bit indices wrap (twice near the
    # end), with used_event placed at and around the edges of each window of new entries.
    size = 4
    driver, queue = queue_over(memory, size=size, features=EVENT_IDX)
    for head in range(size):  # the descriptors stay; only the ring is rewritten
        driver.add_raw_descriptor(head, 0x4000 + 0x100 * head, 16, DESC_F_WRITE, 0)
    places = [-1, 0, 1, 2, 3, 4, 5, 0x8000]
    queue.should_interrupt()  # the first interrupt, always sent: past it, used_event rules
    signalled = used = batch = 0
    seen_wraps = 0
    while used < 0x10000 + 0x1000:
        count = 1 + batch % size
        for head in range(count):
            driver.offer(head)
        driver.publish()
        for head in range(count):
            chain = queue.pop()
            assert chain.head == head
            queue.push(head, head)
        assert driver.avail_event == driver.next_avail  # notifications wanted, ever onward
        used += count
        new = used % (1 << 16)
        assert driver.used_idx == new
        assert driver.used_element(new - 1) == (count - 1, count - 1)
        if batch % 3 != 2:  # sometimes no interrupt check, so windows span batches
            event = (signalled + places[batch % len(places)]) % (1 << 16)
            driver.set_used_event(event)
            assert queue.should_interrupt() is need_interrupt(event, new, signalled), (
                f"used_event {event:#x}, window [{signalled:#x}, {new:#x})"
            )
            seen_wraps += new < signalled
            signalled = new
        batch += 1
    assert seen_wraps == 1


# ---- notification suppression ---------------------------------------------------------------


def test_without_event_idx_notifications_follow_the_no_notify_flag(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    assert queue.notify(False) is False
    assert driver.used_flags & USED_F_NO_NOTIFY
    assert queue.notify(True) is False  # nothing waiting
    assert not driver.used_flags & USED_F_NO_NOTIFY
    queue.notify(False)
    driver.add_chain([(0x4000, 8, False)])
    driver.publish()
    assert queue.notify(True) is True  # a chain came while notifications were off
    assert not driver.used_flags & USED_F_NO_NOTIFY
    assert driver.avail_event == 0  # not written without EVENT_IDX


def test_with_event_idx_avail_event_is_the_next_index_to_take(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory, features=EVENT_IDX)
    for i in range(5):
        driver.add_chain([(0x4000 + 0x100 * i, 8, False)])
    driver.publish()
    assert queue.notify(True) is True
    assert driver.avail_event == 0
    queue.pop()
    assert driver.avail_event == 1
    queue.pop()
    assert driver.avail_event == 2

    assert queue.notify(False) is False
    queue.pop()
    assert driver.avail_event == 2  # no wish while disabled
    assert queue.notify(True) is True  # two still wait
    assert driver.avail_event == 3
    queue.pop()
    queue.pop()
    assert driver.avail_event == 5
    assert queue.pop() is None and driver.avail_event == 5
    assert queue.notify(True) is False
    assert driver.used_flags & USED_F_NO_NOTIFY == 0


def test_notify_with_an_impossible_avail_idx_breaks_the_queue(memory: GuestMemory) -> None:
    driver, queue = queue_over(memory)
    driver.set_avail_idx(9)
    assert queue.notify(True) is False
    assert queue.error == lib.VMRUN_VIRTQ_E_AVAIL_IDX


def test_the_driver_model_lays_chains_out_as_the_spec_says(memory: GuestMemory) -> None:
    # The oracle itself, against hand-packed bytes: a two-buffer direct chain.
    driver = Driver(memory, 4, Rings.packed(4, 0))
    assert driver.rings == Rings(0, 64, 64 + 6 + 2 * 4 + 2)
    head = driver.add_chain([(0x1122334455667788, 0x99AABBCC, False), (0x10, 0x20, True)])
    driver.publish()
    assert memory.read(0, 32) == bytes.fromhex(
        "8877665544332211" "ccbbaa99" "0100" "0100"
        "1000000000000000" "20000000" "0200" "0000"
    )  # fmt: skip
    assert memory.read(64, 6) == bytes.fromhex("000001000000")
    assert head == 0
