"""Writes the seed corpus of native/fuzz/virtqueue_fuzz.c into native/fuzz/corpus/virtqueue/.

Each seed is a queue and a short story in the harness's input format (its header comment):
a valid chain, a read-then-write chain with EVENT_IDX, an indirect table, a loop, an
out-of-range next, buffers at region edges, a chain over 4 GiB, bad sizes and rings. The
fuzzer starts from these states instead of from nothing. Run `python native/fuzz/make_corpus.py`
after changing the input format; the files are checked in.
"""

from __future__ import annotations

import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus" / "virtqueue"

# Operations (`enum op` in the harness).
POP, PUSH_TAKEN, PUSH_ANY, INTERRUPT, NOTIFY, PENDING, RESET = range(7)
G_AVAIL_IDX, G_RING, G_DESC, G_ADD, G_FLAGS, G_BYTES, CYCLE = range(7, 14)

NEXT, WRITE, INDIRECT = 1, 2, 4
F_INDIRECT, F_EVENT_IDX, F_VERSION_1 = 1, 2, 4  # the harness's feature byte
READABLE, WRITABLE, BOTH = 0, 1, 2  # the directions byte: 1 + (value & 127) % 3
KEEP_BAD = 0x80  # ... and VMRUN_VIRTQ_KEEP_BAD_BUFFERS

SMALL, TOP, HUGE = 0, 2, 3  # region kinds
FULL = 0xFFFF  # a small region's size field for 64 KiB


def u8(v: int) -> bytes:
    return struct.pack("<B", v)


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def gpa(region: int, offset: int, *, from_end: bool = False) -> bytes:
    """An address `offset` into region `region` (or back from its end)."""
    sel = region | (16 if from_end else 0)
    if offset > 0xFFFF:
        return u8(sel | 8) + u32(offset)
    return u8(sel) + u16(offset)


def raw_gpa(addr: int) -> bytes:
    return u8(3) + struct.pack("<Q", addr)


def to_end(delta: int = 0) -> bytes:
    """A length reaching the end of the region of the address just before it, plus `delta`."""
    return u8(7) + struct.pack("<b", delta)


def length(n: int) -> bytes:
    if n < 0x100:
        return u8(0) + u8(n)
    if n < 0x10000:
        return u8(1) + u16(n)
    return u8(2) + u32(n)


def header(
    regions: list[tuple[int, int, int]],
    *,
    size_log2: int | None = 3,
    size_raw: int | None = None,
    desc: bytes = gpa(0, 0x0),
    avail: bytes = gpa(0, 0x100),
    used: bytes = gpa(0, 0x200),
    features: int = F_VERSION_1,
    directions: int = BOTH,
    capacity: int = 16,
    fill: bytes = b"",
) -> bytes:
    """Regions as (kind, size field, gap pages), then the queue; rings default to region 0."""
    out = u8(len(regions) - 1)
    for kind, size, gap in regions:
        out += u8(kind | gap << 4) + u16(size)
    out += u8(len(fill)) + fill
    out += u8(0x80) + u16(size_raw) if size_raw is not None else u8(size_log2 or 0)
    return out + desc + avail + used + u8(features) + u8(directions) + u16(capacity)


def desc(index: int, addr: bytes, size: bytes, flags: int = 0, nxt: int = 0) -> bytes:
    return u8(G_DESC) + u8(0) + u16(index) + addr + size + u16(flags) + u16(nxt)


def desc_at(where: bytes, addr: bytes, size: bytes, flags: int = 0, nxt: int = 0) -> bytes:
    return u8(G_DESC) + u8(1) + where + addr + size + u16(flags) + u16(nxt)


def add(head: int) -> bytes:
    return u8(G_ADD) + u16(head)


def push_taken(written: int = 0) -> bytes:
    return u8(PUSH_TAKEN) + u8(0) + u32(written)


def push_taken_around_end(delta: int) -> bytes:
    """Push the chain with its writable bytes + `delta` written."""
    return u8(PUSH_TAKEN) + u8(0x40) + u32(delta & 0xFF)


def push_any(head: int, written: int = 0) -> bytes:
    return u8(PUSH_ANY) + u16(head) + u32(written)


def set_avail_idx(value: int) -> bytes:
    return u8(G_AVAIL_IDX) + u8(1) + u16(value)


def set_used_event(value: int) -> bytes:
    return u8(G_FLAGS) + u8(1) + u16(value)


def cycle(head: int, times: int) -> bytes:
    return u8(CYCLE) + u16(head) + u16(times)


def op(*codes: int) -> bytes:
    return bytes(codes)


ONE_REGION = [(SMALL, FULL, 0)]

SEEDS = {
    "one-buffer": header(ONE_REGION)
    + desc(0, gpa(0, 0x1000), length(512))
    + add(0)
    + op(PENDING, POP)
    + push_taken()
    + op(INTERRUPT, POP),
    "read-write-event-idx": header(ONE_REGION, features=F_VERSION_1 | F_EVENT_IDX)
    + desc(0, gpa(0, 0x1000), length(64), NEXT, 1)
    + desc(1, gpa(0, 0x2000), length(4096), WRITE | NEXT, 2)
    + desc(2, gpa(0, 0x3000), length(100), WRITE)
    + op(NOTIFY, 0)
    + add(0)
    + op(NOTIFY, 1, POP)
    + push_taken(4196)
    + op(INTERRUPT)
    + add(0)
    + op(POP)
    + push_taken(1)
    + set_used_event(1)
    + op(INTERRUPT, INTERRUPT),
    "indirect": header(ONE_REGION, features=F_VERSION_1 | F_INDIRECT, directions=BOTH)
    + desc(0, gpa(0, 0x4000), length(48), INDIRECT)
    + desc_at(gpa(0, 0x4000), gpa(0, 0x5000), length(16), NEXT, 1)
    + desc_at(gpa(0, 0x4010), gpa(0, 0x6000), length(200), WRITE | NEXT, 2)
    + desc_at(gpa(0, 0x4020), gpa(0, 0x7000), length(300), WRITE)
    + add(0)
    + op(POP)
    + push_taken(500)
    + op(PENDING),
    "direct-then-indirect": header(ONE_REGION, features=F_VERSION_1 | F_INDIRECT)
    + desc(0, gpa(0, 0x1000), length(16), NEXT, 1)
    + desc(1, gpa(0, 0x4000), length(32), INDIRECT)
    + desc_at(gpa(0, 0x4000), gpa(0, 0x5000), length(64), WRITE | NEXT, 1)
    + desc_at(gpa(0, 0x4010), gpa(0, 0x6000), length(64), WRITE)
    + add(0)
    + op(POP)
    + push_any(0, 0xFFFF_FFFF),
    "keep-bad-buffers": header(ONE_REGION, directions=BOTH | KEEP_BAD)
    + desc(0, gpa(0, 0x1000), length(16), NEXT, 1)
    + desc(1, raw_gpa(0x7000_0000), length(512), NEXT, 2)
    + desc(2, gpa(0, 16, from_end=True), to_end(8), WRITE | NEXT, 3)
    + desc(3, gpa(0, 0x2000), length(1), WRITE)
    + add(0)
    + op(POP)
    + push_taken(1)
    + add(0)
    + op(POP, PENDING),
    "loop": header(ONE_REGION)
    + desc(0, gpa(0, 0x1000), length(8), NEXT, 1)
    + desc(1, gpa(0, 0x1100), length(8), NEXT, 0)
    + add(0)
    + op(POP, POP, PENDING, RESET, PENDING),
    "next-out-of-range": header(ONE_REGION)
    + desc(0, gpa(0, 0x1000), length(8), NEXT, 8)
    + add(0)
    + op(POP, INTERRUPT),
    "region-edges": header(
        [(SMALL, 0x1FFF, 0), (SMALL, 0x2FFF, 2)],
        desc=gpa(1, 0),
        avail=gpa(1, 0x100),
        used=gpa(1, 0x200),
    )
    + desc(0, gpa(1, 16, from_end=True), to_end(), NEXT, 1)
    + desc(1, gpa(0, 16, from_end=True), to_end(), WRITE)
    + add(0)
    + op(POP)
    + push_taken_around_end(1)
    + desc(1, gpa(0, 16, from_end=True), to_end(16), WRITE)
    + add(0)
    + op(POP),
    "rings-at-region-end": header(
        [(SMALL, 0x0FFF, 0), (SMALL, 0x0FFF, 0), (SMALL, 0x1001, 0)],  # used: 4-aligned
        desc=gpa(0, 16 * 8, from_end=True),
        avail=gpa(1, 6 + 2 * 8, from_end=True),
        used=gpa(2, 6 + 8 * 8, from_end=True),
        features=F_VERSION_1 | F_EVENT_IDX,
    )
    + desc(7, gpa(0, 0x100), to_end(), WRITE)
    + add(7)
    + op(POP)
    + push_taken_around_end(0)
    + op(NOTIFY, 1, INTERRUPT),
    "top-of-memory": header([(SMALL, FULL, 0), (TOP, 0x0FFF, 0)])
    + desc(0, gpa(1, 64, from_end=True), length(64))
    + add(0)
    + op(POP)
    + push_taken()
    + desc(0, raw_gpa(0xFFFF_FFFF_FFFF_FFF0), length(32))
    + add(0)
    + op(POP),
    "over-4-gib": header([(SMALL, FULL, 0), (HUGE, 0, 1)], features=F_VERSION_1 | F_EVENT_IDX)
    + desc(0, gpa(1, 0), length(0xC000_0000), NEXT, 1)
    + desc(1, gpa(1, 0x1000), length(0x1000), WRITE)
    + add(0)
    + op(POP)
    + push_taken(0x1000)
    + desc(1, gpa(1, 0x1000), length(0x8000_0000), WRITE)
    + add(0)
    + op(POP),
    "bad-size": header(ONE_REGION, size_raw=6) + op(POP, PENDING, NOTIFY, 1, INTERRUPT, RESET),
    "misaligned-ring": header(ONE_REGION, desc=gpa(0, 8)) + op(POP),
    "avail-idx-jump": header(ONE_REGION) + set_avail_idx(100) + op(PENDING, POP),
    "same-head-twice": header(ONE_REGION)
    + desc(0, gpa(0, 0x1000), length(8))
    + add(0)
    + add(0)
    + op(POP, POP)
    + push_any(0),
    "readable-after-writable": header(ONE_REGION)
    + desc(0, gpa(0, 0x1000), length(8), WRITE | NEXT, 1)
    + desc(1, gpa(0, 0x2000), length(8))
    + add(0)
    + op(POP),
    "too-many-buffers": header(ONE_REGION, capacity=1)
    + desc(0, gpa(0, 0x1000), length(8), NEXT, 1)
    + desc(1, gpa(0, 0x2000), length(8), WRITE)
    + add(0)
    + op(POP),
    "wrong-direction": header(ONE_REGION, directions=READABLE)
    + desc(0, gpa(0, 0x1000), length(8), WRITE)
    + add(0)
    + op(POP),
    "nested-indirect": header(ONE_REGION, features=F_VERSION_1 | F_INDIRECT)
    + desc(0, gpa(0, 0x4000), length(32), INDIRECT)
    + desc_at(gpa(0, 0x4000), gpa(0, 0x5000), length(16), NEXT, 1)
    + desc_at(gpa(0, 0x4010), gpa(0, 0x4000), length(32), INDIRECT)
    + add(0)
    + op(POP),
    "indirect-loop": header(ONE_REGION, features=F_VERSION_1 | F_INDIRECT)
    + desc(0, gpa(0, 0x4000), length(32), INDIRECT)
    + desc_at(gpa(0, 0x4000), gpa(0, 0x5000), length(16), NEXT, 1)
    + desc_at(gpa(0, 0x4010), gpa(0, 0x6000), length(16), NEXT, 0)
    + add(0)
    + op(POP),
    "index-wrap": header(ONE_REGION, size_log2=2, features=F_VERSION_1 | F_EVENT_IDX)
    + desc(1, gpa(0, 0x1000), length(8), WRITE)
    + set_used_event(0xFFF0)
    + cycle(1, 0xFFFF)
    + cycle(1, 0x20)
    + op(PENDING, INTERRUPT),
    "big-queue": header(
        [(SMALL, FULL, 0), (SMALL, FULL, 0)],
        size_log2=12,
        desc=gpa(0, 0),
        avail=gpa(1, 0),
        used=gpa(1, 0x4000),
        capacity=0x8000,
    )
    + desc(4095, gpa(1, 0x100), length(8), NEXT, 4094)
    + desc(4094, gpa(1, 0x100), length(8), NEXT, 4095)
    + add(4095)
    + op(POP),
    "patterned-memory": header(
        ONE_REGION,
        features=F_VERSION_1 | F_INDIRECT | F_EVENT_IDX,
        fill=bytes.fromhex("00100000000000001000000003000100"),
    )
    + op(G_AVAIL_IDX, 1 << 1, POP, POP, PENDING),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in SEEDS.items():
        (OUT / name).write_bytes(data)
    print(f"{len(SEEDS)} seeds, {sum(map(len, SEEDS.values()))} bytes, in {OUT}")


if __name__ == "__main__":
    main()
