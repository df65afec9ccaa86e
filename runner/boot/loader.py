"""Kernel loaders: from the bytes of a kernel file to what goes into guest memory.

`load_kernel` reads an image and says which bytes go at which guest physical address and
where the vCPU starts; the builder copies the segments and sets up the boot state that the
kind asks for. Nothing here touches KVM or guest memory.

Formats (`KernelConfig.format`, the names libkrun gives them):

- `bzimage`: the Linux/x86 boot protocol image (vmlinuz), booted through its 64-bit entry;
  see runner/boot/bzimage.py for the protocol facts used.
- `elf`: an uncompressed vmlinux, loaded at its physical addresses; with a Xen
  PHYS32_ENTRY note it is booted through its PVH entry instead. See runner/boot/elf.py.
- `image_gz`, `image_bz2`, `image_zstd`: one of the two above, compressed. As in libkrun, the
  stream starts at the first occurrence of its magic (gzip 1f 8b 08, bzip2 "BZh" + level +
  block magic, zstd 28 b5 2f fd), usually offset 0.
- `pe_gz`: a PE file (an EFI zboot image: "MZ", then "zimg" and the payload's offset, size
  and compression at 4, 8, 12 and 0x18) whose payload is gzip; without a zboot header, the
  first gzip stream in the file (libkrun's rule).
- `raw`: libkrun's meaning: the bytes as they are, at the load address, entered there.

Decompressed output is capped at MAX_DECOMPRESSED so that a bomb is an error, not an OOM.
Every problem with a file is a KernelImageError whose message starts with the file's name.
"""

from __future__ import annotations

import bz2
import re
import struct
import zlib
from typing import Literal

import attrs

from runner.arch.x86_64 import layout
from runner.boot import bzimage, elf
from runner.errors import VmrunError

FORMATS = ("bzimage", "elf", "raw", "pe_gz", "image_gz", "image_bz2", "image_zstd")
MAX_DECOMPRESSED = 512 * layout.MIB
# Linux x86's COMMAND_LINE_SIZE counts the NUL; cmdline_size, as a bzImage reports it, not.
ELF_CMDLINE_SIZE = layout.CMDLINE_MAX_BYTES - 1

GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1 ID2 and CM = deflate
BZIP2_STREAM = re.compile(rb"BZh[1-9]1AY&SY")  # stream header, then the first block's magic
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PE_MAGIC = b"MZ"
ZBOOT_MAGIC = b"zimg"  # at offset 4 of an EFI zboot image
_ZBOOT_PAYLOAD = 8  # u32 offset, u32 size
_ZBOOT_COMPRESSION = 0x18  # NUL-terminated name: "gzip", "zstd", ...
_ZSTD_FEED = 1024  # compressed bytes per step, so that one step cannot blow the cap far


class KernelImageError(VmrunError):
    """A kernel file that cannot be loaded: the message names the file and what is wrong."""


def _data_repr(data: bytes | memoryview) -> str:
    return f"<{len(data)} bytes>"


@attrs.frozen
class Segment:
    """`data` at `guest_addr`, followed by zeros up to `mem_size` bytes (an ELF .bss)."""

    guest_addr: int
    data: bytes | memoryview = attrs.field(repr=_data_repr)
    mem_size: int = attrs.field()

    @mem_size.validator
    def _covers_data(self, _attribute: attrs.Attribute, value: int) -> None:
        if value < len(self.data):
            raise ValueError(f"mem_size {value} is smaller than the data ({len(self.data)})")


@attrs.frozen
class LoadedKernel:
    """What to copy into guest memory and how to enter it.

    kind: `bzimage` and `elf` (and `raw` and `krunfw`, a libkrunfw bundle, booted as `elf`
    is) start in 64-bit mode at `entry` with boot_params in the zero page; `pvh` starts in
    32-bit protected mode at `entry` with an hvm_start_info (runner/arch/x86_64/pvh.py).
    """

    kind: Literal["bzimage", "elf", "pvh", "raw", "krunfw"]
    segments: tuple[Segment, ...]
    entry: int
    setup_header: bytes | None  # bzImage: 0x1f1 up to its end, to copy into the zero page
    protocol: int | None  # bzImage boot protocol version, (major << 8) | minor
    cmdline_size: int  # the longest command line the kernel takes, not counting the NUL
    init_size: int  # memory the kernel uses from its lowest segment up, before it reads e820


def detect_format(data: bytes, name: str = "kernel") -> str:
    """The format of an image from its magic numbers (never `raw`, which has none)."""
    if not data:
        raise KernelImageError(f"{name}: the file is empty")
    if data[:4] == elf.ELF_MAGIC:
        return "elf"
    if data[bzimage.MAGIC_OFFSET : bzimage.MAGIC_OFFSET + 4] == bzimage.MAGIC:
        return "bzimage"  # before "MZ": a bzImage with an EFI stub starts with it too
    if data.startswith(GZIP_MAGIC):
        return "image_gz"
    if BZIP2_STREAM.match(data):
        return "image_bz2"
    if data.startswith(ZSTD_MAGIC):
        return "image_zstd"
    if data.startswith(PE_MAGIC) and (data[4:8] == ZBOOT_MAGIC or GZIP_MAGIC in data):
        return "pe_gz"
    raise KernelImageError(
        f"{name}: not a kernel image vmrun knows (it starts with {data[:8].hex(' ')}): "
        "expected a bzImage, an ELF vmlinux, a gzip, bzip2 or zstd-compressed image, "
        "or a gzip EFI zboot (pe_gz) image"
    )


def load_kernel(
    data: bytes,
    fmt: str = "auto",
    load_addr: int = layout.KERNEL_START,
    name: str = "kernel",
    mem_limit: int | None = None,
) -> LoadedKernel:
    """The kernel in `data` (the contents of the file `name`) in format `fmt`, a bzImage or
    raw image placed at `load_addr` (an ELF goes where its headers say, its segments needing
    at most `mem_limit` bytes when given)."""
    if fmt == "auto":
        fmt = detect_format(data, name)
    if fmt == "raw":
        return _load_raw(data, load_addr, name)
    if fmt in _DECOMPRESSORS:
        payload = _DECOMPRESSORS[fmt](data, name)
        name = f"{name} (decompressed)"
        fmt = _payload_format(payload, name)
        data = payload
    if fmt == "bzimage":
        _check_load_addr(load_addr, name)
        try:
            return _from_bzimage(bzimage.parse(data), load_addr)
        except bzimage.BzImageError as exc:
            raise KernelImageError(f"{name}: {exc}") from exc
    if fmt == "elf":
        try:
            return _from_elf(elf.parse(data, mem_limit))
        except elf.ElfError as exc:
            raise KernelImageError(f"{name}: {exc}") from exc
    raise KernelImageError(
        f"{name}: unknown kernel format {fmt!r}; expected auto or one of {', '.join(FORMATS)}"
    )


def _check_load_addr(load_addr: int, name: str) -> None:
    if load_addr < layout.KERNEL_START:
        raise KernelImageError(
            f"{name}: load address {load_addr:#x} lies below 1 MiB, where vmrun puts the zero "
            "page and the real-mode area"
        )


def _load_raw(data: bytes, load_addr: int, name: str) -> LoadedKernel:
    if not data:
        raise KernelImageError(f"{name}: the file is empty")
    _check_load_addr(load_addr, name)
    return LoadedKernel(
        kind="raw",
        segments=(Segment(load_addr, bytes(data), len(data)),),
        entry=load_addr,
        setup_header=None,
        protocol=None,
        cmdline_size=ELF_CMDLINE_SIZE,
        init_size=len(data),
    )


def _from_bzimage(image: bzimage.BzImage, load_addr: int) -> LoadedKernel:
    image.check_load_addr(load_addr)
    return LoadedKernel(
        kind="bzimage",
        segments=(Segment(load_addr, image.kernel, len(image.kernel)),),
        entry=load_addr + bzimage.ENTRY_64_OFFSET,
        setup_header=image.setup_header,
        protocol=image.protocol,
        cmdline_size=image.cmdline_size,  # protocol >= 2.12 always has the field
        init_size=image.bytes_needed(load_addr),
    )


def _from_elf(kernel: elf.ElfKernel) -> LoadedKernel:
    segments = tuple(Segment(s.paddr, s.data, s.mem_size) for s in kernel.segments)
    low = segments[0].guest_addr
    high = max(s.guest_addr + s.mem_size for s in segments)
    pvh = kernel.pvh_entry is not None
    return LoadedKernel(
        kind="pvh" if pvh else "elf",
        segments=segments,
        entry=kernel.pvh_entry if kernel.pvh_entry is not None else kernel.entry,
        setup_header=None,
        protocol=None,
        cmdline_size=ELF_CMDLINE_SIZE,
        init_size=high - low,
    )


def _payload_format(payload: bytes, name: str) -> str:
    if payload[:4] == elf.ELF_MAGIC:
        return "elf"
    if payload[bzimage.MAGIC_OFFSET : bzimage.MAGIC_OFFSET + 4] == bzimage.MAGIC:
        return "bzimage"
    raise KernelImageError(
        f"{name}: neither an ELF vmlinux nor a bzImage (it starts with {payload[:8].hex(' ')})"
    )


# --- decompression ------------------------------------------------------------------------


def _gunzip_image(data: bytes, name: str) -> bytes:
    start = data.find(GZIP_MAGIC)
    if start < 0:
        raise KernelImageError(f"{name}: no gzip stream in the file (magic 1f 8b 08)")
    return _gunzip(memoryview(data)[start:], name)


def _bunzip2_image(data: bytes, name: str) -> bytes:
    match = BZIP2_STREAM.search(data)
    if match is None:
        raise KernelImageError(f'{name}: no bzip2 stream in the file (magic "BZh")')
    decompressor = bz2.BZ2Decompressor()
    try:
        out = decompressor.decompress(memoryview(data)[match.start() :], MAX_DECOMPRESSED + 1)
    except OSError as exc:
        raise KernelImageError(f"{name}: the bzip2 data is corrupt ({exc})") from exc
    return _complete(out, decompressor.eof, "bzip2", name)


def _unzstd_image(data: bytes, name: str) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise KernelImageError(
            f"{name}: zstd-compressed kernels need the zstandard package: pip install zstandard"
        ) from None
    start = data.find(ZSTD_MAGIC)
    if start < 0:
        raise KernelImageError(f"{name}: no zstd stream in the file (magic 28 b5 2f fd)")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    view = memoryview(data)
    for pos in range(start, len(data), _ZSTD_FEED):
        try:
            out += decompressor.decompress(view[pos : pos + _ZSTD_FEED])
        except zstandard.ZstdError as exc:
            raise KernelImageError(f"{name}: the zstd data is corrupt ({exc})") from exc
        if decompressor.eof or len(out) > MAX_DECOMPRESSED:
            break
    return _complete(bytes(out), decompressor.eof, "zstd", name)


def _gunzip_pe(data: bytes, name: str) -> bytes:
    if not data.startswith(PE_MAGIC):
        raise KernelImageError(f'{name}: not a PE image: no "MZ" at offset 0')
    if data[4:8] != ZBOOT_MAGIC:
        start = data.find(GZIP_MAGIC)
        if start < 0:
            raise KernelImageError(f"{name}: no gzip stream in the PE image (magic 1f 8b 08)")
        return _gunzip(memoryview(data)[start:], name)
    header_end = _ZBOOT_COMPRESSION + 16
    if len(data) < header_end:
        raise KernelImageError(
            f"{name}: truncated: the EFI zboot header needs {header_end} bytes "
            f"but the file has {len(data)}"
        )
    compression = data[_ZBOOT_COMPRESSION:header_end].split(b"\0")[0].decode("ascii", "replace")
    if compression != "gzip":
        raise KernelImageError(
            f"{name}: an EFI zboot image with a {compression!r} payload: format pe_gz reads "
            "gzip payloads only"
        )
    offset, size = struct.unpack_from("<II", data, _ZBOOT_PAYLOAD)
    if offset + size > len(data):
        raise KernelImageError(
            f"{name}: truncated: the EFI zboot payload (file bytes {offset:#x}-"
            f"{offset + size:#x}) needs {offset + size} bytes but the file has {len(data)}"
        )
    return _gunzip(memoryview(data)[offset : offset + size], name)


def _gunzip(stream: memoryview, name: str) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
    try:
        out = decompressor.decompress(stream, MAX_DECOMPRESSED + 1)
    except zlib.error as exc:
        raise KernelImageError(f"{name}: the gzip data is corrupt ({exc})") from exc
    return _complete(out, decompressor.eof, "gzip", name)


def _complete(out: bytes, eof: bool, kind: str, name: str) -> bytes:
    if len(out) > MAX_DECOMPRESSED:
        raise KernelImageError(
            f"{name}: decompresses to more than {MAX_DECOMPRESSED >> 20} MiB, which no kernel "
            "needs (a decompression bomb?)"
        )
    if not eof:
        raise KernelImageError(f"{name}: the {kind} data ends early (is the file truncated?)")
    return out


_DECOMPRESSORS = {
    "image_gz": _gunzip_image,
    "image_bz2": _bunzip2_image,
    "image_zstd": _unzstd_image,
    "pe_gz": _gunzip_pe,
}
