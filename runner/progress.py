"""What a long first run is doing: one line on stderr per phase, only when there is slow
work to do (a download, a build), so that later runs, served from the cache, stay quiet.

`slow(...)` says a slow step is starting and marks this run as a first run; `phase(...)`
announces a phase (booting the emulated host, booting the VM) only on such a run. `vmrun
run` passes the mark to the vmrun it starts inside the emulated host (`FIRST_RUN_ENV`), so
that one announces its phases too; nothing else inherits it.
"""

from __future__ import annotations

import os
import sys

FIRST_RUN_ENV = "VMRUN_FIRST_RUN"
_first_run = False  # this process did slow work


def first_run() -> bool:
    return _first_run or os.environ.get(FIRST_RUN_ENV) == "1"


def slow(what: str) -> None:
    """A slow step starts: say so, and announce the phases after it."""
    global _first_run
    _first_run = True
    _say(what)


def phase(what: str) -> None:
    """A phase of the run, said only on a first run."""
    if first_run():
        _say(what)


def _say(what: str) -> None:
    print(f"vmrun: {what}", file=sys.stderr, flush=True)
