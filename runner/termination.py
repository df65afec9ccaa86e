"""SIGTERM as a way to stop, like Ctrl-C: what vmrun started is torn down on the way out.

By default SIGTERM ends a Python process where it stands: QEMU would still die (its
PR_SET_PDEATHSIG), but the emulated host's scratch directory, a console log and the job's
files, would stay in /tmp. Inside `sigterm_unwinds`, SIGTERM raises `Terminated` in the main
thread instead, so the code that made each thing removes it, and vmrun exits 128 + 15. The
VMM installs its own handler while a VM runs (it stops the vCPUs) and gives this one back.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

EXIT_STATUS = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way keeps it."""


def _stop(_number: int, _frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises Terminated (main thread only, as signal handlers are)."""
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
