"""The one base of every error a user can meet: its message says what failed and what to do.

Each layer keeps its own error type (STYLE 13: `PackageError`, `BuildError`, `KvmError`, ...)
and derives it from `VmrunError`, so that `runner/cli.py`, the only place that turns errors
into exit statuses, shows any of them as one line, and anything else as a vmrun bug.
"""

from __future__ import annotations


class VmrunError(Exception):
    """An error with a message for the user; never shown with a traceback."""


def describe(exc: BaseException) -> str:
    """An error's message for the user: an OSError as `FILE: reason` (not Python's
    `[Errno 2] ...: 'FILE'`), anything else as its own message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)
