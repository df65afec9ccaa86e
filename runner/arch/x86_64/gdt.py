"""The boot GDTs and the segment registers a vCPU starts the kernel (64-bit or PVH entry) with.

Facts (Intel SDM vol. 3 §3.4.5 "Segment Descriptors"; Firecracker arch/x86_64/gdt.rs, regs.rs):

- A descriptor is one u64: limit[15:0] in bits 0-15, base[23:0] in 16-39, the access byte
  (type 4 bits, S, DPL 2 bits, P) in 40-47, limit[19:16] in 48-51, the flags AVL, L, D/B, G in
  52-55 and base[31:24] in 56-63. With G set the 20-bit limit counts 4 KiB pages.
- KVM takes segment registers from KVM_SET_SREGS as `struct kvm_segment` (the hidden, cached
  part); the GDT in guest memory is only read when the guest reloads a selector. The kernel's
  64-bit entry (startup_64) loads its own GDT and reloads every segment register before it
  relies on a selector, so the boot GDT only has to agree with the registers.
- boot.rst's 64-bit protocol long asked for __BOOT_CS = 0x10 and __BOOT_DS = 0x18 (a later
  patch to it drops that: 64-bit mode does not use segment bases and limits). Like Firecracker
  and libkrun, vmrun puts code at 0x08 and data at 0x10, which 64-bit kernels accept for the
  reason above.
- The TSS entry is an 8-byte busy-TSS descriptor as in Firecracker (a real 64-bit TSS
  descriptor is 16 bytes); only TR's cached value matters until the kernel loads its own.
- The PVH entry (Xen's docs/misc/pvh.pandoc, "x86/HVM direct boot ABI") is reached in 32-bit
  protected mode: CS a 32-bit execute/read segment and DS, ES, SS 32-bit read/write segments,
  all with base 0 and limit 0xffffffff; TR a 32-bit busy TSS with base 0 and limit 0x67;
  selector values are unspecified (pvh_start_xen loads its own GDT first thing). vmrun keeps
  the 64-bit boot's indices (code 0x08, data 0x10, TSS 0x18), as Firecracker does.
"""

from __future__ import annotations

import struct

import attrs

from runner.arch.x86_64 import layout

# Access byte + flags nibble, as Firecracker's `flags` argument: bits 0-7 are the access byte,
# bits 12-15 the G, D/B, L, AVL flags.
CODE64_FLAGS = 0xA09B  # G, L; present, DPL 0, code: execute/read, accessed
DATA_FLAGS = 0xC093  # G, D/B (32-bit); present, DPL 0, data: read/write, accessed
TSS_FLAGS = 0x808B  # G; present, DPL 0, system: busy TSS
CODE32_FLAGS = 0xC09B  # G, D/B (32-bit); present, DPL 0, code: execute/read, accessed
TSS32_FLAGS = 0x008B  # byte granular; present, DPL 0, system: busy 32-bit TSS
FLAT_LIMIT = 0xFFFFF  # 20-bit limit: with G, the whole 4 GiB
TSS32_LIMIT = 0x67  # a 32-bit TSS is 104 bytes

NULL_INDEX, CODE_INDEX, DATA_INDEX, TSS_INDEX = range(4)


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """One descriptor as a u64, from Firecracker-style flags, a 32-bit base and a 20-bit limit."""
    return (
        ((base & 0xFF00_0000) << 32)
        | ((flags & 0xF0FF) << 40)
        | ((limit & 0xF_0000) << 32)
        | ((base & 0x00FF_FFFF) << 16)
        | (limit & 0xFFFF)
    )


BOOT_GDT: tuple[int, ...] = (
    gdt_entry(0, 0, 0),
    gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT),
    gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT),
    gdt_entry(TSS_FLAGS, 0, FLAT_LIMIT),
)
# The PVH entry's GDT: the same indices, with 32-bit code and a 32-bit TSS.
PVH_GDT: tuple[int, ...] = (
    gdt_entry(0, 0, 0),
    gdt_entry(CODE32_FLAGS, 0, FLAT_LIMIT),
    gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT),
    gdt_entry(TSS32_FLAGS, 0, TSS32_LIMIT),
)


@attrs.frozen
class Segment:
    """The fields of `struct kvm_segment` (linux/kvm.h), by the same names."""

    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int  # noqa: E741 - the kernel's name for the long-mode bit
    g: int
    avl: int
    unusable: int


@attrs.frozen
class DescriptorTable:
    """The fields of `struct kvm_dtable`: a GDTR or IDTR value."""

    base: int
    limit: int


@attrs.frozen
class BootSegments:
    """Every segment and descriptor-table register of `struct kvm_sregs` the boot sets."""

    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    gdt: DescriptorTable
    idt: DescriptorTable


def segment_from_gdt_entry(entry: int, index: int) -> Segment:
    """The kvm_segment a CPU would cache after loading selector `index * 8` from `entry`."""
    g = (entry >> 55) & 1
    limit = ((entry >> 32) & 0xF_0000) | (entry & 0xFFFF)
    if g:
        limit = (limit << 12) | 0xFFF
    present = (entry >> 47) & 1
    return Segment(
        base=((entry >> 32) & 0xFF00_0000) | ((entry >> 16) & 0x00FF_FFFF),
        limit=limit,
        selector=index * 8,
        type=(entry >> 40) & 0xF,
        present=present,
        dpl=(entry >> 45) & 0x3,
        db=(entry >> 54) & 1,
        s=(entry >> 44) & 1,
        l=(entry >> 53) & 1,
        g=g,
        avl=(entry >> 52) & 1,
        unusable=0 if present else 1,
    )


def gdt_bytes(table: tuple[int, ...] = BOOT_GDT) -> bytes:
    return b"".join(struct.pack("<Q", entry) for entry in table)


def boot_segments(table: tuple[int, ...] = BOOT_GDT) -> BootSegments:
    """Segment registers for an entry through `table` (BOOT_GDT: the 64-bit entry, PVH_GDT:
    the PVH entry): its code segment in CS, flat data everywhere else."""
    code = segment_from_gdt_entry(table[CODE_INDEX], CODE_INDEX)
    data = segment_from_gdt_entry(table[DATA_INDEX], DATA_INDEX)
    tss = segment_from_gdt_entry(table[TSS_INDEX], TSS_INDEX)
    return BootSegments(
        cs=code,
        ds=data,
        es=data,
        fs=data,
        gs=data,
        ss=data,
        tr=tss,
        gdt=DescriptorTable(layout.BOOT_GDT_START, len(table) * 8 - 1),
        idt=DescriptorTable(layout.BOOT_IDT_START, 8 - 1),
    )


def boot_gdt_writes(table: tuple[int, ...] = BOOT_GDT) -> list[tuple[int, bytes]]:
    """(guest physical address, bytes) for the boot GDT `table` and its one empty IDT entry."""
    return [(layout.BOOT_GDT_START, gdt_bytes(table)), (layout.BOOT_IDT_START, bytes(8))]
