"""The emulated host's kernel: the vmlinux inside the bzImage where it has a PVH entry (QEMU
boots it without decompressing), else the bzImage as it is."""

from __future__ import annotations

import gzip
import lzma
import struct
from collections.abc import Callable

import pytest
from boot.test_loader import pvh_note, vmlinux

from runner.emulated.image import _boot_kernel

SETUP_SECTS = 4


def bzimage_with(payload: bytes) -> bytes:
    """A bzImage whose protected-mode part is `payload` behind a 0x40-byte decompressor stub,
    with the setup header's payload_offset and payload_length pointing at it."""
    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0x1F1] = SETUP_SECTS
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0x40, len(payload))
    return bytes(setup) + b"\x90" * 0x40 + payload + b"\0" * 16


PVH_VMLINUX = vmlinux(pvh_note(0x100_0000 + 0x40))


@pytest.mark.parametrize(
    "compress",
    [lambda d: lzma.compress(d, format=lzma.FORMAT_XZ), gzip.compress],
    ids=["xz", "gzip"],
)
def test_a_pvh_vmlinux_is_taken_out_of_the_bzimage(compress: Callable[[bytes], bytes]) -> None:
    assert _boot_kernel(bzimage_with(compress(PVH_VMLINUX))) == PVH_VMLINUX


@pytest.mark.parametrize(
    "payload",
    [
        lzma.compress(vmlinux(), format=lzma.FORMAT_XZ),  # no PVH note: QEMU cannot enter it
        b"\x02\x21\x4c\x18" + bytes(64),  # LZ4: not in the standard library
        b"\xfd7zXZ\x00" + b"corrupt" * 8,
        lzma.compress(b"not an ELF", format=lzma.FORMAT_XZ),
    ],
    ids=["no-pvh-note", "lz4", "corrupt-xz", "not-elf"],
)
def test_otherwise_the_bzimage_is_booted_as_it_is(payload: bytes) -> None:
    image = bzimage_with(payload)
    assert _boot_kernel(image) == image
