"""Kernel loaders: synthetic bzImages and ELF files built here, byte for byte; every error
with its message; compressed variants; random and truncated input; the real Debian kernel."""

from __future__ import annotations

import bz2
import glob
import gzip
import os
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.boot import loader
from runner.boot.loader import (
    FORMATS,
    KernelImageError,
    LoadedKernel,
    Segment,
    detect_format,
    load_kernel,
)

MIB = 1 << 20

# --- a synthetic bzImage ----------------------------------------------------------------------

KERNEL = bytes(range(256)) * 4  # the protected-mode kernel: 1024 bytes


def bzimage(
    *,
    version: int = 0x020F,
    setup_sects: int = 4,
    jump: int = 0x6A,  # header ends at 0x26c, as in Linux 6.1
    loadflags: int = 0x01,
    xloadflags: int = 0x7F,
    relocatable: int = 1,
    kernel_alignment: int = 2 * MIB,
    pref_address: int = 16 * MIB,
    init_size: int = 8 * MIB,
    cmdline_size: int = 2047,
    syssize: int | None = None,
    kernel: bytes = KERNEL,
) -> bytes:
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, -(-len(kernel) // 16) if syssize is None else syssize)
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x200:0x202] = bytes([0xEB, jump])
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    setup[0x234] = relocatable
    setup[0x235] = 21  # min_alignment
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + kernel


def test_bzimage_at_1mib_runs_from_its_preferred_address():
    image = bzimage()
    assert load_kernel(image) == LoadedKernel(
        kind="bzimage",
        segments=(Segment(0x100000, KERNEL, 1024),),
        entry=0x100200,
        setup_header=image[0x1F1:0x26C],
        protocol=0x020F,
        cmdline_size=2047,
        # runs at max(align_up(1 MiB, 2 MiB), 16 MiB) and needs 8 MiB from there
        init_size=16 * MIB + 8 * MIB - 1 * MIB,
    )


def test_bzimage_detected_and_named_formats_agree():
    image = bzimage()
    assert detect_format(image) == "bzimage"
    assert load_kernel(image, "bzimage") == load_kernel(image)


def test_relocatable_bzimage_runs_from_the_next_aligned_address():
    kernel = load_kernel(bzimage(pref_address=1 * MIB), load_addr=0x300000)
    assert kernel.segments == (Segment(0x300000, KERNEL, 1024),)
    assert kernel.entry == 0x300200
    assert kernel.init_size == 0x400000 + 8 * MIB - 0x300000


def test_bzimage_init_size_covers_an_image_longer_than_init_size():
    kernel = load_kernel(bzimage(pref_address=1 * MIB, kernel_alignment=4096, init_size=512))
    assert kernel.init_size == 1024


def test_setup_sects_zero_means_four():
    image = bzimage(setup_sects=0)
    assert len(image) == 5 * 512 + 1024
    assert load_kernel(image).segments == (Segment(0x100000, KERNEL, 1024),)


def test_more_setup_sectors_move_the_kernel():
    image = bzimage(setup_sects=30)
    assert load_kernel(image).segments[0].data == KERNEL
    assert image.index(KERNEL) == 31 * 512


def test_kernel_that_is_not_relocatable_may_load_below_its_preferred_address():
    kernel = load_kernel(bzimage(relocatable=0))
    assert kernel.init_size == 16 * MIB + 8 * MIB - 1 * MIB


def test_setup_header_length_follows_the_jump():
    assert load_kernel(bzimage(jump=0x66)).setup_header == bzimage(jump=0x66)[0x1F1:0x268]


BZIMAGE_ERRORS = [
    (
        bzimage(version=0x020B),
        "kernel: boot protocol 2.11 is too old: vmrun needs 2.12 or later (Linux 3.8+), "
        "whose kernels have a 64-bit entry point",
    ),
    (
        bzimage(loadflags=0),
        "kernel: it is a zImage (loadflags bit LOADED_HIGH is clear): vmrun boots bzImages only",
    ),
    (
        bzimage(xloadflags=0x7E),
        "kernel: it has no 64-bit entry point (xloadflags bit XLF_KERNEL_64 is clear): "
        "vmrun boots 64-bit kernels only",
    ),
    (
        bzimage(jump=0x50),
        "kernel: the setup header ends at 0x252, before the fields of protocol 2.12 "
        "(which reach 0x268)",
    ),
    (
        bzimage(jump=0x90),
        "kernel: the setup header has no forward short jump (0xEB) at 0x200, "
        "so its length is unknown",
    ),
    (bzimage(kernel_alignment=0x3000), "kernel: kernel_alignment 0x3000 is not a power of two"),
    (bzimage(kernel_alignment=0), "kernel: kernel_alignment 0x0 is not a power of two"),
    (
        bzimage()[:-100],
        "kernel: truncated: the header promises 1024 bytes of kernel after 2560 bytes of "
        "setup code, but the file has 3484 bytes",
    ),
    (
        bzimage()[:2560],
        "kernel: truncated: the kernel would start after 2560 bytes of setup code, "
        "but the file has 2560 bytes",
    ),
    (bzimage()[:0x240], "kernel: truncated: the setup header needs 620 bytes but the file has 576"),
    (
        bzimage()[:0x207],
        "kernel: truncated: the boot protocol version needs 520 bytes but the file has 519",
    ),
]


@pytest.mark.parametrize(("image", "message"), BZIMAGE_ERRORS)
def test_bzimage_errors(image: bytes, message: str):
    with pytest.raises(KernelImageError) as info:
        load_kernel(image, "bzimage")
    assert str(info.value) == message


def test_bzimage_error_names_the_file():
    with pytest.raises(KernelImageError, match=r"^/boot/vmlinuz: boot protocol 2\.00 "):
        load_kernel(bzimage(version=0x0200), name="/boot/vmlinuz")


@pytest.mark.parametrize(
    ("image", "load_addr", "message"),
    [
        (
            bzimage(),
            0x9_0000,
            "kernel: load address 0x90000 lies below 1 MiB, where vmrun puts the zero page "
            "and the real-mode area",
        ),
        (bzimage(), 0x100800, "kernel: load address 0x100800 is not 4 KiB aligned"),
        (
            bzimage(relocatable=0),
            32 * MIB,
            "kernel: the kernel is not relocatable: it runs at its preferred address 0x1000000 "
            "and must be loaded at or below it, not at 0x2000000",
        ),
    ],
)
def test_bzimage_load_address_errors(image: bytes, load_addr: int, message: str):
    with pytest.raises(KernelImageError) as info:
        load_kernel(image, load_addr=load_addr)
    assert str(info.value) == message


def test_not_a_bzimage():
    with pytest.raises(KernelImageError) as info:
        load_kernel(b"\0" * 4096, "bzimage")
    assert str(info.value) == 'kernel: not a bzImage: no "HdrS" signature at offset 0x202'


# --- a synthetic ELF ---------------------------------------------------------------------------

PT_LOAD, PT_NOTE = 1, 4
KERNEL_VIRT = 0xFFFF_FFFF_8100_0000  # __START_KERNEL_map + 16 MiB


def note(name: bytes, note_type: int, desc: bytes, align: int = 4) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % align)

    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


def pvh_note(entry: int, size: int = 8, align: int = 4) -> bytes:
    return note(b"Xen\0", 18, entry.to_bytes(size, "little"), align)


def elf64(
    loads: list[tuple[int, int, bytes, int]],
    entry: int,
    notes: bytes | None = None,
    *,
    ei_class: int = 2,
    ei_data: int = 1,
    e_type: int = 2,
    machine: int = 62,
    note_align: int = 4,
) -> bytes:
    """An ELF64 with one PT_LOAD per (vaddr, paddr, data, memsz) and one PT_NOTE."""
    headers = [(PT_LOAD, vaddr, paddr, data, memsz) for vaddr, paddr, data, memsz in loads]
    if notes is not None:
        headers.append((PT_NOTE, 0, 0, notes, len(notes)))
    phoff = 64
    offset = phoff + 56 * len(headers)
    table, body = b"", b""
    for p_type, vaddr, paddr, data, memsz in headers:
        align = note_align if p_type == PT_NOTE else 0x1000
        table += struct.pack(
            "<IIQQQQQQ", p_type, 5, offset + len(body), vaddr, paddr, len(data), memsz, align
        )
        body += data
    ident = b"\x7fELF" + bytes([ei_class, ei_data, 1]) + b"\0" * 9
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", e_type, machine, 1, entry, phoff, 0, 0, 64, 56, len(headers), 64, 0, 0
    )
    return header + table + body


TEXT = b"\xf4" * 0x100  # hlt
DATA = b"\x11" * 0x10


def vmlinux(notes: bytes | None = None, entry: int = KERNEL_VIRT + 0x40, **kw) -> bytes:
    return elf64(
        [
            (KERNEL_VIRT, 0x100_0000, TEXT, 0x100),
            (KERNEL_VIRT + 0x20_0000, 0x120_0000, DATA, 0x1000),  # .data then .bss
        ],
        entry,
        notes,
        **kw,
    )


def test_elf_segments_at_their_physical_addresses_and_a_physical_entry():
    assert load_kernel(vmlinux()) == LoadedKernel(
        kind="elf",
        segments=(Segment(0x100_0000, TEXT, 0x100), Segment(0x120_0000, DATA, 0x1000)),
        entry=0x100_0040,
        setup_header=None,
        protocol=None,
        cmdline_size=2047,
        init_size=0x120_1000 - 0x100_0000,
    )


def test_elf_entry_that_is_already_physical():
    assert load_kernel(vmlinux(entry=0x100_0000)).entry == 0x100_0000


def test_elf_segments_come_sorted_and_empty_ones_are_skipped():
    image = elf64(
        [
            (0x300000, 0x300000, b"b", 1),
            (0x200000, 0x200000, b"", 0),
            (0x100000, 0x100000, b"a", 1),
        ],
        0x300000,
    )
    kernel = load_kernel(image)
    assert kernel.segments == (Segment(0x100000, b"a", 1), Segment(0x300000, b"b", 1))
    assert kernel.init_size == 0x200001


def test_elf_with_a_pvh_note_boots_through_pvh():
    notes = note(b"GNU\0", 3, b"\xab" * 20) + note(b"Linux\0", 1, b"x") + pvh_note(0x100_0080)
    kernel = load_kernel(vmlinux(notes))
    assert (kernel.kind, kernel.entry) == ("pvh", 0x100_0080)
    assert kernel.segments == load_kernel(vmlinux()).segments


@pytest.mark.parametrize(("size", "align"), [(4, 4), (8, 4), (8, 8), (4, 8)])
def test_pvh_note_widths_and_alignments(size: int, align: int):
    notes = note(b"Xen\0", 1, b"abcde", align) + pvh_note(0x100_00F0, size, align)
    kernel = load_kernel(vmlinux(notes, note_align=align))
    assert (kernel.kind, kernel.entry) == ("pvh", 0x100_00F0)


def test_other_xen_notes_and_other_names_with_type_18_are_not_pvh():
    notes = note(b"Xen\0", 17, b"\0" * 8) + note(b"Xan\0", 18, (0x100_0080).to_bytes(8, "little"))
    assert load_kernel(vmlinux(notes)).kind == "elf"


def _patched(image: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


ONE_LOAD = [(0x100000, 0x100000, b"abcd", 4)]
PHDR0 = 64  # the first program header
ELF_ERRORS = [
    (
        b"\x7fELF" + b"\2\1\1" + b"\0" * 20,
        "truncated: the ELF header needs 64 bytes but the file has 27",
    ),
    (
        vmlinux(ei_class=1),
        "it is a 32-bit ELF (ELFCLASS32): vmrun loads 64-bit x86_64 kernels only",
    ),
    (vmlinux(ei_class=3), "unknown ELF class 3"),
    (vmlinux(ei_data=2), "it is not a little-endian ELF, as an x86_64 kernel is"),
    (vmlinux(machine=183), "it is an ELF for AArch64 (e_machine 183), not x86_64"),
    (vmlinux(machine=3), "it is an ELF for i386 (e_machine 3), not x86_64"),
    (vmlinux(machine=999), "it is an ELF for another machine (e_machine 999), not x86_64"),
    (vmlinux(e_type=3), "it is an ELF of type ET_DYN (3), not an executable (ET_EXEC)"),
    (elf64([], 0), "it has no program headers"),
    (_patched(vmlinux(), 56, "<H", 0xFFFF), "it has too many program headers (PN_XNUM)"),
    (
        _patched(vmlinux(), 54, "<H", 32),
        "its program headers are 32 bytes each; ELF-64 ones are 56",
    ),
    (
        vmlinux()[:150],
        "truncated: the program header table (2 entries at 0x40) needs 176 bytes "
        "but the file has 150",
    ),
    (
        vmlinux()[:-1],
        "truncated: segment 1 (file bytes 0x1b0-0x1c0) needs 448 bytes but the file has 447",
    ),
    (
        elf64([(0x100000, 0x100000, b"abcd", 2)], 0x100000),
        "segment 0: its file size 0x4 exceeds its memory size 0x2",
    ),
    (
        elf64([(0x100000, 0x100000, b"", 0x1000), (0x9F000, 0x9F000, b"", 0x1000)], 0x100000),
        "segment 1 at 0x9f000 lies below 1 MiB, where vmrun puts the zero page and the "
        "real-mode area",
    ),
    (
        elf64([(0x100000, 0x100000, b"", 0x2000), (0x101000, 0x101000, b"", 0x1000)], 0x100000),
        "segments 0 (0x100000-0x102000) and 1 (0x101000-0x102000) overlap",
    ),
    (
        elf64([(2**64 - 0x1000, 0x100000, b"", 0x2000)], 0x100000),
        "segment 0 runs past the end of the 64-bit address space",
    ),
    (elf64([], 0, note(b"GNU\0", 3, b"id")), "it has no loadable (PT_LOAD) segment"),
    (elf64([(0x100000, 0x100000, b"", 0)], 0x100000), "it has no loadable (PT_LOAD) segment"),
    (vmlinux(entry=0x50_0000), "the entry point 0x500000 is not inside any loadable segment"),
    (
        vmlinux(pvh_note(0x80, size=2)),
        "its PVH entry note (Xen, XEN_ELFNOTE_PHYS32_ENTRY) holds 2 bytes; expected 4 or 8",
    ),
    (vmlinux(pvh_note(1 << 32)), "its PVH entry 0x100000000 does not fit in 32 bits"),
    (
        vmlinux(pvh_note(0x200_0000)),
        "the PVH entry 0x2000000 is not inside any loadable segment",
    ),
    (
        vmlinux(pvh_note(0x100_0080)[:-4]),
        "note segment 2 is malformed: the note at 0x0 runs past its end",
    ),
    (
        vmlinux(note(b"GNU\0", 3, b"id") + b"\0" * 6),
        "note segment 2 is malformed: the note at 0x14 runs past its end",
    ),
    (
        _patched(elf64(ONE_LOAD, 0x100000, b""), PHDR0 + 56 + 8, "<Q", 0x10000),
        "truncated: note segment 1 (file bytes 0x10000-0x10000) needs 65536 bytes "
        "but the file has 180",
    ),
    (
        _patched(elf64(ONE_LOAD, 0x100000, b""), PHDR0 + 56 + 32, "<Q", 12),
        "truncated: note segment 1 (file bytes 0xb4-0xc0) needs 192 bytes but the file has 180",
    ),
]


@pytest.mark.parametrize(("image", "message"), ELF_ERRORS)
def test_elf_errors(image: bytes, message: str):
    with pytest.raises(KernelImageError) as info:
        load_kernel(image, "elf", name="vmlinux")
    assert str(info.value) == f"vmlinux: {message}"


def test_not_an_elf():
    with pytest.raises(KernelImageError) as info:
        load_kernel(bzimage(), "elf")
    assert str(info.value) == "kernel: not an ELF file: no \\x7fELF magic"


# --- compressed images ---------------------------------------------------------------------


def test_gzip_image_loads_what_it_holds():
    assert detect_format(gzip.compress(vmlinux())) == "image_gz"
    assert load_kernel(gzip.compress(vmlinux())) == load_kernel(vmlinux())
    assert load_kernel(gzip.compress(bzimage())) == load_kernel(bzimage())


def test_bzip2_image_loads_what_it_holds():
    assert detect_format(bz2.compress(bzimage())) == "image_bz2"
    assert load_kernel(bz2.compress(bzimage())) == load_kernel(bzimage())
    assert load_kernel(bz2.compress(vmlinux()), "image_bz2") == load_kernel(vmlinux())


def test_named_format_finds_the_stream_after_a_prefix():
    prefixed = b"\0" * 100 + gzip.compress(vmlinux())
    assert load_kernel(prefixed, "image_gz") == load_kernel(vmlinux())
    prefixed = b"junk" + bz2.compress(vmlinux())
    assert load_kernel(prefixed, "image_bz2") == load_kernel(vmlinux())


def test_zstd_image_loads_what_it_holds():
    zstandard = pytest.importorskip("zstandard", reason="the zstandard package is not installed")
    packed = zstandard.ZstdCompressor().compress(vmlinux())
    assert detect_format(packed) == "image_zstd"
    assert load_kernel(packed) == load_kernel(vmlinux())
    with pytest.raises(KernelImageError) as info:
        load_kernel(packed[:-8])
    assert str(info.value) == "kernel: the zstd data ends early (is the file truncated?)"
    with pytest.raises(KernelImageError, match=r"^kernel: the zstd data is corrupt \(.+\)$"):
        load_kernel(b"\x28\xb5\x2f\xfd" + b"\xff" * 20)


def test_a_zstd_bomb_is_an_error(monkeypatch: pytest.MonkeyPatch):
    zstandard = pytest.importorskip("zstandard", reason="the zstandard package is not installed")
    monkeypatch.setattr(loader, "MAX_DECOMPRESSED", 1 * MIB)
    # no content size in the frame header: only decompressing finds out
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 * MIB))
    with pytest.raises(KernelImageError) as info:
        load_kernel(packed)
    assert str(info.value) == (
        "kernel: decompresses to more than 1 MiB, which no kernel needs (a decompression bomb?)"
    )


def test_zstd_without_the_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import raises ImportError
    with pytest.raises(KernelImageError) as info:
        load_kernel(b"\x28\xb5\x2f\xfd" + b"\0" * 100, name="Image.zst")
    assert str(info.value) == (
        "Image.zst: zstd-compressed kernels need the zstandard package: pip install zstandard"
    )


def test_decompressed_errors_say_so():
    with pytest.raises(KernelImageError) as info:
        load_kernel(gzip.compress(vmlinux(machine=183)), name="vmlinux.gz")
    assert str(info.value) == (
        "vmlinux.gz (decompressed): it is an ELF for AArch64 (e_machine 183), not x86_64"
    )


def test_payload_must_be_a_kernel():
    with pytest.raises(KernelImageError) as info:
        load_kernel(gzip.compress(b"hello, world"))
    assert str(info.value) == (
        "kernel (decompressed): neither an ELF vmlinux nor a bzImage "
        "(it starts with 68 65 6c 6c 6f 2c 20 77)"
    )


def test_truncated_and_corrupt_streams():
    packed = gzip.compress(vmlinux())
    with pytest.raises(KernelImageError) as info:
        load_kernel(packed[: len(packed) // 2])
    assert str(info.value) == "kernel: the gzip data ends early (is the file truncated?)"
    with pytest.raises(KernelImageError) as info:
        load_kernel(bz2.compress(vmlinux())[:-10])
    assert str(info.value) == "kernel: the bzip2 data ends early (is the file truncated?)"
    corrupt = packed[:10] + b"\xff" * 20 + packed[30:]
    with pytest.raises(KernelImageError, match=r"^kernel: the gzip data is corrupt \(.+\)$"):
        load_kernel(corrupt)
    corrupt = bz2.compress(vmlinux())[:10] + b"\0" * 20
    with pytest.raises(KernelImageError, match=r"^kernel: the bzip2 data is corrupt \(.+\)$"):
        load_kernel(corrupt)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_a_decompression_bomb_is_an_error(monkeypatch: pytest.MonkeyPatch, compress):
    monkeypatch.setattr(loader, "MAX_DECOMPRESSED", 1 * MIB)
    with pytest.raises(KernelImageError) as info:
        load_kernel(compress(b"\0" * (2 * MIB)))
    assert str(info.value) == (
        "kernel: decompresses to more than 1 MiB, which no kernel needs (a decompression bomb?)"
    )
    assert load_kernel(compress(vmlinux())) == load_kernel(vmlinux())  # under the cap


@pytest.mark.parametrize(
    ("fmt", "data", "message"),
    [
        ("image_gz", b"\0" * 64, "kernel: no gzip stream in the file (magic 1f 8b 08)"),
        ("image_bz2", b"BZh9" + b"\0" * 64, 'kernel: no bzip2 stream in the file (magic "BZh")'),
        ("pe_gz", gzip.compress(vmlinux()), 'kernel: not a PE image: no "MZ" at offset 0'),
        ("pe_gz", b"MZ" + b"\0" * 64, "kernel: no gzip stream in the PE image (magic 1f 8b 08)"),
    ],
)
def test_no_stream(fmt: str, data: bytes, message: str):
    with pytest.raises(KernelImageError) as info:
        load_kernel(data, fmt)
    assert str(info.value) == message


def test_zstd_named_but_absent():
    pytest.importorskip("zstandard", reason="the zstandard package is not installed")
    with pytest.raises(KernelImageError) as info:
        load_kernel(b"\0" * 64, "image_zstd")
    assert str(info.value) == "kernel: no zstd stream in the file (magic 28 b5 2f fd)"


# --- PE / EFI zboot --------------------------------------------------------------------------


def zboot(payload: bytes, compression: bytes = b"gzip", size: int | None = None) -> bytes:
    header = bytearray(0x200)
    header[0:4] = b"MZ\0\0"
    header[4:8] = b"zimg"
    struct.pack_into("<II", header, 8, 0x200, len(payload) if size is None else size)
    header[0x18 : 0x18 + len(compression)] = compression
    header[0x40:0x43] = b"\x1f\x8b\x08"  # a decoy that the header's offset skips
    return bytes(header) + payload + b"\0" * 16


def test_pe_with_a_gzip_payload():
    image = b"MZ" + b"\x90" * 300 + gzip.compress(vmlinux()) + b"\0" * 64
    assert detect_format(image) == "pe_gz"
    assert load_kernel(image) == load_kernel(vmlinux())


def test_efi_zboot_payload_found_by_its_header():
    image = zboot(gzip.compress(bzimage()))
    assert detect_format(image) == "pe_gz"
    assert load_kernel(image) == load_kernel(bzimage())


def test_efi_zboot_errors():
    with pytest.raises(KernelImageError) as info:
        load_kernel(zboot(b"(\xb5/\xfd....", b"zstd"), name="vmlinuz.efi")
    assert str(info.value) == (
        "vmlinuz.efi: an EFI zboot image with a 'zstd' payload: format pe_gz reads gzip "
        "payloads only"
    )
    with pytest.raises(KernelImageError) as info:
        load_kernel(zboot(b"\x1f\x8b\x08", size=0x1000), name="vmlinuz.efi")
    assert str(info.value) == (
        "vmlinuz.efi: truncated: the EFI zboot payload (file bytes 0x200-0x1200) needs 4608 "
        "bytes but the file has 531"
    )
    with pytest.raises(KernelImageError) as info:
        load_kernel(b"MZ\0\0zimg" + b"\0" * 20, "pe_gz")
    assert str(info.value) == (
        "kernel: truncated: the EFI zboot header needs 40 bytes but the file has 28"
    )


# --- raw, detection, formats -------------------------------------------------------------------


def test_raw_is_placed_and_entered_at_the_load_address():
    assert load_kernel(b"\xf4" * 10, "raw", load_addr=0x20_0000) == LoadedKernel(
        kind="raw",
        segments=(Segment(0x20_0000, b"\xf4" * 10, 10),),
        entry=0x20_0000,
        setup_header=None,
        protocol=None,
        cmdline_size=2047,
        init_size=10,
    )


def test_raw_errors():
    with pytest.raises(KernelImageError) as info:
        load_kernel(b"", "raw", name="k.bin")
    assert str(info.value) == "k.bin: the file is empty"
    with pytest.raises(KernelImageError) as info:
        load_kernel(b"\xf4", "raw", load_addr=0x1000)
    assert str(info.value) == (
        "kernel: load address 0x1000 lies below 1 MiB, where vmrun puts the zero page "
        "and the real-mode area"
    )


def test_detect_format_errors():
    with pytest.raises(KernelImageError) as info:
        detect_format(b"", "k")
    assert str(info.value) == "k: the file is empty"
    with pytest.raises(KernelImageError) as info:
        load_kernel(b"#!/bin/sh\necho hi\n", name="run.sh")
    assert str(info.value) == (
        "run.sh: not a kernel image vmrun knows (it starts with 23 21 2f 62 69 6e 2f 73): "
        "expected a bzImage, an ELF vmlinux, a gzip, bzip2 or zstd-compressed image, "
        "or a gzip EFI zboot (pe_gz) image"
    )
    with pytest.raises(KernelImageError, match=r"^kernel: not a kernel image"):
        detect_format(b"MZ" + b"\0" * 1000)  # a PE without a gzip stream


def test_unknown_format():
    with pytest.raises(KernelImageError) as info:
        load_kernel(vmlinux(), "uimage")
    assert str(info.value) == (
        "kernel: unknown kernel format 'uimage'; expected auto or one of bzimage, elf, raw, "
        "pe_gz, image_gz, image_bz2, image_zstd"
    )


def test_segment_covers_its_data():
    with pytest.raises(ValueError, match="mem_size 3 is smaller than the data"):
        Segment(0x100000, b"abcd", 3)
    assert "<4 bytes>" in repr(Segment(0x100000, b"abcd", 4))


# --- random, truncated and mutated input ------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = [
    bzimage(),
    vmlinux(),
    vmlinux(pvh_note(0x100_0080)),
    gzip.compress(vmlinux()),
    bz2.compress(bzimage()),
    zboot(gzip.compress(vmlinux())),
]


def _load_or_refuse(data: bytes, fmt: str = "auto") -> None:
    try:
        kernel = load_kernel(data, fmt)
    except KernelImageError as exc:
        assert str(exc).startswith("kernel")
        return
    assert isinstance(kernel, LoadedKernel) and kernel.segments


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(("auto", *FORMATS)))
def test_random_bytes(data: bytes, fmt: str):
    _load_or_refuse(data, fmt)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_truncations(image: bytes, data: st.DataObject):
    _load_or_refuse(image[: data.draw(st.integers(0, len(image)))])


@FUZZ
@given(
    st.sampled_from(VALID[:3]),
    st.lists(st.tuples(st.integers(0, 0x300), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_headers(image: bytes, changes: list[tuple[int, int]]):
    mutated = bytearray(image)
    for offset, value in changes:
        if offset < len(mutated):
            mutated[offset] = value
    _load_or_refuse(bytes(mutated))


# --- the real kernel ---------------------------------------------------------------------------

REAL = sorted(
    glob.glob(
        os.path.expanduser("~/.cache/vmrun/unpacked/linux-image-*-cloud-amd64*/boot/vmlinuz-*")
    )
)


@pytest.mark.skipif(not REAL, reason="no Debian cloud kernel in ~/.cache/vmrun/unpacked")
def test_real_debian_cloud_kernel():
    path = REAL[-1]
    with open(path, "rb") as f:
        data = f.read()
    kernel = load_kernel(data, name=path)
    assert kernel.kind == "bzimage"
    assert kernel.protocol is not None and kernel.protocol >= 0x020F
    assert kernel.entry == 0x100000 + 0x200
    assert kernel.init_size > len(data)
    assert kernel.setup_header is not None
    assert len(kernel.setup_header) == 0x202 + data[0x201] - 0x1F1
    assert kernel.setup_header == data[0x1F1 : 0x202 + data[0x201]]
    setup_size = ((data[0x1F1] or 4) + 1) * 512
    assert kernel.segments == (Segment(0x100000, data[setup_size:], len(data) - setup_size),)
    assert kernel.cmdline_size >= 255


def test_elf_segments_are_views_of_the_file_not_copies():
    image = vmlinux()
    kernel = load_kernel(image)
    assert all(isinstance(s.data, memoryview) and s.data.obj is image for s in kernel.segments)


def test_elf_headers_that_load_the_same_file_bytes_again_are_refused():
    # 65534 program headers over the same 16 MiB of file would ask for about 1 TB if each
    # were copied; they are refused before anything is read out of the file.
    body = b"\x90" * 0x1000
    loads = [(0x100000 * (i + 1), 0x100000 * (i + 1), body, 0x1000) for i in range(3)]
    image = bytearray(elf64(loads, 0x100000))
    # Point the third segment's file offset at the second's bytes.
    second_offset = struct.unpack_from("<Q", image, PHDR0 + 56 + 8)[0]
    struct.pack_into("<Q", image, PHDR0 + 2 * 56 + 8, second_offset + 0x800)
    with pytest.raises(KernelImageError) as info:
        load_kernel(bytes(image), "elf", name="vmlinux")
    assert str(info.value) == "vmlinux: segments 1 and 2 load the same bytes of the file"


def test_elf_segments_larger_than_guest_memory_are_refused():
    image = elf64([(0x100000, 0x100000, b"\x90", 0x1000_0000)], 0x100000)  # 256 MiB of .bss
    with pytest.raises(KernelImageError) as info:
        load_kernel(image, "elf", name="vmlinux", mem_limit=128 << 20)
    assert str(info.value) == (
        "vmlinux: its loadable segments need 268435456 bytes, more than the guest's memory "
        "(128 MiB)"
    )
    assert load_kernel(image, "elf", mem_limit=512 << 20).init_size == 0x1000_0000
