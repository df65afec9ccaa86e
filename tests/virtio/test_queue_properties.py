"""Properties of the virtqueue engine, against the mock driver and its reference rules
(driver.py): valid chains come back exactly as written, and whatever a hostile driver writes,
the engine gives what the rules say (a chain inside guest RAM, or the queue broken, for
good) and never hands out a byte outside guest RAM."""

from __future__ import annotations

import random

from driver import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESCRIPTOR,
    OUTSIDE,
    U16_MOD,
    Broken,
    Buffer,
    Driver,
    Heap,
    Popped,
    Rings,
    avail_ring_bytes,
    desc_table_bytes,
    guest_address,
    inside_ram,
    need_interrupt,
    reference_pop,
    used_ring_bytes,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st

from runner.kvm.memory import GuestMemory
from runner.kvm.native import lib
from runner.virtio.queue import (
    MAX_SIZE,
    Chain,
    Direction,
    Feature,
    OutsideRam,
    QueueBroken,
    Virtqueue,
    error_text,
)

INDIRECT = 1 << Feature.INDIRECT_DESC
EVENT_IDX = 1 << Feature.EVENT_IDX
BOTH = Direction.READABLE | Direction.WRITABLE
KEEP = Direction.KEEP_BAD_BUFFERS
WRITABLE = Direction.WRITABLE
# Two adjacent regions and one beyond a gap: [0, 64K) [64K, 128K) hole [192K, 256K).
REGIONS = [(0, 0x10000), (0x10000, 0x10000), (0x30000, 0x10000)]
CHAIN_CODES = {
    lib.VMRUN_VIRTQ_E_AVAIL_IDX,
    lib.VMRUN_VIRTQ_E_HEAD,
    lib.VMRUN_VIRTQ_E_NEXT,
    lib.VMRUN_VIRTQ_E_LOOP,
    lib.VMRUN_VIRTQ_E_BUFFER,
    lib.VMRUN_VIRTQ_E_ZERO_LENGTH,
    lib.VMRUN_VIRTQ_E_OVERLONG,
    lib.VMRUN_VIRTQ_E_DIRECTION,
    lib.VMRUN_VIRTQ_E_ORDER,
    lib.VMRUN_VIRTQ_E_INDIRECT,
    lib.VMRUN_VIRTQ_E_INDIRECT_NESTED,
    lib.VMRUN_VIRTQ_E_INDIRECT_TABLE,
    lib.VMRUN_VIRTQ_E_SEGMENTS,
}


def buffers_of(memory: GuestMemory, chain: Chain) -> tuple[Buffer, ...]:
    """The chain's buffers as guest ranges, found from the host addresses the engine gave."""
    return tuple(
        Buffer(
            OUTSIDE if isinstance(view, OutsideRam) else guest_address(memory, view),
            len(view),
            writable,
        )
        for views, writable in ((chain.readable, False), (chain.writable, True))
        for view in views
    )


# ---- valid chains come back exactly as written -----------------------------------------------

# Ring slots: 2 KiB each, four in each of the first two regions; the rest of those regions
# is the heap for buffers and indirect tables.
SLOTS = [base + 0x800 * i for base in (0, 0x10000) for i in range(4)]
SLOT_BYTES = 0x800
VALID_HEAP = [(0x2000, 0x10000), (0x12000, 0x20000), (0x30000, 0x40000)]


@st.composite
def ring_placements(draw: st.DrawFn, size: int) -> Rings:
    """Each ring in its own slot, at a random offset of its alignment."""
    slots = draw(st.permutations(SLOTS))
    places = []
    for slot, length, align in zip(
        slots,
        (desc_table_bytes(size), avail_ring_bytes(size), used_ring_bytes(size)),
        (16, 2, 4),
        strict=False,
    ):
        places.append(slot + align * draw(st.integers(0, (SLOT_BYTES - length) // align)))
    return Rings(*places)


@st.composite
def chain_shapes(draw: st.DrawFn, size: int, indirect_ok: bool) -> tuple[bool, list[int], int]:
    """(indirect, buffer lengths, readable count): readable buffers come first."""
    indirect = indirect_ok and draw(st.booleans())
    lengths = draw(
        st.lists(st.integers(1, 128), min_size=1, max_size=6 if indirect else min(6, size))
    )
    return indirect, lengths, draw(st.integers(0, len(lengths)))


@settings(max_examples=150)
@given(data=st.data(), log_size=st.integers(0, 6), features=st.sampled_from([0, INDIRECT]))
def test_valid_chains_pop_as_written_and_return_as_pushed(
    data: st.DataObject, log_size: int, features: int
) -> None:
    size = 1 << log_size
    rings = data.draw(ring_placements(size), label="rings")
    shapes = data.draw(st.lists(chain_shapes(size, bool(features)), min_size=1, max_size=40))
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    with GuestMemory(REGIONS) as memory:
        driver = Driver(memory, size, rings)
        queue = Virtqueue(memory, size, *rings, features=features)
        while shapes:
            driver.heap = Heap(VALID_HEAP)
            # Offer chains while descriptors last; publish them in one or two steps.
            offered: list[tuple[int, list[Buffer], bytes]] = []
            while shapes and (1 if shapes[0][0] else len(shapes[0][1])) <= len(driver.free):
                indirect, lengths, readable = shapes.pop(0)
                buffers = [
                    Buffer(driver.heap.alloc(n, rng.choice((1, 2, 8, 16))), n, i >= readable)
                    for i, n in enumerate(lengths)
                ]
                payload = rng.randbytes(sum(lengths[:readable]))
                at = 0
                for b in buffers[:readable]:
                    memory.write(b.gpa, payload[at : at + b.length])
                    at += b.length
                head = driver.add_chain(buffers, indirect=indirect)
                offered.append((head, buffers, payload))
            first = rng.randint(0, len(offered))
            driver.publish(first)
            assert queue.pending() == first
            driver.publish()
            assert queue.pending() == len(offered)

            popped = []
            for head, buffers, payload in offered:
                chain = queue.pop()
                assert chain is not None and chain.head == head
                assert buffers_of(memory, chain) == tuple(buffers)
                assert chain.read_all() == payload
                popped.append(chain)
            assert queue.pop() is None

            rng.shuffle(popped)
            expected_used = []
            for chain in popped:
                answer = rng.randbytes(rng.randint(0, chain.writable_bytes))
                assert chain.write(answer) == len(answer)
                queue.push(chain.head, len(answer))
                expected_used.append((chain.head, len(answer)))
                writable = [b for b in buffers_of(memory, chain) if b.writable]
                written = b"".join(memory.read(b.gpa, b.length) for b in writable)
                assert written[: len(answer)] == answer
            assert driver.take_used() == expected_used
            assert not queue.broken


# ---- hostile tables and rings ----------------------------------------------------------------

HOSTILE_RINGS = Rings(0x0, 0x400, 0x800)  # size at most 16: each ring fits before the next
TABLES = 0x1000  # descriptors that indirect descriptors may point at
TABLE_ENTRIES = 64
INTERESTING_ADDRESSES = [
    0, 0x1000, 0x1010, 0x4000, 0xFFF0, 0xFFF8, 0x10000, 0x1FFF0, 0x1FFF8, 0x20000, 0x28000,
    0x2FFF0, 0x30000, 0x3FFF0, 0x3FFF8, 0x40000, 2**64 - 16, 2**64 - 8,
]  # fmt: skip
INTERESTING_LENGTHS = [
    0, 1, 8, 15, 16, 17, 32, 48, 64, 0x8000, 0x10000, 0x20000, 0x80000, 0xFFFFFFFF,
    16 * MAX_SIZE, 16 * (MAX_SIZE + 1),
]  # fmt: skip
# Flags of plausible descriptors, weighted: ends, links, indirect tables (F_WRITE comes later).
NEXT = DESC_F_NEXT
PLAUSIBLE_FLAGS = [0, 0, NEXT, NEXT, NEXT, DESC_F_INDIRECT]


class HostileDriver:
    """What a hostile driver writes, from a seed: each descriptor or head is hostile (anything
    at all, biased to edges) with probability `hostility`, else plausible (in RAM, linked
    within its table), so that chains of every shape get popped, not only the first one's
    breakage. A seeded generator, not hypothesis draws: thousands of those cost seconds."""

    def __init__(self, seed: int, hostility: float, indirect: bool, directions: int) -> None:
        self.rng = random.Random(seed)
        self.hostility = hostility
        self.indirect = indirect  # plausible descriptors name tables only when negotiated
        self.directions = directions  # and go only the ways the device takes

    def descriptor(self, index: int, table_size: int) -> bytes:
        """Entry `index` of a table of `table_size`: plausible ones link forward and turn
        writable further on, so most chains end without a loop and in the right order."""
        rng = self.rng
        if rng.random() >= self.hostility:
            flags = rng.choice(PLAUSIBLE_FLAGS[: None if self.indirect else -1])
            if flags & DESC_F_INDIRECT:
                first = rng.randrange(TABLE_ENTRIES)
                entries = rng.randint(1, min(8, TABLE_ENTRIES - first))
                return DESCRIPTOR.pack(TABLES + 16 * first, 16 * entries, flags, 0)
            if self.directions == WRITABLE or (
                self.directions == BOTH and rng.random() < index / table_size
            ):
                flags |= DESC_F_WRITE
            region = rng.choice(REGIONS)
            length = rng.randint(1, 64)
            addr = region[0] + rng.randrange(region[1] - length + 1)
            later = range(index + 1, table_size) or range(table_size)
            return DESCRIPTOR.pack(addr, length, flags, rng.choice(later))
        if rng.random() < 0.2:
            return rng.randbytes(16)
        addr = rng.choice(
            (
                rng.choice(INTERESTING_ADDRESSES),
                (TABLES + rng.randrange(16 * TABLE_ENTRIES)) & ~15,
                rng.randrange(0x40000),
                rng.randrange(2**64),
            )
        )
        length = rng.choice(INTERESTING_LENGTHS) if rng.random() < 0.7 else rng.randrange(2**32)
        flags = rng.randrange(8) if rng.random() < 0.8 else rng.randrange(0x10000)
        next = rng.randrange(21) if rng.random() < 0.8 else rng.randrange(0x10000)
        return DESCRIPTOR.pack(addr, length, flags, next)

    def head(self, size: int, busy: set[int]) -> int:
        """A head to offer: plausible ones are not `busy` (in flight or offered) where any is."""
        if self.rng.random() >= self.hostility:
            free = [h for h in range(size) if h not in busy] or range(size)
            return self.rng.choice(free)
        return self.rng.choice((size, self.rng.randrange(0x10000)))


@settings(max_examples=300)
@given(
    data=st.data(),
    seed=st.integers(0, 2**32),
    hostility=st.sampled_from([0.0, 0.02, 0.1, 0.3, 1.0]),
    log_size=st.integers(0, 4),
    features=st.sampled_from([0, INDIRECT, EVENT_IDX, INDIRECT | EVENT_IDX]),
    directions=st.sampled_from(
        [Direction.READABLE, Direction.WRITABLE, BOTH, BOTH, BOTH, BOTH | KEEP, BOTH | KEEP]
        + [Direction.READABLE | KEEP]
    ),
    max_segments=st.sampled_from([1, 2, 3, 1024, 1024]),
)
def test_hostile_rings_give_what_the_rules_say_and_stay_inside_ram(
    data: st.DataObject,
    seed: int,
    hostility: float,
    log_size: int,
    features: int,
    directions: Direction,
    max_segments: int,
) -> None:
    size = 1 << log_size
    hostile = HostileDriver(seed, hostility, bool(features & INDIRECT), directions & BOTH)
    with GuestMemory(REGIONS) as memory:
        driver = Driver(memory, size, HOSTILE_RINGS)
        queue = Virtqueue(
            memory, size, *HOSTILE_RINGS, features=features, max_segments=max_segments
        )
        for index in range(TABLE_ENTRIES):
            # An indirect descriptor points at up to 8 entries from any of them: index % 8
            # is a guess at an entry's place in its table.
            memory.write(TABLES + 16 * index, hostile.descriptor(index % 8, 8))
        rewritten = range(size)  # the whole table at first, some entries in later rounds
        taken = 0  # chains the engine took: its next available slot, modulo 2**16
        in_flight: set[int] = set()
        for _ in range(data.draw(st.integers(1, 4), label="rounds")):
            for index in rewritten:
                entry = hostile.descriptor(index, size)
                driver.add_raw_descriptor(index, *DESCRIPTOR.unpack(entry))
            rewritten = hostile.rng.sample(range(size), hostile.rng.randint(0, size))
            offered = data.draw(st.integers(0, size), label="chains offered")
            busy = set(in_flight)
            for _ in range(offered):
                head = hostile.head(size, busy)
                driver.offer(head)
                busy.add(head)
            if hostile.rng.random() >= hostility:
                driver.set_avail_idx(taken + offered)
            else:
                driver.set_avail_idx(data.draw(st.integers(0, 0xFFFF), label="avail idx"))

            for _ in range(size + 2):
                expected = reference_pop(
                    memory, size, HOSTILE_RINGS, taken, in_flight,
                    indirect_negotiated=bool(features & INDIRECT),
                    directions=int(directions), max_segments=max_segments,
                )  # fmt: skip
                try:
                    chain = queue.pop(directions)
                except QueueBroken as exc:
                    assert isinstance(expected, Broken), f"{exc.code} where {expected} was due"
                    assert exc.code in expected.codes
                    assert exc.code in CHAIN_CODES
                    event(f"broken: {error_text(exc.code)}")
                    assert_broken_for_good(queue, driver, exc.code)
                    return
                if chain is None:
                    assert expected is None
                    break
                assert isinstance(expected, Popped), f"a chain where {expected} was due"
                assert chain.head == expected.head
                assert buffers_of(memory, chain) == expected.buffers
                taken += 1
                in_flight.add(chain.head)
                event(f"popped a chain of {min(len(expected.buffers), 3)}+ buffers")

            for head in sorted(in_flight):
                if hostile.rng.random() < 0.5:
                    used_before = driver.used_idx
                    queue.push(head, hostile.rng.randrange(2**32))
                    in_flight.discard(head)
                    assert driver.used_idx == (used_before + 1) % U16_MOD
                    assert driver.used_element(used_before)[0] == head
            stranger = hostile.rng.choice((hostile.rng.randrange(size), 0xFFFF))
            if stranger not in in_flight:
                try:
                    queue.push(stranger, 0)
                except QueueBroken as exc:
                    assert exc.code == lib.VMRUN_VIRTQ_E_USED_HEAD
                else:
                    raise AssertionError(f"push of head {stranger}, not taken, was accepted")
            assert not queue.broken
            # Every chain offered was taken or broke the queue: nothing waits, and enabling
            # notifications says so (with EVENT_IDX: wants one at the next index to take).
            assert queue.pending() == 0 and queue.notify(True) is False
            if features & EVENT_IDX:
                assert driver.avail_event == taken % U16_MOD


def assert_broken_for_good(queue: Virtqueue, driver: Driver, code: int) -> None:
    driver.set_avail_idx(driver.avail_idx + 1)
    for _ in range(2):
        try:
            queue.pop()
        except QueueBroken as exc:
            assert exc.code == lib.VMRUN_VIRTQ_E_BROKEN
        else:
            raise AssertionError("a broken queue popped")
    assert queue.pending() == 0
    assert queue.notify(True) is False
    assert queue.should_interrupt() is False
    assert queue.error == code


# ---- ring setup --------------------------------------------------------------------------------

sizes = st.one_of(
    st.integers(0, 17),
    st.sampled_from([2**k for k in range(17)]),
    st.integers(-1, 0x10001),
)
ring_addresses = st.one_of(
    st.sampled_from([a + d for a in INTERESTING_ADDRESSES for d in (-4, -2, 0, 2, 4)]),
    st.integers(0, 0x40000),
    st.integers(0, 2**64 - 1),
)


@given(size=sizes, desc=ring_addresses, avail=ring_addresses, used=ring_addresses)
def test_setup_takes_exactly_the_rings_the_rules_allow(
    size: int, desc: int, avail: int, used: int
) -> None:
    desc, avail, used = (a % 2**64 for a in (desc, avail, used))
    with GuestMemory(REGIONS) as memory:
        if size <= 0 or size > MAX_SIZE or size & (size - 1):
            expected = lib.VMRUN_VIRTQ_E_SIZE
        else:
            fits = all(
                address % align == 0 and inside_ram(memory, address, length)
                for address, length, align in (
                    (desc, desc_table_bytes(size), 16),
                    (avail, avail_ring_bytes(size), 2),
                    (used, used_ring_bytes(size), 4),
                )
            )
            expected = 0 if fits else lib.VMRUN_VIRTQ_E_RING
        try:
            queue = Virtqueue(memory, size, desc, avail, used)
        except QueueBroken as exc:
            assert exc.code == expected
        else:
            assert expected == 0 and not queue.broken and queue.pending() == 0


# ---- interrupts with EVENT_IDX -----------------------------------------------------------------


# used_event relative to the last index signalled: near the window of new entries, or anywhere.
event_offsets = st.one_of(st.integers(-2, 6), st.integers(0, 0xFFFF))


@given(batches=st.lists(st.tuples(st.integers(0, 4), event_offsets, st.booleans()), max_size=30))
def test_event_idx_interrupts_follow_the_driver_rule(
    batches: list[tuple[int, int, bool]],
) -> None:
    with GuestMemory.flat(0x10000) as memory:
        driver = Driver(memory, 4, Rings.packed(4, 0))
        queue = Virtqueue(memory, 4, *driver.rings, features=EVENT_IDX)
        for head in range(4):
            driver.add_raw_descriptor(head, 0x4000, 8, 0, 0)
        signalled: int | None = None
        for count, event_from_signalled, check in batches:
            for head in range(count):
                driver.offer(head)
            driver.publish()
            for _ in range(count):
                queue.push(queue.pop().head, 0)
            if not check:
                continue
            new = driver.used_idx
            if signalled is None:
                assert queue.should_interrupt() is True  # the first, whatever used_event says
            else:
                used_event = (signalled + event_from_signalled) % U16_MOD
                driver.set_used_event(used_event)
                assert queue.should_interrupt() is need_interrupt(used_event, new, signalled)
            signalled = new
