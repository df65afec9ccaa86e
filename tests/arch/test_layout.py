"""The boot structures below 1 MiB do not overlap and sit where the kernel can reach them."""

from __future__ import annotations

import itertools

from runner.arch.x86_64 import boot_params, gdt, layout, mptable, page_tables


def low_memory_areas() -> dict[str, range]:
    areas = {
        "gdt": range(layout.BOOT_GDT_START, layout.BOOT_GDT_START + len(gdt.gdt_bytes())),
        "idt": range(layout.BOOT_IDT_START, layout.BOOT_IDT_START + 8),
        "zero page": range(layout.ZERO_PAGE_START, layout.ZERO_PAGE_START + 4096),
        "pvh start info": range(layout.PVH_INFO_START, layout.PVH_INFO_START + 56),
        "pvh module list": range(layout.PVH_MODLIST_START, layout.PVH_MODLIST_START + 32),
        "pvh memory map": range(layout.PVH_MEMMAP_START, layout.PVH_MEMMAP_END),
        "stack": range(layout.BOOT_STACK_POINTER - 0x800, layout.BOOT_STACK_POINTER),
        "cmdline": range(layout.CMDLINE_START, layout.CMDLINE_START + layout.CMDLINE_MAX_BYTES),
        "mptable": range(
            layout.MPTABLE_START, layout.MPTABLE_START + mptable.mptable_size(mptable.MAX_VCPUS)
        ),
    }
    for gpa, data in page_tables.page_table_writes():
        areas[f"page table {gpa:#x}"] = range(gpa, gpa + len(data))
    return areas


def test_no_overlaps() -> None:
    areas = sorted(low_memory_areas().items(), key=lambda kv: kv[1].start)
    for (name_a, a), (name_b, b) in itertools.pairwise(areas):
        assert a.stop <= b.start, f"{name_a} overlaps {name_b}"
    assert areas[-1][1].stop <= layout.HIMEM_START <= layout.KERNEL_START


def test_everything_but_the_mptable_is_ram() -> None:
    ram = boot_params.e820_map(128 * layout.MIB)
    for name, area in low_memory_areas().items():
        in_ram = any(e.addr <= area.start and area.stop <= e.end for e in ram)
        assert in_ram == (name != "mptable"), name


def test_interrupt_controllers_in_the_mmio_gap() -> None:
    gap = range(layout.MMIO_GAP_START, layout.MMIO_GAP_START + layout.MMIO_GAP_SIZE)
    assert layout.IOAPIC_START in gap and layout.APIC_START in gap
    last_virtio = layout.VIRTIO_MMIO_START + layout.VIRTIO_IRQ_COUNT * layout.VIRTIO_MMIO_SIZE
    assert last_virtio <= layout.IOAPIC_START
    assert gap.stop == layout.FIRST_ADDR_PAST_32BITS
