"""Where things are in the guest's physical address space and interrupt lines (x86_64).

Every magic address and interrupt number of the machine lives here, each with why.
"""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

# The kernel is loaded at 1 MiB (HIMEM_START), above the real-mode area and the BIOS
# hole, where the boot protocol expects a relocatable kernel when it does not say otherwise.
KERNEL_START = 1 * MIB

# virtio-mmio devices sit in the 32-bit MMIO gap below 4 GiB (768 MiB wide, as Firecracker
# and libkrun lay it out), one 4 KiB register window each.
MMIO_GAP_START = 4 * GIB - 768 * MIB  # 0xd000_0000
MMIO_GAP_SIZE = 768 * MIB
VIRTIO_MMIO_START = MMIO_GAP_START
VIRTIO_MMIO_SIZE = 4 * KIB

# IOAPIC pins for virtio-mmio devices, one per device: 0-4 are taken by the legacy devices
# (PIT 0, i8042 1, cascade 2, COM2/4 3, COM1/3 4), and 8 by the RTC, which the DSDT
# declares there (a virtio device on it fails its probe: rtc_cmos holds the line
# exclusively); pins 5..23 but 8 of the 24-pin IOAPIC are free.
RTC_IRQ = 8
VIRTIO_IRQ_FIRST = 5
VIRTIO_IRQ_LAST = 23
VIRTIO_IRQS = tuple(irq for irq in range(VIRTIO_IRQ_FIRST, VIRTIO_IRQ_LAST + 1) if irq != RTC_IRQ)
VIRTIO_IRQ_COUNT = len(VIRTIO_IRQS)

# Linux x86's COMMAND_LINE_SIZE: longer command lines are cut by the kernel.
CMDLINE_MAX_BYTES = 2048

# What Linux needs beyond its own image and the initramfs to reach init and run a small
# workload (page tables, slab, the unpacked initramfs): below this, boots fail with OOM.
GUEST_WORKING_SET = 48 * MIB

# --- Below 1 MiB: where the boot structures go (the 64-bit Linux boot protocol) -------------
# Addresses follow Firecracker's arch/x86_64/layout.rs and regs.rs, so a boot that works there
# works here; all sit in the first 640 KiB, which is RAM in the e820 map, except the MP table.

# The boot GDT (null, code, data, TSS: 4 x 8 bytes) at 0x500, just above the real-mode IVT
# (0x0-0x3ff) and the BIOS data area (0x400-0x4ff; Linux reads its EBDA pointer at 0x40e, so
# that area stays zero rather than holding boot structures).
BOOT_GDT_START = 0x500
# One empty 8-byte IDT right after the GDT: the kernel loads its own before enabling
# interrupts, so the boot IDT only has to be a valid (limit 7) table.
BOOT_IDT_START = 0x520

# The PVH entry's boot information (a kernel entered through its Xen PHYS32_ENTRY note gets
# no zero page): struct hvm_start_info (56 bytes; EBX points here), then the module list
# (one 32-byte hvm_modlist_entry: the initramfs), then the memory map (24-byte entries up to
# the zero page: 164 of them, more than the 128 Linux copies). The page below the zero page
# is used by nothing else; the addresses are Firecracker's, except its memory map, which
# shares the zero page's address because the two boots never meet.
PVH_INFO_START = 0x6000
PVH_MODLIST_START = 0x6040
PVH_MEMMAP_START = 0x6080
PVH_MEMMAP_END = 0x7000

# struct boot_params (the "zero page", 4 KiB); RSI points here at the 64-bit entry.
ZERO_PAGE_START = 0x7000
ZERO_PAGE_SIZE = 4 * KIB
# The initial RSP/RBP: the top of the page between the zero page and the page tables, so the
# few pushes of the early entry code land in RAM that nothing else uses.
BOOT_STACK_POINTER = 0x8FF0

# Identity page tables for the first 1 GiB (the 64-bit entry needs paging on; startup_64
# only runs from the identity map until it builds its own): one 4 KiB page per level.
PML4_START = 0x9000
PDPTE_START = 0xA000
PDE_START = 0xB000

# The kernel command line (CMDLINE_MAX_BYTES with its NUL), well above the page tables and
# below the EBDA; cmd_line_ptr points here.
CMDLINE_START = 0x20000

# The top of conventional memory (639 KiB): RAM in the e820 map ends here, as on a PC with a
# 1 KiB Extended BIOS Data Area. Linux scans 0x9fc00-0xa0000 for the MP floating pointer.
EBDA_START = 0x9FC00
# The Intel MP table (floating pointer + configuration table) goes in the EBDA; the e820
# map leaves 0x9fc00-1 MiB out, so the kernel never reuses it as RAM. With 254 vCPUs it is
# 5.2 KiB, so it may run past 0xa0000: that is still backed guest memory (the first memory
# slot starts at 0). The ACPI tables start at ACPI_START (0xe0000), well past its end.
MPTABLE_START = EBDA_START
# The ACPI tables (RSDP first, then XSDT, FADT, DSDT, MADT) go at the start of the BIOS
# read-only area, where Linux scans for the RSDP ("RSD PTR ", 16-byte aligned, 0xe0000 up to
# 1 MiB) when the zero page gives no acpi_rsdp_addr; Firecracker's RSDP is here too. The e820
# map leaves it out of RAM, so the kernel keeps the tables; they must end below SMBIOS_START.
ACPI_START = 0xE0000
# Where RAM resumes above the legacy VGA/BIOS hole (0xa0000-0xfffff) in the e820 map.
HIMEM_START = 1 * MIB
# The SMBIOS 3.0 entry point ("_SM3_", 24 bytes), its structure table right after: without
# EFI, Linux scans 0xf0000-0xfffff in 16-byte steps for the entry point and looks at 0xf0000
# first, so no OEM string in the table can be taken for one. The ACPI tables end far below
# (2846 bytes from ACPI_START with 254 vCPUs); the e820 map leaves this area out of RAM too,
# so the kernel keeps the tables.
SMBIOS_START = 0xF0000
# The SMBIOS area ends where RAM, and the kernel, begin.
SMBIOS_END = HIMEM_START

# --- Above the RAM: fixed interrupt-controller windows inside the 32-bit MMIO gap -----------
# The default I/O APIC and local APIC base addresses (Linux apicdef.h), which KVM's
# in-kernel irqchip emulates and the MP table announces.
IOAPIC_START = 0xFEC0_0000
APIC_START = 0xFEE0_0000

# 4 GiB: memory that does not fit below the MMIO gap continues here.
FIRST_ADDR_PAST_32BITS = 4 * GIB
