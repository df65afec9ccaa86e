"""Identity page tables: every entry's exact value, and the long-mode register bits."""

from __future__ import annotations

import struct

from runner.arch.x86_64 import layout
from runner.arch.x86_64 import page_tables as pt


def entries(table: bytes) -> list[int]:
    return list(struct.unpack("<512Q", table))


def test_tables_are_where_firecracker_puts_them() -> None:
    writes = pt.page_table_writes()
    assert [gpa for gpa, _ in writes] == [0x9000, 0xA000, 0xB000]
    assert all(len(data) == 4096 for _, data in writes)


def test_entry_values() -> None:
    (_, pml4), (_, pdpt), (_, pd) = pt.page_table_writes()
    assert pml4[:8].hex() == "03a0000000000000"
    assert entries(pml4) == [0xA003] + [0] * 511
    assert entries(pdpt) == [0xB003] + [0] * 511
    assert pd[:16] == bytes.fromhex("8300000000000000 8300200000000000")
    assert entries(pd) == [(i << 21) | 0x83 for i in range(512)]
    assert entries(pd)[-1] == 0x3FE0_0083


def test_identity_map_covers_1gib() -> None:
    (_, pd) = pt.page_table_writes()[2]
    mapped = [e & ~0xFFF for e in entries(pd)]
    assert mapped == list(range(0, pt.IDENTITY_MAPPED, pt.LARGE_PAGE_SIZE))
    assert pt.IDENTITY_MAPPED == layout.GIB


def test_long_mode_registers() -> None:
    assert pt.LONG_MODE_CR0 == 0x8000_0001
    assert pt.LONG_MODE_CR3 == 0x9000
    assert pt.LONG_MODE_CR4 == 0x20
    assert pt.LONG_MODE_EFER == 0x500
    # KVM's reset values: CR0 = CD | NW | ET, CR4 = 0, EFER = 0.
    regs = pt.long_mode_registers(0x6000_0010, 0, 0)
    assert (regs.cr0, regs.cr3, regs.cr4, regs.efer) == (0xE000_0011, 0x9000, 0x20, 0x500)
