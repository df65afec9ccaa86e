"""initramfs images: cpio archives in the kernel's "newc" format.

Linux unpacks an initramfs from concatenated cpio archives (each optionally compressed), so
vmrun builds the fixed part once, caches it, and appends small per-VM parts.
Format: Documentation/driver-api/early-userspace/buffer-format.rst.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable

import attrs

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@attrs.frozen
class Entry:
    """One file, directory or symlink of an archive (`data` is a symlink's target)."""

    name: str
    mode: int
    data: bytes = b""

    @staticmethod
    def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
        return Entry(name, stat.S_IFREG | perm, data)

    @staticmethod
    def directory(name: str, perm: int = 0o755) -> Entry:
        return Entry(name, stat.S_IFDIR | perm)

    @staticmethod
    def symlink(name: str, target: str) -> Entry:
        return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


# The newc header after its magic: thirteen 8-digit hex fields, in this order.
_FIELDS = (
    "ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check"
)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    values = dict.fromkeys(_FIELDS.split(), 0)
    values.update(
        ino=ino, mode=entry.mode, nlink=1, filesize=len(entry.data), namesize=len(name) + 1
    )
    return NEWC_MAGIC + b"".join(b"%08X" % value for value in values.values())


def cpio(entries: Iterable[Entry]) -> bytes:
    """A newc archive of `entries`, in order (parents before children), with its trailer.
    Owners are root and times are zero, so equal contents give equal bytes."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.name.lstrip("/").encode()
        if not name:
            raise ValueError("an initramfs entry needs a name")
        head = _header(ino if entry.name != TRAILER else 0, entry, name) + name + b"\0"
        out += head + _pad4(len(head)) + entry.data + _pad4(len(entry.data))
    return bytes(out)


def compressed(archive: bytes) -> bytes:
    """gzip at a fixed time stamp: the kernel's built-in decompressor always has gzip."""
    return gzip.compress(archive, compresslevel=6, mtime=0)
