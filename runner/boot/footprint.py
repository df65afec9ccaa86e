"""How much guest memory a kernel image needs once loaded, read from the image's own header.

Used by the memory check before any boot: a lower bound, never a guess from the file name.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import BinaryIO

# Linux boot protocol (Documentation/arch/x86/boot.rst): the setup header.
BZIMAGE_MAGIC_OFFSET = 0x202  # "HdrS"
BZIMAGE_VERSION_OFFSET = 0x206
BZIMAGE_INIT_SIZE_OFFSET = 0x260  # protocol >= 2.10: memory needed to decompress and run
ELF_MAGIC = b"\x7fELF"
GZIP_MAGIC = b"\x1f\x8b"
PT_LOAD = 1


def kernel_footprint(path: str) -> int:
    """Bytes the kernel occupies in guest memory: bzImage init_size, the span of an ELF's
    loadable segments, a gzip image's uncompressed size, else the file's own size; 0 for
    what is not a readable regular file (the path checks say what it is). Opened without
    waiting (a FIFO), checked on the descriptor, and only its headers read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return 0
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return 0
        try:
            return _footprint(f, info.st_size)
        except OSError:  # /proc/self/mem and the like: nothing a kernel is read from
            return 0


def _footprint(f: BinaryIO, size: int) -> int:
    head = f.read(0x270)
    if len(head) >= 0x264 and head[BZIMAGE_MAGIC_OFFSET : BZIMAGE_MAGIC_OFFSET + 4] == b"HdrS":
        (version,) = struct.unpack_from("<H", head, BZIMAGE_VERSION_OFFSET)
        if version >= 0x20A:
            (init_size,) = struct.unpack_from("<I", head, BZIMAGE_INIT_SIZE_OFFSET)
            return max(init_size, size)
        return size
    if head[:4] == ELF_MAGIC:
        return max(_elf_span(f, head), size)
    if head[:2] == GZIP_MAGIC and size >= 4:
        f.seek(size - 4)
        (isize,) = struct.unpack("<I", f.read(4))  # uncompressed size mod 2**32
        return max(isize, size)
    return size


def _elf_span(f, head: bytes) -> int:
    """From the lowest to the highest byte of the PT_LOAD segments of a 64-bit ELF."""
    if len(head) < 64 or head[4] != 2:  # ELFCLASS64 only; anything else is not a kernel we load
        return 0
    (phoff,) = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    if phentsize < 56:
        return 0
    try:
        f.seek(phoff)
    except (OSError, ValueError, OverflowError):  # an offset no file has: not a kernel
        return 0
    table = f.read(phentsize * phnum)  # at most 65535 entries: a few MiB at the very most
    low, high = None, 0
    for i in range(len(table) // phentsize):
        p_type, _, _, _, paddr, _, memsz = struct.unpack_from("<IIQQQQQ", table, i * phentsize)
        if p_type == PT_LOAD:
            low = paddr if low is None else min(low, paddr)
            high = max(high, paddr + memsz)
    return 0 if low is None else high - low
