"""Host paths in a VM file: resolved relative to the file, then checked to exist.

Which fields are paths, and what must exist for each, is declared on the fields
(`setting(..., path=PathUse.X)`), so no field list is repeated here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import attrs

from runner.config.fields import STREAM_IN_NAMES, STREAM_OUT_NAMES, PathUse, path_use_of
from runner.config.problems import KeyPath, Problem
from runner.host_files import kind

_STREAMS = {PathUse.STREAM_IN: STREAM_IN_NAMES, PathUse.STREAM_OUT: STREAM_OUT_NAMES}


def is_stream(use: PathUse, value: str) -> bool:
    """True for values that name no host path: a stream word, or a library's bare soname."""
    if use is PathUse.LIBRARY:
        return "/" not in value
    return value in _STREAMS.get(use, ())


def resolve_paths(obj: Any, base_dir: str) -> Any:
    """A copy of `obj` with every relative host path made absolute against `base_dir`."""
    if attrs.has(type(obj)):
        changes = {}
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            use = path_use_of(field)
            if use is not None and isinstance(value, str):
                new = value if is_stream(use, value) else _absolute(value, base_dir)
            else:
                new = resolve_paths(value, base_dir)
            if new is not value:
                changes[field.name] = new
        return attrs.evolve(obj, **changes) if changes else obj
    if isinstance(obj, tuple):
        items = tuple(resolve_paths(item, base_dir) for item in obj)
        return items if any(a is not b for a, b in zip(items, obj, strict=True)) else obj
    if isinstance(obj, dict):
        return {key: resolve_paths(value, base_dir) for key, value in obj.items()}
    return obj


def _absolute(value: str, base_dir: str) -> str:
    if "\0" in value:  # no such path exists; path_problems says so
        return value
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def host_paths(obj: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, PathUse, str]]:
    """Every host path in `obj`: its key path, what it is used for, and its value."""
    if attrs.has(type(obj)):
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            use = path_use_of(field)
            if use is not None and isinstance(value, str):
                if not is_stream(use, value):
                    yield path + (field.name,), use, value
            else:
                yield from host_paths(value, path + (field.name,))
    elif isinstance(obj, tuple):
        for index, item in enumerate(obj):
            yield from host_paths(item, path + (index,))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from host_paths(value, path + (key,))


def path_problems(obj: Any) -> list[Problem]:
    """A problem for each host path that does not exist as its use needs."""
    problems = []
    for key_path, use, value in host_paths(obj):
        message = _missing(use, value)
        if message:
            problems.append(Problem(key_path, message))
    return problems


# What each kind of path read from may be (the stat of the path: never opened here).
READABLE = {
    PathUse.FILE: (stat.S_ISREG,),
    PathUse.LIBRARY: (stat.S_ISREG,),
    PathUse.DISK: (stat.S_ISREG, stat.S_ISBLK),
    PathUse.DEVICE: (stat.S_ISCHR,),
    PathUse.STREAM_IN: (stat.S_ISREG, stat.S_ISFIFO, stat.S_ISCHR),
}
WHAT = {
    PathUse.FILE: "a regular file",
    PathUse.LIBRARY: "a regular file",
    PathUse.DISK: "a regular file or a block device",
    PathUse.DEVICE: "a character device",
    PathUse.STREAM_IN: "a regular file, a FIFO or a character device",
}


def _missing(use: PathUse, value: str) -> str | None:
    if "\0" in value:
        return "a path cannot hold a NUL byte"
    if use in READABLE:
        try:
            mode = os.stat(value).st_mode
        except FileNotFoundError:
            return f"no such file: {value}"
        except OSError as exc:
            return f"cannot look at {value}: {exc.strerror}"
        if stat.S_ISDIR(mode) and use is not PathUse.DEVICE:
            return f"is a directory, not a file: {value}"
        if not any(test(mode) for test in READABLE[use]):
            return f"is {kind(mode)}, not {WHAT[use]}: {value}"
        if not os.access(value, os.R_OK):
            return f"not readable: {value}"
    elif use is PathUse.DIR:
        if not os.path.exists(value):
            return f"no such directory: {value}"
        if not os.path.isdir(value):
            return f"not a directory: {value}"
    else:
        parent = os.path.dirname(value) or "."
        if not os.path.isdir(parent):
            return f"directory {parent} does not exist (for {value})"
        if os.path.isdir(value):
            return f"is a directory: {value}"
    return None
