"""The zero page and the e820 map: known bytes, parse-back, and the checks on bad input."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.arch.x86_64 import boot_params as bp
from runner.arch.x86_64 import layout
from runner.arch.x86_64.boot_params import E820Entry, E820Type, Initrd

MIB, GIB = layout.MIB, layout.GIB
RAM = E820Type.RAM


def make_header(
    *,
    version: int = 0x020F,
    loadflags: int = 0x01 | 0x20 | 0x40,  # LOADED_HIGH, QUIET, KEEP_SEGMENTS
    xloadflags: int = 0x03,  # XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    cmdline_size: int = 2047,
    initrd_addr_max: int = 0x7FFF_FFFF,
    end: int = 0x26C,
) -> bytes:
    """A setup header as a bzImage carries it, from 0x1f1 to `end`, with marker bytes in the
    fields the zero page must keep."""
    page = bytearray(0x290)
    page[0x1F1] = 0x1B  # setup_sects
    struct.pack_into("<H", page, 0x1FE, 0xAA55)
    page[0x200] = 0xEB  # jmp
    page[0x201] = end - 0x202
    page[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", page, 0x206, version)
    page[0x211] = loadflags
    struct.pack_into("<I", page, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", page, 0x22C, initrd_addr_max)
    struct.pack_into("<I", page, 0x230, 0x200000)  # kernel_alignment
    page[0x234] = 1  # relocatable_kernel
    struct.pack_into("<H", page, 0x236, xloadflags)
    struct.pack_into("<I", page, 0x238, cmdline_size)
    struct.pack_into("<I", page, 0x260, 0x2345000)  # init_size
    return bytes(page[0x1F1:end])


def parse_e820(page: bytes) -> list[E820Entry]:
    entries = []
    for i in range(page[0x1E8]):
        addr, size, kind = struct.unpack_from("<QQI", page, 0x2D0 + 20 * i)
        entries.append(E820Entry(addr, size, E820Type(kind)))
    return entries


# --- e820 and memory slots -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mem", "expected"),
    [
        (128 * MIB, [(0, 0x9FC00), (0x10_0000, 0x0800_0000 - 0x10_0000)]),
        (3 * GIB, [(0, 0x9FC00), (0x10_0000, 0xC000_0000 - 0x10_0000)]),
        (
            4 * GIB,
            [(0, 0x9FC00), (0x10_0000, 0xD000_0000 - 0x10_0000), (0x1_0000_0000, 0x3000_0000)],
        ),
        (
            8 * GIB,
            [(0, 0x9FC00), (0x10_0000, 0xD000_0000 - 0x10_0000), (0x1_0000_0000, 0x1_3000_0000)],
        ),
    ],
    ids=["128MiB", "3GiB", "4GiB", "8GiB"],
)
def test_e820_map(mem: int, expected: list[tuple[int, int]]) -> None:
    entries = bp.e820_map(mem)
    assert [(e.addr, e.size) for e in entries] == expected
    assert all(e.type == RAM for e in entries)
    # Every byte of RAM but the EBDA and the legacy hole is listed.
    assert sum(e.size for e in entries) == mem - (0x10_0000 - 0x9FC00)


@pytest.mark.parametrize("mem", [128 * MIB, 3 * GIB, 0xD000_0000, 4 * GIB, 8 * GIB])
def test_memory_regions_cover_e820_and_avoid_the_gap(mem: int) -> None:
    regions = bp.memory_regions(mem)
    assert regions[0][0] == 0
    assert sum(size for _, size in regions) == mem
    gap = range(layout.MMIO_GAP_START, layout.MMIO_GAP_START + layout.MMIO_GAP_SIZE)
    for start, size in regions:
        assert start not in gap and start + size - 1 not in gap
        assert not (start < gap.start and start + size > gap.stop)
    for entry in bp.e820_map(mem):
        assert any(s <= entry.addr and entry.end <= s + n for s, n in regions), entry


def test_memory_regions_split_exactly_at_the_gap() -> None:
    assert bp.memory_regions(0xD000_0000) == [(0, 0xD000_0000)]
    assert bp.memory_regions(0xD000_1000) == [(0, 0xD000_0000), (0x1_0000_0000, 0x1000)]


@pytest.mark.parametrize("mem", [0, 1 * MIB, 128 * MIB + 1])
def test_memory_size_refused(mem: int) -> None:
    with pytest.raises(bp.BootParamsError):
        bp.memory_regions(mem)


# --- the zero page ---------------------------------------------------------------------------


def test_zero_page_known_bytes() -> None:
    header = make_header()
    page = bp.zero_page(header, e820=bp.e820_map(128 * MIB), cmdline_len=20)
    assert len(page) == 4096
    assert page[0x1EF] == 0  # sentinel
    assert page[0x210] == 0xFF  # type_of_loader
    assert page[0x211] == 0x81  # LOADED_HIGH kept, QUIET/KEEP_SEGMENTS dropped, CAN_USE_HEAP
    assert page[0x224:0x226].hex() == "00de"  # heap_end_ptr 0xde00
    assert page[0x228:0x22C].hex() == "00000200"  # cmd_line_ptr 0x20000
    assert page[0xC8:0xCC].hex() == "00000000"  # ext_cmd_line_ptr
    assert page[0x218:0x220] == bytes(8)  # no initrd
    assert page[0x1E8] == 2
    assert page[0x2D0 : 0x2D0 + 40] == bytes.fromhex(
        "0000000000000000 00fc090000000000 01000000"  # RAM 0 +0x9fc00
        "0000100000000000 0000f00700000000 01000000"  # RAM 1 MiB +127 MiB
    )
    assert page[0x2D0 + 40 :] == bytes(4096 - 0x2D0 - 40)


def test_zero_page_keeps_the_rest_of_the_header() -> None:
    header = make_header()
    page = bp.zero_page(header, e820=[], cmdline_len=0)
    written = {0x210, 0x211, 0x224, 0x225, *range(0x228, 0x22C)}
    for offset in range(0x1F1, 0x1F1 + len(header)):
        if offset not in written:
            assert page[offset] == header[offset - 0x1F1], hex(offset)
    assert page[:0x1F1] == bytes(0x1F1)
    assert page[0x1F1 + len(header) : 0x2D0] == bytes(0x2D0 - 0x1F1 - len(header))


@pytest.mark.parametrize("mem", [128 * MIB, 3 * GIB, 4 * GIB, 8 * GIB])
def test_e820_parses_back(mem: int) -> None:
    entries = bp.e820_map(mem)
    page = bp.zero_page(make_header(), e820=entries, cmdline_len=1)
    assert parse_e820(page) == entries


def test_e820_table_full() -> None:
    entries = [E820Entry(i * 2 * MIB, MIB, RAM) for i in range(128)]
    page = bp.zero_page(make_header(), e820=entries, cmdline_len=1)
    assert page[0x1E8] == 128
    assert parse_e820(page) == entries
    with pytest.raises(bp.BootParamsError, match="129 e820 entries"):
        bp.zero_page(make_header(), e820=[*entries, entries[0]], cmdline_len=1)


def test_cmdline_size_limit() -> None:
    header = make_header(cmdline_size=255)
    bp.zero_page(header, e820=[], cmdline_len=255)
    with pytest.raises(bp.BootParamsError, match="at most 255"):
        bp.zero_page(header, e820=[], cmdline_len=256)
    # The kernel's own limit never goes past vmrun's.
    with pytest.raises(bp.BootParamsError, match="at most 2047"):
        bp.zero_page(make_header(cmdline_size=0xFFFF), e820=[], cmdline_len=2048)


def test_initrd_below_4g() -> None:
    page = bp.zero_page(
        make_header(), e820=[], cmdline_len=1, initrd=Initrd(0x0700_0000, 0x12_3456)
    )
    assert page[0x218:0x220] == bytes.fromhex("00000007 56341200")
    assert page[0xC0:0xC8] == bytes(8)


def test_initrd_above_4g_uses_ext_fields() -> None:
    page = bp.zero_page(make_header(), e820=[], cmdline_len=1, initrd=Initrd(0x1_2000_0000, 0x1000))
    assert struct.unpack_from("<II", page, 0x218) == (0x2000_0000, 0x1000)
    assert struct.unpack_from("<II", page, 0xC0) == (0x1, 0x0)


def test_initrd_limits_without_above_4g() -> None:
    header = make_header(xloadflags=0x01, initrd_addr_max=0x37FF_FFFF)
    bp.zero_page(header, e820=[], cmdline_len=1, initrd=Initrd(0x3000_0000, 0x800_0000))
    with pytest.raises(bp.BootParamsError, match="initrd_addr_max"):
        bp.zero_page(header, e820=[], cmdline_len=1, initrd=Initrd(0x3000_0000, 0x800_0001))
    with pytest.raises(bp.BootParamsError, match="out of this kernel's reach"):
        bp.zero_page(header, e820=[], cmdline_len=1, cmdline_addr=0x1_0000_0000)


def test_header_checks() -> None:
    with pytest.raises(bp.BootParamsError, match="HdrS"):
        bp.zero_page(make_header().replace(b"HdrS", b"HdrX"), e820=[], cmdline_len=1)
    with pytest.raises(bp.BootParamsError, match="too old"):
        bp.zero_page(make_header(version=0x0205), e820=[], cmdline_len=1)
    with pytest.raises(bp.BootParamsError, match="setup header of"):
        bp.zero_page(make_header(end=0x230), e820=[], cmdline_len=1)
    with pytest.raises(bp.BootParamsError, match="setup header of"):
        bp.zero_page(make_header() + bytes(0x40), e820=[], cmdline_len=1)


def test_without_a_setup_header() -> None:
    """An ELF vmlinux: the header is made up as Firecracker does."""
    page = bp.zero_page(
        None, e820=bp.e820_map(128 * MIB), cmdline_len=2047, initrd=Initrd(0x1_0000_0000, 4096)
    )
    assert page[0x1FE:0x200].hex() == "55aa"
    assert page[0x202:0x206] == b"HdrS"
    assert page[0x210] == 0xFF
    assert page[0x230:0x234].hex() == "00000001"  # kernel_alignment 16 MiB
    assert struct.unpack_from("<I", page, 0xC0) == (1,)


def test_setup_header_from_image() -> None:
    header = make_header()
    image = bytes(0x1F1) + header + b"\xcc" * 64
    assert bp.setup_header_from_image(image) == header
    with pytest.raises(bp.BootParamsError, match="past the"):
        bp.setup_header_from_image(image[:0x250])
    with pytest.raises(bp.BootParamsError, match="too short"):
        bp.setup_header_from_image(bytes(0x100))


@given(pages=st.integers(min_value=257, max_value=(1 << 40) // 4096))
def test_e820_and_slots_agree_for_any_size(pages: int) -> None:
    mem = pages * 4096
    regions = bp.memory_regions(mem)
    assert sum(size for _, size in regions) == mem
    entries = bp.e820_map(mem)
    assert sum(e.size for e in entries) == mem - (layout.HIMEM_START - layout.EBDA_START)
    for a, b in itertools.pairwise(entries):
        assert a.end < b.addr  # sorted, with a hole between (the EBDA or the MMIO gap)
    for entry in entries:
        assert any(s <= entry.addr and entry.end <= s + n for s, n in regions), entry
