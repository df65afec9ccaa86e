"""Guest kernels that boot tests need besides the default one, made into vmrun's cache.

- `pvh_vmlinux`: the ELF vmlinux inside the default kernel's bzImage. Debian's cloud kernel
  is built with CONFIG_PVH, so its vmlinux carries the Xen PHYS32_ENTRY note. Boot protocol
  2.08+ gives the compressed vmlinux's place in the bzImage: payload_offset (u32 at 0x248,
  from the start of the protected-mode kernel) and payload_length (u32 at 0x24c). Debian
  compresses it with LZ4 in the kernel's legacy framing, which Python's standard library
  does not read: `lz4_legacy` decodes it (gzip, xz and zstd payloads are read too).
- `libkrunfw`: libkrunfw.so.5 (libkrun's guest kernel, Linux 6.12) from PyPI's boxlite 0.10.8
  wheel, which carries it inside its extension module rather than as a file of its own. It is
  the one embedded ELF shared object whose dynamic symbols name krunfw_get_kernel; a shared
  object ends with its section header table, so e_shoff + e_shnum * e_shentsize bounds it.

Both download nothing themselves except `libkrunfw(download=True)` (pip, outside the
emulated host, which has no network); the results are cached, keyed by their source.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from runner.boot import bzimage
from runner.cache import cache_dir, write_atomically

PAYLOAD_OFFSET = 0x248  # u32 payload_offset, then u32 payload_length (protocol 2.08+)
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_MIN_MATCH = 4

BOXLITE = "boxlite==0.10.8"
# Integrity pin: the wheel's SHA256 on PyPI (pip checks it with --require-hashes).
BOXLITE_SHA256 = "bf8ee64adac854c128c8bc51e673c16748f08400718926b066fc6515b0566c5e"
# The one wheel published: CPython 3.11, manylinux 2.28, x86_64; asked for by name so that
# pip fetches it whatever Python runs the tests.
BOXLITE_WHEEL_TAGS = (
    "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
    "--abi", "cp311", "--platform", "manylinux_2_28_x86_64",
)  # fmt: skip
BOXLITE_MODULE = "boxlite/boxlite.cpython-311-x86_64-linux-gnu.so"
KRUNFW_SYMBOL = b"krunfw_get_kernel\0"
ELF64_LSB_CURRENT = b"\x7fELF\x02\x01\x01"  # magic, ELFCLASS64, little-endian, version 1
ET_DYN, EM_X86_64 = 3, 62


class Unavailable(Exception):
    """What a boot test needs cannot be had here; the message says why."""


# --- the PVH vmlinux ---------------------------------------------------------------------


def pvh_vmlinux(bzimage_path: Path) -> Path:
    """The vmlinux compressed inside `bzimage_path`, extracted once into the cache (keyed by
    the bzImage's digest: its modules in the initramfs must be of the same build)."""
    image = bzimage_path.read_bytes()
    target = cache_dir("pvh-vmlinux") / f"vmlinux-{hashlib.sha256(image).hexdigest()[:16]}"
    if not target.exists():
        kernel_start = (image[bzimage.SETUP_HEADER_START] or bzimage.DEFAULT_SETUP_SECTS) + 1
        offset, length = struct.unpack_from("<II", image, PAYLOAD_OFFSET)
        start = kernel_start * bzimage.SECTOR + offset
        write_atomically(target, decompress(image[start : start + length]))
    return target


def decompress(payload: bytes) -> bytes:
    """A bzImage payload, by its magic."""
    for magic, method in _PAYLOADS.items():
        if payload.startswith(magic):
            return method(payload)
    raise Unavailable(f"a kernel payload in an unknown compression ({payload[:6].hex(' ')})")


def lz4_legacy(data: bytes) -> bytes:
    """LZ4's legacy frame, as the kernel writes it: the magic, then blocks (a u32 size, then
    an LZ4 block), and at the end the kernel's own u32 of the uncompressed size."""
    view = memoryview(data)
    pos, out = 4, bytearray()
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames repeat the magic
            pos += 4
            continue
        if pos + 4 + size > len(data):  # the trailing length, not a block
            break
        _lz4_block(view[pos + 4 : pos + 4 + size], out)
        pos += 4 + size
    return bytes(out)


def _lz4_block(src: memoryview, out: bytearray) -> None:
    """One LZ4 block: sequences of a token (literal length, match length), literals, a
    u16 match offset back into the output; lengths of 15 continue in bytes up to < 255."""
    i = 0
    while i < len(src):
        token = src[i]
        i += 1
        literals, i = _length(src, i, token >> 4)
        out += src[i : i + literals]
        i += literals
        if i >= len(src):  # the last sequence has literals only
            return
        offset = src[i] | src[i + 1] << 8
        matched, i = _length(src, i + 2, token & 15)
        matched += LZ4_MIN_MATCH
        start = len(out) - offset
        if offset >= matched:
            out += out[start : start + matched]
        else:  # the match overlaps what it writes: a repeating pattern
            out += (out[start:] * (matched // offset + 1))[:matched]


def _length(src: memoryview, i: int, length: int) -> tuple[int, int]:
    if length == 15:
        while True:
            more = src[i]
            i += 1
            length += more
            if more != 255:
                break
    return length, i


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)


def _zstd(data: bytes) -> bytes:
    import zstandard  # vmrun's optional zstd dependency: imported only when needed

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


_PAYLOADS: dict[bytes, Callable[[bytes], bytes]] = {
    struct.pack("<I", LZ4_LEGACY_MAGIC): lz4_legacy,
    b"\xfd7zXZ\0": _xz,
    b"\x1f\x8b\x08": _gzip,
    b"\x28\xb5\x2f\xfd": _zstd,
}


# --- libkrunfw ---------------------------------------------------------------------------


def libkrunfw(download: bool) -> Path:
    """libkrunfw.so.5 from the boxlite wheel, cached; the wheel is downloaded only if
    `download`, else its absence is Unavailable."""
    directory = cache_dir("krunfw", BOXLITE.replace("==", "-"))
    target = directory / "libkrunfw.so.5"
    if target.exists():
        return target
    wheels = sorted(directory.glob("boxlite-*.whl"))
    if not wheels:
        if not download:
            raise Unavailable(f"{BOXLITE} was not downloaded into {directory}")
        _pip_download(directory)
        wheels = sorted(directory.glob("boxlite-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        module = wheel.read(BOXLITE_MODULE)
    write_atomically(target, embedded_library(module, KRUNFW_SYMBOL))
    return target


def _pip_download(directory: Path) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write(f"{BOXLITE} --hash=sha256:{BOXLITE_SHA256}\n")
        requirements.flush()
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
            "--quiet", *BOXLITE_WHEEL_TAGS, "-r", requirements.name, "-d", str(directory),
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            said = getattr(exc, "stderr", None) or exc
            raise Unavailable(f"pip download {BOXLITE} failed: {said}") from exc


def embedded_library(blob: bytes, symbol: bytes) -> bytes:
    """The x86_64 shared object inside `blob` (not at its start) whose bytes name `symbol`."""
    for match in re.finditer(re.escape(ELF64_LSB_CURRENT), blob):
        start = match.start()
        if start == 0 or start + 64 > len(blob):
            continue
        e_type, e_machine = struct.unpack_from("<HH", blob, start + 16)
        (e_shoff,) = struct.unpack_from("<Q", blob, start + 0x28)
        e_shentsize, e_shnum = struct.unpack_from("<HH", blob, start + 0x3A)
        end = start + e_shoff + e_shnum * e_shentsize
        if (e_type, e_machine) != (ET_DYN, EM_X86_64) or not start < end <= len(blob):
            continue
        if blob.find(symbol, start, end) >= 0:
            return blob[start:end]
    name = symbol.rstrip(b"\0").decode()
    raise Unavailable(f"no x86_64 shared object naming {name} inside")
