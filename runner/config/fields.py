"""How a configuration field is declared: one place for its type, default and documentation.

Every attrs field of the VM file model is made with `setting()`, so that the JSON Schema
(`runner.config.schema`), the loader and the path checks all read the same declaration:
the class is the single source of truth for the field list.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class PathUse(enum.Enum):
    """What must exist on the host for a path field to be usable."""

    FILE = "file"  # a regular file that vmrun reads (kernel, initramfs, firmware)
    DISK = "disk"  # a regular file or a block device (a disk image)
    DEVICE = "device"  # a character device (an evdev)
    DIR = "dir"  # a directory (a virtio-fs share)
    PARENT = "parent"  # vmrun creates it; its directory must exist (output files, sockets)
    STREAM_IN = "stream-in"  # `stdin`, `null`, a FILE, a FIFO or a character device (input)
    STREAM_OUT = "stream-out"  # `stdout`, `stderr`, `null`, or a PARENT (console output)
    LIBRARY = "library"  # a soname found as dlopen finds it, or (with a `/`) a FILE


# Console endpoints that name a stream of vmrun's own process instead of a host path.
STREAM_IN_NAMES = ("stdin", "null")
STREAM_OUT_NAMES = ("stdout", "stderr", "null")

DESCRIPTION = "vmrun.description"
SCHEMA = "vmrun.schema"
PATH = "vmrun.path"


def setting(
    description: str,
    default: Any = attrs.NOTHING,
    *,
    factory: Any = None,
    path: PathUse | None = None,
    **schema: Any,
) -> Any:
    """Declare a field: `description` and `default` go to the schema, `schema` adds
    JSON Schema keywords (minimum, maxLength, pattern, ...) that the type alone cannot say."""
    metadata = {DESCRIPTION: description, SCHEMA: schema, PATH: path}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, kw_only=True)
    return attrs.field(default=default, metadata=metadata, kw_only=True)


def description_of(field: attrs.Attribute) -> str:
    return field.metadata.get(DESCRIPTION, "")


def schema_keywords_of(field: attrs.Attribute) -> dict[str, Any]:
    return dict(field.metadata.get(SCHEMA, {}))


def path_use_of(field: attrs.Attribute) -> PathUse | None:
    return field.metadata.get(PATH)
