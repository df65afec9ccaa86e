"""The one base of every error a user can meet: its message says what failed and what to do.

Each layer keeps its own error type (STYLE 13: `PackageError`, `BuildError`, `KvmError`, ...)
and derives it from `VmrunError`, so that `runner/cli.py`, the only place that turns errors
into exit statuses, shows any of them as one line, and anything else as a vmrun bug.
"""

from __future__ import annotations


class VmrunError(Exception):
    """An error with a message for the user; never shown with a traceback."""
