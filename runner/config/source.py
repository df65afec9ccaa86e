"""A VM file's text, read safely, and the error that locates problems in it.

A VM file may come from a pull request: what `vmrun validate` is given may be a FIFO (opening
one for reading waits for a writer), a device (/dev/zero never ends), a directory, or a file
of gigabytes, and a symbolic link may stand for any of them. So the file is opened without
waiting (O_NONBLOCK), what was opened is checked on its descriptor (fstat: no race with a
rename), and at most MAX_FILE_BYTES are read whatever size it claims (/proc files say 0).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Literal

import attrs

from runner.config.problems import ConfigError, Location, Problem
from runner.host_files import kind as file_kind

FileKind = Literal["toml", "json"]
SUFFIXES: dict[str, FileKind] = {".toml": "toml", ".json": "json"}
# The largest example VM file is a few KiB; 1 MiB leaves room for any hand-written file and
# bounds what a hostile one can make vmrun read, parse and hold.
MAX_FILE_BYTES = 1 << 20
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@attrs.frozen
class Source:
    """A VM file's text and what it is written in."""

    path: str
    kind: FileKind
    text: str

    def fail(self, problems: list[Problem], at: list[Location] | None = None) -> ConfigError:
        """An error with `problems`, located at `at` or else in the text (scanned once), in
        file order."""
        if at is None:
            from runner.config.positions import index  # only on the error path

            where = index(self.text, self.kind)
            at = [Location(*where.locate(problem.path)) for problem in problems]
        pairs = sorted(zip(at, problems, strict=True), key=lambda lp: (lp[0].line, lp[0].column))
        return ConfigError(self.path, [p for _, p in pairs], [loc for loc, _ in pairs])


def read_source(path: str) -> Source:
    """The text of the VM file at `path`; raises ConfigError when it cannot be one."""
    kind = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise _whole_file(path, "a VM file ends in .toml or .json")
    data = _read_bounded(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        # Columns count characters everywhere; the bytes before the bad one are valid UTF-8.
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            path, [Problem((), "the file is not UTF-8 text")], [Location(line, column)]
        ) from exc
    # A byte-order mark is an editor's habit, not content; tomllib and json refuse it.
    return Source(path, kind, text.removeprefix("\ufeff"))


def _read_bounded(path: str) -> bytes:
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise _whole_file(path, f"cannot read the file: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):  # said as reading one says it
            raise _whole_file(path, f"cannot read the file: {os.strerror(errno.EISDIR)}")
        if not stat.S_ISREG(info.st_mode):
            raise _whole_file(path, f"is {file_kind(info.st_mode)}, not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise _too_large(path, f"is {info.st_size} bytes")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:  # it grew, or said less than it holds
            raise _too_large(path, "holds more than its size said")
        return b"".join(chunks)
    except OSError as exc:
        raise _whole_file(path, f"cannot read the file: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _too_large(path: str, what: str) -> ConfigError:
    return _whole_file(path, f"{what}; a VM file is at most {MAX_FILE_BYTES} bytes (1 MiB)")


def _whole_file(path: str, message: str) -> ConfigError:
    return ConfigError(path, [Problem((), message)], [Location(1, 1)])
