"""Identity page tables for the first 1 GiB and the control registers of long mode.

Facts (Intel SDM vol. 3 §4.5 "4-Level Paging", §9.8.5 "Initializing IA-32e Mode";
Documentation/arch/x86/boot.rst "64-bit boot protocol"; Firecracker arch/x86_64/regs.rs):

- The 64-bit entry must be reached in long mode with paging on and identity mappings for the
  loaded kernel (init_size bytes from where it was loaded), the zero page and the command
  line (boot.rst); the initrd need not be mapped, the kernel reaches it through its own
  tables. KVM_SET_SREGS can set CR0.PG, CR4.PAE and EFER.LME|LMA together, so the vCPU starts
  directly in long mode; no mode switch runs.
- One PML4 entry -> one PDPT entry -> a page directory of 512 2 MiB pages maps 0..1 GiB.
  Entries: bit 0 present, bit 1 writable, bit 7 (PS) in a PDE makes it a 2 MiB page.
- The kernel builds its own page tables early (startup_64 / __startup_64), so these only
  have to cover those three: the loader must keep them below IDENTITY_MAPPED (1 GiB).
- KVM's reset CR0 is 0x60000010 (CD, NW, ET); like Firecracker, the builder ORs the bits
  below into what KVM_GET_SREGS returns rather than replacing it.
"""

from __future__ import annotations

import struct

import attrs

from runner.arch.x86_64 import layout

PAGE_SIZE = 4 * layout.KIB
ENTRIES_PER_TABLE = 512
LARGE_PAGE_SIZE = 2 * layout.MIB
IDENTITY_MAPPED = ENTRIES_PER_TABLE * LARGE_PAGE_SIZE  # 1 GiB

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_PAGE_SIZE = 1 << 7  # in a PDE: this entry maps a 2 MiB page

CR0_PE = 1 << 0  # protected mode
CR0_ET = 1 << 4  # extension type (always 1 on modern CPUs; KVM's reset value has it)
CR0_PG = 1 << 31  # paging
CR4_PAE = 1 << 5  # physical address extension, required by long mode
EFER_LME = 1 << 8  # long mode enable
EFER_LMA = 1 << 10  # long mode active (KVM_SET_SREGS accepts it set with PG and LME)

# What the 64-bit entry needs, to be ORed into KVM's reset values (CR3 is replaced).
LONG_MODE_CR0 = CR0_PE | CR0_PG
LONG_MODE_CR3 = layout.PML4_START
LONG_MODE_CR4 = CR4_PAE
LONG_MODE_EFER = EFER_LME | EFER_LMA


@attrs.frozen
class ControlRegisters:
    """The control-register fields of `struct kvm_sregs` that the boot sets."""

    cr0: int
    cr3: int
    cr4: int
    efer: int


def long_mode_registers(cr0: int, cr4: int, efer: int) -> ControlRegisters:
    """KVM's current cr0, cr4 and efer with long mode and the boot page tables switched on."""
    return ControlRegisters(
        cr0=cr0 | LONG_MODE_CR0,
        cr3=LONG_MODE_CR3,
        cr4=cr4 | LONG_MODE_CR4,
        efer=efer | LONG_MODE_EFER,
    )


def _table(entries: list[int]) -> bytes:
    """A whole 4 KiB table, so memory left over from anything else cannot leak in."""
    padded = entries + [0] * (ENTRIES_PER_TABLE - len(entries))
    return struct.pack(f"<{ENTRIES_PER_TABLE}Q", *padded)


def page_table_writes() -> list[tuple[int, bytes]]:
    """(guest physical address, bytes) for the PML4, PDPT and page directory."""
    table_flags = PTE_PRESENT | PTE_WRITABLE
    pml4 = _table([layout.PDPTE_START | table_flags])
    pdpt = _table([layout.PDE_START | table_flags])
    pd = _table(
        [i * LARGE_PAGE_SIZE | table_flags | PTE_PAGE_SIZE for i in range(ENTRIES_PER_TABLE)]
    )
    return [(layout.PML4_START, pml4), (layout.PDPTE_START, pdpt), (layout.PDE_START, pd)]
