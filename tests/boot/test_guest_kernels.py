"""The boot tests' kernel helpers (tests/guest_kernels.py) on hand-made inputs: LZ4's legacy
frame and the search for a shared object inside a bigger file."""

from __future__ import annotations

import struct

import guest_kernels
import pytest

LEGACY_MAGIC = bytes.fromhex("02214c18")


def frame(*blocks: bytes, trailer: int) -> bytes:
    """A legacy frame as the kernel's build writes it: blocks, then the uncompressed size."""
    body = b"".join(struct.pack("<I", len(block)) + block for block in blocks)
    return LEGACY_MAGIC + body + struct.pack("<I", trailer)


def test_lz4_overlapping_match_and_final_literals() -> None:
    # Token 0x35: 3 literals "abc", then a match at offset 3 of 5 + 4 = 9 bytes, which
    # overlaps what it writes; token 0x10: the last sequence, 1 literal.
    block = bytes.fromhex("35 616263 0300 10 21")
    assert guest_kernels.lz4_legacy(frame(block, trailer=13)) == b"abcabcabcabc!"


def test_lz4_lengths_past_15_and_several_blocks() -> None:
    literals = bytes(range(65, 85))  # 20 bytes: 15 in the token, 5 in one more byte
    # Match: offset 20, length 15 + 255 + 1 + 4 = 275 (two extension bytes), from the start.
    first = bytes([0xFF, 5]) + literals + struct.pack("<H", 20) + bytes([255, 1]) + b"\x00"
    second = bytes.fromhex("20 7a7a")  # its own block: 2 literals
    expected = literals + (literals * 14)[:275] + b"zz"
    assert guest_kernels.lz4_legacy(frame(first, second, trailer=len(expected))) == expected


def test_decompress_goes_by_the_magic() -> None:
    block = bytes.fromhex("35 616263 0300 10 21")
    assert guest_kernels.decompress(frame(block, trailer=13)) == b"abcabcabcabc!"
    with pytest.raises(guest_kernels.Unavailable, match="unknown compression"):
        guest_kernels.decompress(b"BZh91AY&SY")


def elf_header(e_type: int, shoff: int, shnum: int, shentsize: int = 64) -> bytes:
    header = bytearray(64)
    header[:7] = guest_kernels.ELF64_LSB_CURRENT
    struct.pack_into("<HH", header, 16, e_type, guest_kernels.EM_X86_64)
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HH", header, 0x3A, shentsize, shnum)
    return bytes(header)


def test_the_embedded_library_is_cut_at_its_section_headers() -> None:
    symbol = b"krunfw_get_kernel\0"
    inner = elf_header(3, shoff=64 + len(symbol), shnum=2) + symbol + bytes(128)
    other = elf_header(3, shoff=64, shnum=1) + bytes(64)  # names nothing
    executable = elf_header(2, shoff=64 + len(symbol), shnum=2) + symbol + bytes(128)
    outer = elf_header(3, shoff=0, shnum=0) + other + executable + inner + b"tail"
    assert guest_kernels.embedded_library(outer, symbol) == inner
    with pytest.raises(guest_kernels.Unavailable, match="no x86_64 shared object naming"):
        guest_kernels.embedded_library(outer.replace(inner, b""), symbol)
