"""The PVH entry: struct hvm_start_info, its module list and memory map, and the CPU state.

Facts this module relies on (Linux include/xen/interface/hvm/start_info.h,
arch/x86/platform/pvh/enlighten.c and head.S; Xen docs/misc/pvh.pandoc):

- A kernel whose ELF notes carry XEN_ELFNOTE_PHYS32_ENTRY (runner/boot/elf.py) may be entered
  there in 32-bit protected mode with paging off: of CR0's writable bits only PE is set, CR4
  is 0 (and EFER too: no long mode), CS/DS/ES/SS are flat 4 GiB segments and TR a 32-bit TSS
  (gdt.PVH_GDT), EFLAGS has IF, TF and VM clear, and EBX holds the guest physical address of
  struct hvm_start_info. The stack, the GDT and the page tables are the kernel's to set up.
- struct hvm_start_info, 56 bytes, little-endian: magic u32 (XEN_HVM_START_MAGIC_VALUE,
  "xEn3" with the 0x80 bit of the "E" set), version u32, flags u32 (SIF_*: none for a guest
  that is not a Xen domain), nr_modules u32, modlist_paddr u64, cmdline_paddr u64,
  rsdp_paddr u64; version 1 adds memmap_paddr u64, memmap_entries u32 and a reserved u32.
  An address of 0 means "not given".
- struct hvm_modlist_entry, 32 bytes: paddr, size, cmdline_paddr, reserved (u64 each). Linux
  takes the first module as its initrd, into the 32-bit ramdisk_image and ramdisk_size fields
  of its boot_params: the initrd must lie below 4 GiB. The command line's address goes into
  the 32-bit cmd_line_ptr likewise.
- struct hvm_memmap_table_entry, 24 bytes: addr u64, size u64, type u32 (the e820 types:
  1 RAM, 2 reserved, ...), reserved u32. Outside Xen this is the only memory map Linux gets
  (version 0, or no entries, is a BUG() there). It copies the entries into its 128-entry e820
  table without checking the count, then appends the ISA hole (0xa0000 to 1 MiB) as reserved
  when there is room for it.
- rsdp_paddr becomes Linux's ACPI root pointer (pvh_get_root_pointer) instead of a scan of
  the BIOS area; kernels that find their CPUs only in the MADT need it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from runner.arch.x86_64 import layout, page_tables
from runner.arch.x86_64.boot_params import E820Entry, Initrd
from runner.errors import VmrunError

XEN_HVM_START_MAGIC_VALUE = 0x336E_C578
START_INFO_VERSION = 1  # the first version with a memory map, which a non-Xen guest needs

START_INFO = struct.Struct("<IIIIQQQQII")  # 56 bytes
MODLIST_ENTRY = struct.Struct("<QQQQ")  # 32 bytes
MEMMAP_ENTRY = struct.Struct("<QQII")  # 24 bytes

# Linux's e820 table in boot_params holds 128 entries; it adds one for the ISA hole.
LINUX_MEMMAP_MAX = 127
MEMMAP_CAPACITY = (layout.PVH_MEMMAP_END - layout.PVH_MEMMAP_START) // MEMMAP_ENTRY.size

# The entry's control registers: protected mode, with paging, PAE and long mode off. ET
# is hard-wired to 1 on every CPU since the 486 (Firecracker sets it too); KVM's reset CR0
# also has CD and NW (caching off), which "all other writable bits cleared" turns off.
ENTRY_CONTROL = page_tables.ControlRegisters(
    cr0=page_tables.CR0_PE | page_tables.CR0_ET, cr3=0, cr4=0, efer=0
)

_FOUR_GIB = layout.FIRST_ADDR_PAST_32BITS


class PvhError(VmrunError, ValueError):
    """Boot information that the PVH entry cannot carry as given."""


def start_info(
    *,
    cmdline_addr: int,
    rsdp_addr: int,
    memmap_addr: int,
    memmap_entries: int,
    modlist_addr: int = 0,
    nr_modules: int = 0,
) -> bytes:
    """struct hvm_start_info, version 1, for a guest that is not a Xen domain (no flags)."""
    return START_INFO.pack(
        XEN_HVM_START_MAGIC_VALUE,
        START_INFO_VERSION,
        0,
        nr_modules,
        modlist_addr,
        cmdline_addr,
        rsdp_addr,
        memmap_addr,
        memmap_entries,
        0,
    )


def modlist_entry(address: int, size: int) -> bytes:
    """One struct hvm_modlist_entry, without a command line of its own."""
    return MODLIST_ENTRY.pack(address, size, 0, 0)


def memmap_entry(entry: E820Entry) -> bytes:
    """One struct hvm_memmap_table_entry."""
    return MEMMAP_ENTRY.pack(entry.addr, entry.size, int(entry.type), 0)


def start_info_writes(
    memory_map: Sequence[E820Entry],
    *,
    cmdline_addr: int,
    rsdp_addr: int,
    initrd: Initrd | None,
) -> list[tuple[int, bytes]]:
    """(guest physical address, bytes) of the start info, the module list (the initramfs, if
    any) and the memory map, at their places in layout.py; raises PvhError."""
    if not memory_map:
        raise PvhError("the PVH entry needs a memory map; this one is empty")
    if len(memory_map) > min(LINUX_MEMMAP_MAX, MEMMAP_CAPACITY):
        raise PvhError(
            f"{len(memory_map)} memory map entries; the PVH entry takes at most "
            f"{min(LINUX_MEMMAP_MAX, MEMMAP_CAPACITY)}"
        )
    if not 0 < cmdline_addr < _FOUR_GIB:
        raise PvhError(f"the command line at {cmdline_addr:#x} is not below 4 GiB")
    writes = []
    if initrd is not None:
        if initrd.address + initrd.size > _FOUR_GIB:
            raise PvhError(
                f"the initramfs at {initrd.address:#x} (+{initrd.size:#x}) does not end below "
                "4 GiB, where the PVH entry's 32-bit ramdisk fields reach"
            )
        writes.append((layout.PVH_MODLIST_START, modlist_entry(initrd.address, initrd.size)))
    info = start_info(
        cmdline_addr=cmdline_addr,
        rsdp_addr=rsdp_addr,
        memmap_addr=layout.PVH_MEMMAP_START,
        memmap_entries=len(memory_map),
        modlist_addr=layout.PVH_MODLIST_START if initrd is not None else 0,
        nr_modules=1 if initrd is not None else 0,
    )
    writes.insert(0, (layout.PVH_INFO_START, info))
    writes.append((layout.PVH_MEMMAP_START, b"".join(memmap_entry(e) for e in memory_map)))
    return writes
