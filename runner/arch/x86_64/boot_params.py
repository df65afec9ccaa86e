"""The zero page (struct boot_params) of the 64-bit Linux boot protocol, and the e820 map.

Kernel facts this module relies on (Documentation/arch/x86/boot.rst, "64-bit boot protocol";
arch/x86/include/uapi/asm/bootparam.h; arch/x86/include/asm/e820/types.h):

- The loader starts from a zeroed 4 KiB struct boot_params, copies the kernel image's setup
  header into it at offset 0x1f1 (the header ends at 0x202 + the byte at 0x201), fills in its
  own fields, and enters the kernel with RSI pointing at the page. The kernel copies the page
  early (head64.c copy_bootdata), so it only has to be valid at entry.
- The byte at 0x1ef (`sentinel`) must stay 0: a nonzero sentinel tells the kernel the loader
  copied too much and makes it zero several fields (sanitize_boot_params).
- Addresses wider than 32 bits are split: the low half in the setup header (cmd_line_ptr,
  ramdisk_image, ramdisk_size), the high half in ext_cmd_line_ptr / ext_ramdisk_image /
  ext_ramdisk_size at 0x0c8 / 0x0c0 / 0x0c4.
- cmdline_size (protocol 2.06+) is the longest command line the kernel takes, without its NUL;
  vmrun refuses older kernels (which took 255 bytes) rather than guess.
- initrd_addr_max (2.03+) is the highest address the initrd may occupy, unless xloadflags has
  XLF_CAN_BE_LOADED_ABOVE_4G, when kernel, boot_params, command line and initrd may be anywhere.
- e820_entries (u8, 0x1e8) counts the entries of e820_table (0x2d0, at most 128 of 20 bytes:
  addr u64, size u64, type u32). Memory the map does not list is treated as reserved.

Nothing here touches guest memory: the builder writes `zero_page(...)` at
layout.ZERO_PAGE_START and registers `memory_regions(...)` as KVM memory slots.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence

import attrs

from runner.arch.x86_64 import layout
from runner.errors import VmrunError


class BootParamsError(VmrunError, ValueError):
    """Boot parameters that the kernel would not accept as given."""


class E820Type(enum.IntEnum):
    """The e820 memory types Linux knows (asm/e820/types.h); vmrun only writes RAM."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    PMEM = 7


@attrs.frozen
class E820Entry:
    """One struct boot_e820_entry."""

    addr: int
    size: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size


@attrs.frozen
class Initrd:
    """Where the loader put the initial ramdisk in guest memory."""

    address: int
    size: int


# --- struct boot_params offsets (bootparam.h) ------------------------------------------------
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
SENTINEL = 0x1EF
SETUP_HEADER = 0x1F1
# The header may run up to the field after it (edd_mbr_sig_buffer).
SETUP_HEADER_MAX_END = 0x290
E820_TABLE = 0x2D0
E820_ENTRY_SIZE = 20
E820_MAX_ENTRIES = 128

# --- struct setup_header fields, as offsets in the zero page ---------------------------------
HDR_JUMP_END = 0x201  # the byte that gives the header's length: it ends at 0x202 + this byte
HDR_BOOT_FLAG = 0x1FE
HDR_MAGIC = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
# The header must reach past cmdline_size, the last field read here.
SETUP_HEADER_MIN_END = HDR_CMDLINE_SIZE + 4

BOOT_FLAG_MAGIC = 0xAA55
HEADER_MAGIC = b"HdrS"
# 2.06 added cmdline_size; anything older predates the 64-bit entry by years.
MIN_PROTOCOL = 0x0206

# "Undefined" boot loader id: vmrun has no id assigned in boot.rst's table.
LOADER_TYPE_UNDEFINED = 0xFF

# loadflags
LOADED_HIGH = 1 << 0
CAN_USE_HEAP = 1 << 7
# xloadflags
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1

# boot.rst's recipe for a LOADED_HIGH kernel: the setup heap ends at 0xe000 in the real-mode
# segment and heap_end_ptr is that minus 0x200. The 64-bit entry skips the real-mode code
# that uses it, but a consistent value costs nothing.
HEAP_END = 0xE000
HEAP_END_PTR = HEAP_END - 0x200

# For a kernel without a setup header (ELF vmlinux), the header is made up as Firecracker and
# linux-loader do: boot flag, magic, and a nonzero kernel_alignment (16 MiB).
SYNTHETIC_KERNEL_ALIGNMENT = 0x0100_0000

ADDRESS_MAX = (1 << 64) - 1


def memory_regions(mem_size: int) -> list[tuple[int, int]]:
    """(guest physical address, size) of each KVM memory slot for `mem_size` bytes of RAM:
    one from 0 up to the 32-bit MMIO gap, the rest (if any) from 4 GiB."""
    _check_mem_size(mem_size)
    low = min(mem_size, layout.MMIO_GAP_START)
    regions = [(0, low)]
    if mem_size > low:
        regions.append((layout.FIRST_ADDR_PAST_32BITS, mem_size - low))
    return regions


def e820_map(mem_size: int) -> list[E820Entry]:
    """The guest's RAM as the kernel should see it: conventional memory below the EBDA,
    1 MiB up to the MMIO gap (or the end of RAM), and the rest above 4 GiB.

    The EBDA and the VGA/BIOS hole (0x9fc00 to 1 MiB) are left out, so the kernel treats
    them as reserved and never overwrites the MP table there."""
    entries = [E820Entry(0, layout.EBDA_START, E820Type.RAM)]
    for start, size in memory_regions(mem_size):
        ram_start = max(start, layout.HIMEM_START)
        if start + size > ram_start:
            entries.append(E820Entry(ram_start, start + size - ram_start, E820Type.RAM))
    return entries


def _check_mem_size(mem_size: int) -> None:
    if mem_size <= layout.HIMEM_START:
        raise BootParamsError(f"guest memory of {mem_size} bytes does not reach past 1 MiB")
    if mem_size % (4 * layout.KIB):
        raise BootParamsError(f"guest memory of {mem_size} bytes is not whole 4 KiB pages")


def setup_header_from_image(image_head: bytes) -> bytes:
    """The setup header of a bzImage, given its first bytes (at least 0x290 is always
    enough): from 0x1f1 to 0x202 + the byte at 0x201."""
    if len(image_head) <= HDR_JUMP_END:
        raise BootParamsError("the kernel image is too short to hold a setup header")
    end = HDR_MAGIC + image_head[HDR_JUMP_END]
    if len(image_head) < end:
        raise BootParamsError(
            f"the setup header ends at {end:#x}, past the {len(image_head)} bytes given"
        )
    return bytes(image_head[SETUP_HEADER:end])


def zero_page(
    setup_header: bytes | None,
    *,
    e820: Sequence[E820Entry],
    cmdline_len: int,
    cmdline_addr: int = layout.CMDLINE_START,
    initrd: Initrd | None = None,
) -> bytes:
    """struct boot_params, 4096 bytes, for the 64-bit entry.

    `setup_header` is the kernel image's header (from offset 0x1f1, see
    setup_header_from_image), or None for a kernel without one (ELF vmlinux), for which a
    minimal header is made up. `cmdline_len` is the command line's length in bytes without
    its NUL; the command line itself is written at `cmdline_addr` by the caller."""
    page = bytearray(layout.ZERO_PAGE_SIZE)
    if setup_header is None:
        cmdline_max = layout.CMDLINE_MAX_BYTES - 1
        struct.pack_into("<H", page, HDR_BOOT_FLAG, BOOT_FLAG_MAGIC)
        page[HDR_MAGIC : HDR_MAGIC + 4] = HEADER_MAGIC
        struct.pack_into("<I", page, HDR_KERNEL_ALIGNMENT, SYNTHETIC_KERNEL_ALIGNMENT)
        above_4g = True
        initrd_max = ADDRESS_MAX
    else:
        _check_header(setup_header)
        page[SETUP_HEADER : SETUP_HEADER + len(setup_header)] = setup_header
        (kernel_cmdline_size,) = struct.unpack_from("<I", page, HDR_CMDLINE_SIZE)
        cmdline_max = min(kernel_cmdline_size, layout.CMDLINE_MAX_BYTES - 1)
        (xloadflags,) = struct.unpack_from("<H", page, HDR_XLOADFLAGS)
        above_4g = bool(xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G)
        (initrd_max,) = struct.unpack_from("<I", page, HDR_INITRD_ADDR_MAX)
        if above_4g:
            initrd_max = ADDRESS_MAX
        page[HDR_LOADFLAGS] = (page[HDR_LOADFLAGS] & LOADED_HIGH) | CAN_USE_HEAP
        struct.pack_into("<H", page, HDR_HEAP_END_PTR, HEAP_END_PTR)
    page[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED

    if not 0 <= cmdline_len <= cmdline_max:
        raise BootParamsError(
            f"the command line is {cmdline_len} bytes; this kernel takes at most {cmdline_max}"
        )
    _check_address("the command line", cmdline_addr, cmdline_len + 1, above_4g)
    _split(page, HDR_CMD_LINE_PTR, EXT_CMD_LINE_PTR, cmdline_addr)

    if initrd is not None:
        _check_address("the initrd", initrd.address, initrd.size, above_4g)
        last = initrd.address + initrd.size - 1
        if last > initrd_max:
            raise BootParamsError(
                f"the initrd ends at {last:#x}, above this kernel's initrd_addr_max {initrd_max:#x}"
            )
        _split(page, HDR_RAMDISK_IMAGE, EXT_RAMDISK_IMAGE, initrd.address)
        _split(page, HDR_RAMDISK_SIZE, EXT_RAMDISK_SIZE, initrd.size)

    if len(e820) > E820_MAX_ENTRIES:
        raise BootParamsError(f"{len(e820)} e820 entries; the zero page holds {E820_MAX_ENTRIES}")
    page[E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        struct.pack_into(
            "<QQI", page, E820_TABLE + i * E820_ENTRY_SIZE, entry.addr, entry.size, entry.type
        )
    return bytes(page)


def _check_header(header: bytes) -> None:
    end = SETUP_HEADER + len(header)
    if not SETUP_HEADER_MIN_END <= end <= SETUP_HEADER_MAX_END:
        raise BootParamsError(
            f"a setup header of {len(header)} bytes; expected "
            f"{SETUP_HEADER_MIN_END - SETUP_HEADER} to {SETUP_HEADER_MAX_END - SETUP_HEADER}"
        )
    magic = header[HDR_MAGIC - SETUP_HEADER : HDR_MAGIC - SETUP_HEADER + 4]
    if magic != HEADER_MAGIC:
        raise BootParamsError(f"no HdrS magic in the setup header (found {magic!r})")
    (version,) = struct.unpack_from("<H", header, HDR_VERSION - SETUP_HEADER)
    if version < MIN_PROTOCOL:
        raise BootParamsError(
            f"boot protocol {version >> 8}.{version & 0xFF:02d} is too old; "
            f"{MIN_PROTOCOL >> 8}.{MIN_PROTOCOL & 0xFF:02d} or later is needed"
        )


def _check_address(what: str, address: int, size: int, above_4g: bool) -> None:
    limit = ADDRESS_MAX + 1 if above_4g else layout.FIRST_ADDR_PAST_32BITS
    if address < 0 or size < 0 or address + size > limit:
        raise BootParamsError(f"{what} at {address:#x} (+{size:#x}) is out of this kernel's reach")


def _split(page: bytearray, low: int, high: int, value: int) -> None:
    struct.pack_into("<I", page, low, value & 0xFFFF_FFFF)
    struct.pack_into("<I", page, high, value >> 32)
