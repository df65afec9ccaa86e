"""Which VM file texts already passed the schema stage: a run need not import jsonschema again.

jsonschema's import and a validation cost about 45 ms of a ~300 ms start on a fast host, and
several times that where vmrun itself runs emulated. The schema stage is a pure function of the
file's text and the schema, so a clean result is kept in the cache as a file holding both,
named by their CRC-32 and Adler-32 and only taken when its content is the same, byte for byte
(no cryptographic hash: hashlib loads OpenSSL, megabytes of the VMM's memory, to save a
comparison of kilobytes). Files with problems are not kept: they fail anyway, and their
messages need the validator. A cache that cannot be written only costs the time back.

The schema is named by its sources (the modules it is generated from, and those that parse
and check against it: path, mtime and size, as the guest's initramfs base names its init),
not by its text: generating it costs 40 ms here and most of a second under emulation, on
every run. A change to how the stage checks (a float is no integer, no NUL in a string) is a
change of its sources, so a text kept before it is checked again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import zlib
from pathlib import Path

from runner.arch.x86_64 import layout
from runner.cache import cache_dir, write_atomically
from runner.config import devices, fields, model, parse, schema, schema_check

SCHEMA_SOURCES = (fields, model, devices, schema, layout, parse, schema_check)


@functools.cache
def _schema_identity() -> bytes:
    """The schema's sources, each by path, mtime and size: a change to any makes a new schema."""
    parts = []
    for module in SCHEMA_SOURCES:
        path = str(module.__file__)
        status = os.stat(path)
        parts.append(f"{path}:{status.st_mtime_ns}:{status.st_size}")
    return "\n".join(parts).encode()


def _entry(kind: str, text: str) -> tuple[Path, bytes]:
    content = b"\0".join((kind.encode(), _schema_identity(), text.encode("utf-8", "surrogatepass")))
    name = f"{zlib.crc32(content):08x}{zlib.adler32(content):08x}-{len(content)}"
    return cache_dir("schema-clean") / name, content


def passed_before(kind: str, text: str) -> bool:
    """Whether this text, read as `kind`, passed this schema before."""
    try:
        path, content = _entry(kind, text)
        return path.read_bytes() == content
    except OSError:
        return False


def remember_passed(kind: str, text: str) -> None:
    with contextlib.suppress(OSError):  # a read-only cache: the next run validates again
        path, content = _entry(kind, text)
        write_atomically(path, content)
