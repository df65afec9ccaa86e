"""Reading a bzImage: its setup header, its protected-mode kernel, and where it may be loaded.

Kernel facts this module relies on (Documentation/arch/x86/boot.rst, and for where the kernel
runs arch/x86/boot/compressed/head_64.S):

- The file starts with the real-mode part: one boot sector plus `setup_sects` 512-byte
  sectors (0 means 4). The protected-mode kernel follows, at (setup_sects + 1) * 512.
- The setup header starts at 0x1f1 and ends at 0x202 + the signed byte at 0x201 (the operand
  of the short jump, 0xEB, at 0x200). A 64-bit loader copies it into boot_params (the zero
  page) at the same offset.
- "HdrS" at 0x202 marks a boot-protocol kernel; `version` at 0x206 is (major << 8) | minor.
- Protocol 2.12 (Linux 3.8) added xloadflags; its bit 0, XLF_KERNEL_64, says the protected-mode
  kernel has a 64-bit entry point (startup_64) at its start + 0x200.
- loadflags bit 0, LOADED_HIGH: the protected-mode kernel runs from 1 MiB up (a bzImage);
  clear, it is a zImage that must sit at 0x10000.
- syssize (0x1f4, 32 bits from protocol 2.04): the protected-mode kernel's size in 16-byte
  paragraphs; a file shorter than that is truncated.
- Where the kernel runs: the decompressor starts from align_up(load address, kernel_alignment)
  when relocatable_kernel is set, raised to pref_address (LOAD_PHYSICAL_ADDR) when below it;
  a kernel that is not relocatable always runs at pref_address. From that runtime start it
  needs init_size bytes before it reads the memory map. It decompresses in place, first
  copying itself backwards to the end of that buffer, so it must not be loaded above where it
  runs (a relocatable kernel never is; one that is not relocatable must be loaded at or below
  pref_address).
- cmdline_size (protocol 2.06+): the longest command line, not counting its NUL.
"""

from __future__ import annotations

import struct

import attrs

from runner.errors import VmrunError

MAGIC = b"HdrS"
MAGIC_OFFSET = 0x202
SETUP_HEADER_START = 0x1F1
JUMP_OFFSET = 0x200  # 0xEB, rel8: the setup header ends at 0x202 + rel8
JUMP_OPCODE = 0xEB
SECTOR = 512
DEFAULT_SETUP_SECTS = 4  # what setup_sects == 0 means
ENTRY_64_OFFSET = 0x200  # startup_64, from the start of the protected-mode kernel

MIN_PROTOCOL = 0x020C  # 2.12: xloadflags, hence XLF_KERNEL_64
LOADED_HIGH = 0x01  # loadflags bit 0
XLF_KERNEL_64 = 0x01  # xloadflags bit 0

# Offsets in the file (= offsets in boot_params) of the fields read here.
_SETUP_SECTS = 0x1F1  # u8
_SYSSIZE = 0x1F4  # u32, 16-byte paragraphs
_VERSION = 0x206  # u16
_LOADFLAGS = 0x211  # u8
_KERNEL_ALIGNMENT = 0x230  # u32
_RELOCATABLE = 0x234  # u8
_XLOADFLAGS = 0x236  # u16
_CMDLINE_SIZE = 0x238  # u32
_PREF_ADDRESS = 0x258  # u64
_INIT_SIZE = 0x260  # u32
# The header of protocol 2.12 reaches at least to the end of handover_offset (2.11).
_HEADER_END_2_12 = 0x268

PAGE = 4096


class BzImageError(VmrunError, ValueError):
    """What is wrong with a bzImage; the loader names the file."""


def protocol_text(version: int) -> str:
    """2.15 for 0x020f: boot.rst's own notation."""
    return f"{version >> 8}.{version & 0xFF:02d}"


@attrs.frozen
class BzImage:
    """The parts of a bzImage that a 64-bit loader uses."""

    protocol: int
    setup_header: bytes  # 0x1f1 up to the header's end, to copy into the zero page
    # The protected-mode kernel, loaded at the load address: a view of the file's bytes, not a
    # copy of its megabytes (they count in the VMM's peak memory).
    kernel: bytes | memoryview
    cmdline_size: int
    init_size: int  # from the runtime start, as the header says
    relocatable: bool
    kernel_alignment: int
    pref_address: int

    def runtime_start(self, load_addr: int) -> int:
        """Where the decompressed kernel will run when this image is loaded at `load_addr`."""
        if not self.relocatable:
            return self.pref_address
        aligned = -(-load_addr // self.kernel_alignment) * self.kernel_alignment
        return max(aligned, self.pref_address)

    def check_load_addr(self, load_addr: int) -> None:
        if load_addr % PAGE:
            raise BzImageError(f"load address {load_addr:#x} is not 4 KiB aligned")
        if not self.relocatable and load_addr > self.pref_address:
            raise BzImageError(
                f"the kernel is not relocatable: it runs at its preferred address "
                f"{self.pref_address:#x} and must be loaded at or below it, not at {load_addr:#x}"
            )

    def bytes_needed(self, load_addr: int) -> int:
        """Memory the kernel uses from `load_addr` up before it reads its memory map: the
        loaded image and the init_size bytes from where it will run, whichever ends later."""
        end = max(load_addr + len(self.kernel), self.runtime_start(load_addr) + self.init_size)
        return end - load_addr


def parse(data: bytes) -> BzImage:
    """The bzImage in `data`; raises BzImageError naming the first thing wrong."""
    if data[MAGIC_OFFSET : MAGIC_OFFSET + 4] != MAGIC:
        raise BzImageError(f'not a bzImage: no "HdrS" signature at offset {MAGIC_OFFSET:#x}')
    if len(data) < _VERSION + 2:
        raise BzImageError(_truncated("the boot protocol version", _VERSION + 2, len(data)))
    (version,) = struct.unpack_from("<H", data, _VERSION)
    if version < MIN_PROTOCOL:
        raise BzImageError(
            f"boot protocol {protocol_text(version)} is too old: vmrun needs 2.12 or later "
            "(Linux 3.8+), whose kernels have a 64-bit entry point"
        )
    if data[JUMP_OFFSET] != JUMP_OPCODE or data[JUMP_OFFSET + 1] >= 0x80:
        raise BzImageError(
            f"the setup header has no forward short jump (0xEB) at {JUMP_OFFSET:#x}, "
            "so its length is unknown"
        )
    header_end = MAGIC_OFFSET + data[JUMP_OFFSET + 1]
    if header_end < _HEADER_END_2_12:
        raise BzImageError(
            f"the setup header ends at {header_end:#x}, before the fields of protocol 2.12 "
            f"(which reach {_HEADER_END_2_12:#x})"
        )
    if len(data) < header_end:
        raise BzImageError(_truncated("the setup header", header_end, len(data)))

    loadflags = data[_LOADFLAGS]
    if not loadflags & LOADED_HIGH:
        raise BzImageError(
            "it is a zImage (loadflags bit LOADED_HIGH is clear): vmrun boots bzImages only"
        )
    (xloadflags,) = struct.unpack_from("<H", data, _XLOADFLAGS)
    if not xloadflags & XLF_KERNEL_64:
        raise BzImageError(
            "it has no 64-bit entry point (xloadflags bit XLF_KERNEL_64 is clear): "
            "vmrun boots 64-bit kernels only"
        )
    (kernel_alignment,) = struct.unpack_from("<I", data, _KERNEL_ALIGNMENT)
    relocatable = data[_RELOCATABLE] != 0
    if relocatable and (kernel_alignment == 0 or kernel_alignment & (kernel_alignment - 1)):
        raise BzImageError(f"kernel_alignment {kernel_alignment:#x} is not a power of two")

    setup_size = ((data[_SETUP_SECTS] or DEFAULT_SETUP_SECTS) + 1) * SECTOR
    (syssize,) = struct.unpack_from("<I", data, _SYSSIZE)
    if len(data) <= setup_size:
        raise BzImageError(
            f"truncated: the kernel would start after {setup_size} bytes of setup code, "
            f"but the file has {len(data)} bytes"
        )
    if len(data) < setup_size + syssize * 16:
        raise BzImageError(
            f"truncated: the header promises {syssize * 16} bytes of kernel after "
            f"{setup_size} bytes of setup code, but the file has {len(data)} bytes"
        )
    (cmdline_size,) = struct.unpack_from("<I", data, _CMDLINE_SIZE)
    (pref_address,) = struct.unpack_from("<Q", data, _PREF_ADDRESS)
    (init_size,) = struct.unpack_from("<I", data, _INIT_SIZE)
    return BzImage(
        protocol=version,
        setup_header=bytes(data[SETUP_HEADER_START:header_end]),
        kernel=memoryview(data)[setup_size:],
        cmdline_size=cmdline_size,
        init_size=init_size,
        relocatable=relocatable,
        kernel_alignment=kernel_alignment,
        pref_address=pref_address,
    )


def _truncated(what: str, needed: int, size: int) -> str:
    return f"truncated: {what} needs {needed} bytes but the file has {size}"
