"""`python -m runner.emulated.inside PREPARED [--timings] [-- CMD ARGS...]`: the vmrun that
`vmrun run` starts inside the emulated host (runner/emulated/delegate.py).

It runs the VM the vmrun outside loaded and checked (runner/emulated/prepared_vm.py) on the
emulated host's KVM. Not a command for users (they run `vmrun run --host kvm FILE` there):
its arguments are vmrun's own, so it reads them without argparse, which with the rest of
the command line's set-up costs a second at emulated speed. Its errors become statuses where
every command's do (`runner.cli.outcome`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from runner import cli
from runner.exit_status import ExitStatus

USAGE = "usage: python -m runner.emulated.inside PREPARED [--timings] [-- CMD ARGS...]"


def main(argv: Sequence[str] | None = None) -> int:
    args, workload = cli.split_workload(argv)
    show_timings = "--timings" in args
    rest = [arg for arg in args if arg != "--timings"]
    if len(rest) != 1 or workload == []:
        print(USAGE, file=sys.stderr)
        return ExitStatus.USAGE
    return cli.outcome("run", lambda: cli.run_prepared(rest[0], workload, show_timings))


if __name__ == "__main__":
    sys.exit(main())
