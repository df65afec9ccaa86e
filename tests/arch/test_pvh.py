"""The PVH entry's boot information: known bytes of hvm_start_info, the module list and the
memory map (start_info.h's layout), and what it refuses."""

from __future__ import annotations

import pytest

from runner.arch.x86_64 import boot_params, layout, pvh
from runner.arch.x86_64.boot_params import E820Entry, E820Type, Initrd

MIB, GIB = layout.MIB, layout.GIB


def test_struct_sizes_are_the_headers() -> None:
    assert (pvh.START_INFO.size, pvh.MODLIST_ENTRY.size, pvh.MEMMAP_ENTRY.size) == (56, 32, 24)


def test_start_info_bytes() -> None:
    info = pvh.start_info(
        cmdline_addr=0x2_0000,
        rsdp_addr=0xE_0000,
        memmap_addr=0x6080,
        memmap_entries=3,
        modlist_addr=0x6040,
        nr_modules=1,
    )
    assert info == bytes.fromhex(
        "78c56e33 01000000 00000000 01000000"  # magic "xEn3"|0x80, version 1, flags, modules
        "4060000000000000"  # modlist_paddr
        "0000020000000000"  # cmdline_paddr
        "00000e0000000000"  # rsdp_paddr
        "8060000000000000"  # memmap_paddr (version 1)
        "03000000 00000000"  # memmap_entries, reserved
    )


def test_module_and_memory_map_entries() -> None:
    assert pvh.modlist_entry(0xCF00_0000, 0x12_3456) == bytes.fromhex(
        "000000cf00000000 5634120000000000 0000000000000000 0000000000000000"
    )
    entry = E820Entry(0x10_0000, 0xCFF0_0000, E820Type.RAM)
    assert pvh.memmap_entry(entry) == bytes.fromhex(
        "0000100000000000 0000f0cf00000000 01000000 00000000"
    )
    reserved = E820Entry(0xA_0000, 0x6_0000, E820Type.RESERVED)
    assert pvh.memmap_entry(reserved)[16:20] == b"\x02\0\0\0"


def test_writes_for_a_machine_with_memory_above_4_gib() -> None:
    e820 = boot_params.e820_map(4 * GIB)
    initrd = Initrd(0xCF00_0000, 0x12_3456)
    writes = dict(
        pvh.start_info_writes(e820, cmdline_addr=0x2_0000, rsdp_addr=0xE_0000, initrd=initrd)
    )
    assert sorted(writes) == [0x6000, 0x6040, 0x6080]
    assert writes[layout.PVH_INFO_START] == pvh.start_info(
        cmdline_addr=0x2_0000,
        rsdp_addr=0xE_0000,
        memmap_addr=0x6080,
        memmap_entries=3,
        modlist_addr=0x6040,
        nr_modules=1,
    )
    assert writes[layout.PVH_MODLIST_START] == pvh.modlist_entry(0xCF00_0000, 0x12_3456)
    assert writes[layout.PVH_MEMMAP_START] == bytes.fromhex(
        # RAM below the EBDA, 1 MiB up to the MMIO gap, the rest above 4 GiB: the e820 map.
        "0000000000000000 00fc090000000000 01000000 00000000"
        "0000100000000000 0000f0cf00000000 01000000 00000000"
        "0000000001000000 0000003000000000 01000000 00000000"
    )


def test_without_an_initramfs_there_is_no_module_list() -> None:
    writes = pvh.start_info_writes(
        boot_params.e820_map(256 * MIB), cmdline_addr=0x2_0000, rsdp_addr=0xE_0000, initrd=None
    )
    assert [gpa for gpa, _ in writes] == [layout.PVH_INFO_START, layout.PVH_MEMMAP_START]
    info = pvh.START_INFO.unpack(writes[0][1])
    assert info[3:5] == (0, 0)  # nr_modules, modlist_paddr
    assert info[8] == 2  # memmap_entries
    assert len(writes[1][1]) == 2 * pvh.MEMMAP_ENTRY.size


def test_the_memory_map_fits_its_page_and_linux() -> None:
    assert layout.PVH_MEMMAP_START + pvh.LINUX_MEMMAP_MAX * pvh.MEMMAP_ENTRY.size <= (
        layout.PVH_MEMMAP_END
    )
    many = [E820Entry(i * 2 * MIB, MIB, E820Type.RAM) for i in range(pvh.LINUX_MEMMAP_MAX + 1)]
    with pytest.raises(pvh.PvhError, match="128 memory map entries; the PVH entry takes at most"):
        pvh.start_info_writes(many, cmdline_addr=0x2_0000, rsdp_addr=0, initrd=None)
    with pytest.raises(pvh.PvhError, match="needs a memory map"):
        pvh.start_info_writes([], cmdline_addr=0x2_0000, rsdp_addr=0, initrd=None)


@pytest.mark.parametrize(
    ("cmdline", "initrd", "message"),
    [
        (0x1_0000_0000, None, "the command line at 0x100000000 is not below 4 GiB"),
        (0, None, "the command line at 0x0 is not below 4 GiB"),
        (0x2_0000, Initrd(0xFFFF_F000, 0x2000), "does not end below 4 GiB"),
    ],
)
def test_what_32_bit_fields_cannot_hold(cmdline: int, initrd: Initrd | None, message: str) -> None:
    e820 = boot_params.e820_map(256 * MIB)
    with pytest.raises(pvh.PvhError, match=message):
        pvh.start_info_writes(e820, cmdline_addr=cmdline, rsdp_addr=0xE_0000, initrd=initrd)


def test_entry_control_registers() -> None:
    # Protected mode (PE, with the hard-wired ET), no paging, no PAE, no long mode.
    control = pvh.ENTRY_CONTROL
    assert (control.cr0, control.cr3, control.cr4, control.efer) == (0x11, 0, 0, 0)
