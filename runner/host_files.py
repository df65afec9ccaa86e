"""Files on the host that a VM file names for vmrun to read (kernel, initramfs), opened so
that a path which is not what its key expects cannot hang or exhaust vmrun.

Everything is decided on the open descriptor (`fstat`), never on the path before opening
it, so a file swapped between a check and the open changes nothing: a FIFO (opened with
O_NONBLOCK, so opening it does not wait for a writer), a device such as /dev/zero (which
reads forever), a directory, or a regular file larger than the guest's memory is refused
with a message that names the key. Files of pseudo file systems (/proc, /sys) that
claim 0 bytes are read with the same bound.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from runner.errors import VmrunError

READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY


class HostFileError(VmrunError):
    """A file named in the VM file that vmrun will not read; the message names the key."""


def kind(mode: int) -> str:
    """What a file of `mode` is, in a user's words."""
    kinds = (
        (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    )  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a file")


def open_regular(path: str, key: str, max_size: int) -> BinaryIO:
    """`path` open for reading: a regular file of at most `max_size` bytes."""
    try:
        fd = os.open(path, READ_FLAGS | os.O_NONBLOCK)
    except OSError as exc:
        raise HostFileError(f"{key}: {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HostFileError(f"{key}: {path} is {kind(info.st_mode)}, not a regular file")
        if info.st_size > max_size:
            raise HostFileError(
                f"{key}: {path} is {info.st_size} bytes, more than the guest's memory "
                f"({max_size >> 20} MiB) could hold"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular(path: str, key: str, max_size: int) -> bytes:
    """The whole of `path` (as `open_regular` checks it), never more than `max_size` bytes
    even where the size it claims is wrong (/proc, /sys)."""
    with open_regular(path, key, max_size) as file:
        try:
            data = file.read(max_size + 1)
        except OSError as exc:
            raise HostFileError(f"{key}: {path}: {exc.strerror}") from exc
    if len(data) > max_size:
        raise HostFileError(
            f"{key}: {path} is more than the guest's memory ({max_size >> 20} MiB) could hold"
        )
    return data
