"""vmrun's own exit statuses. A workload's status passes through unchanged (0-255);
these are the ones vmrun itself uses, following libkrun and docker run."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    INVALID = 1  # `vmrun validate`: a file has problems
    USAGE = 2  # bad command line (argparse's own convention)
    VMM_FAILURE = 125  # vmrun or the guest init failed before the workload ran
    NOT_EXECUTABLE = 126
    NOT_FOUND = 127
