"""The boot GDT: exact descriptor values (as Firecracker's tests have them) and segments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.arch.x86_64 import gdt, layout


def test_descriptor_values() -> None:
    assert [hex(e) for e in gdt.BOOT_GDT] == [
        "0x0",
        "0xaf9b000000ffff",
        "0xcf93000000ffff",
        "0x8f8b000000ffff",
    ]
    assert gdt.gdt_bytes() == bytes.fromhex(
        "0000000000000000 ffff0000009baf00 ffff00000093cf00 ffff0000008b8f00"
    )


def test_code_segment_fields() -> None:
    # Firecracker's gdt.rs field_parse case: a base spread over three places in the entry.
    entry = gdt.gdt_entry(0xA09B, 0x10_0000, 0xFFFFF)
    assert entry == 0x00AF_9B10_0000_FFFF
    seg = gdt.segment_from_gdt_entry(entry, 0)
    assert (seg.g, seg.db, seg.l, seg.avl, seg.present, seg.dpl, seg.s) == (1, 0, 1, 0, 1, 0, 1)
    assert seg.type == 0xB
    assert seg.base == 0x10_0000
    assert seg.limit == 0xFFFF_FFFF
    assert seg.unusable == 0


def test_base_and_byte_granular_limit() -> None:
    entry = gdt.gdt_entry(0x008B, 0xDEAD_BEEF, 0x67)
    assert entry == 0xDE00_8BAD_BEEF_0067
    seg = gdt.segment_from_gdt_entry(entry, 5)
    assert (seg.base, seg.limit, seg.g, seg.selector) == (0xDEAD_BEEF, 0x67, 0, 0x28)


def test_null_entry_is_unusable() -> None:
    seg = gdt.segment_from_gdt_entry(0, 0)
    assert (seg.present, seg.unusable) == (0, 1)


def test_boot_segments() -> None:
    s = gdt.boot_segments()
    assert (s.cs.selector, s.ds.selector, s.tr.selector) == (0x08, 0x10, 0x18)
    assert s.cs.l == 1 and s.cs.db == 0 and s.cs.type == 0xB
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        assert seg == s.ds
        assert (seg.base, seg.limit, seg.type, seg.db, seg.l, seg.g) == (0, 0xFFFF_FFFF, 3, 1, 0, 1)
    assert (s.tr.type, s.tr.s, s.tr.present, s.tr.limit) == (0xB, 0, 1, 0xFFFF_FFFF)
    assert (s.gdt.base, s.gdt.limit) == (0x500, 31)
    assert (s.idt.base, s.idt.limit) == (0x520, 7)


def test_pvh_descriptor_values() -> None:
    # Firecracker's PVH GDT (regs.rs): 32-bit code 0xc09b, data 0xc093, TSS 0x008b limit 0x67.
    assert [hex(e) for e in gdt.PVH_GDT] == [
        "0x0",
        "0xcf9b000000ffff",
        "0xcf93000000ffff",
        "0x8b0000000067",
    ]
    assert gdt.gdt_bytes(gdt.PVH_GDT) == bytes.fromhex(
        "0000000000000000 ffff0000009bcf00 ffff00000093cf00 67000000008b0000"
    )


def test_pvh_segments() -> None:
    # The PVH ABI: flat 32-bit code and data (base 0, limit 0xffffffff), a 32-bit busy TSS of
    # limit 0x67.
    s = gdt.boot_segments(gdt.PVH_GDT)
    assert (s.cs.selector, s.ds.selector, s.tr.selector) == (0x08, 0x10, 0x18)
    assert (s.cs.base, s.cs.limit, s.cs.type, s.cs.db, s.cs.l, s.cs.g) == (
        0, 0xFFFF_FFFF, 0xB, 1, 0, 1,
    )  # fmt: skip
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        assert (seg.base, seg.limit, seg.type, seg.db, seg.l, seg.g) == (0, 0xFFFF_FFFF, 3, 1, 0, 1)
    assert (s.tr.base, s.tr.limit, s.tr.type, s.tr.s, s.tr.present, s.tr.g) == (
        0, 0x67, 0xB, 0, 1, 0,
    )  # fmt: skip
    assert (s.gdt.base, s.gdt.limit) == (layout.BOOT_GDT_START, 31)
    writes = gdt.boot_gdt_writes(gdt.PVH_GDT)
    assert writes[0] == (layout.BOOT_GDT_START, gdt.gdt_bytes(gdt.PVH_GDT))


@pytest.mark.parametrize("table", [gdt.BOOT_GDT, gdt.PVH_GDT], ids=["64-bit", "pvh"])
@pytest.mark.parametrize("index", range(4))
def test_segment_matches_its_entry(table: tuple[int, ...], index: int) -> None:
    """Rebuilding an entry from its decoded segment gives the same u64."""
    entry = table[index]
    seg = gdt.segment_from_gdt_entry(entry, index)
    flags = (
        seg.type
        | seg.s << 4
        | seg.dpl << 5
        | seg.present << 7
        | seg.avl << 12
        | seg.l << 13
        | seg.db << 14
        | seg.g << 15
    )
    limit = seg.limit >> 12 if seg.g else seg.limit
    assert gdt.gdt_entry(flags, seg.base, limit) == entry


def test_writes() -> None:
    writes = gdt.boot_gdt_writes()
    assert writes == [(layout.BOOT_GDT_START, gdt.gdt_bytes()), (layout.BOOT_IDT_START, bytes(8))]
    # The GDT ends where the IDT starts.
    assert layout.BOOT_GDT_START + len(gdt.gdt_bytes()) == layout.BOOT_IDT_START


@given(
    flags=st.integers(0, 0xFFFF),
    base=st.integers(0, 0xFFFF_FFFF),
    limit=st.integers(0, 0xF_FFFF),
)
def test_any_descriptor_decodes_to_its_parts(flags: int, base: int, limit: int) -> None:
    seg = gdt.segment_from_gdt_entry(gdt.gdt_entry(flags, base, limit), 1)
    assert seg.base == base
    assert seg.limit == ((limit << 12) | 0xFFF if flags & 0x8000 else limit)
    assert seg.type == flags & 0xF
    assert (seg.s, seg.dpl, seg.present) == ((flags >> 4) & 1, (flags >> 5) & 3, (flags >> 7) & 1)
    assert (seg.avl, seg.l, seg.db, seg.g) == tuple((flags >> b) & 1 for b in (12, 13, 14, 15))
