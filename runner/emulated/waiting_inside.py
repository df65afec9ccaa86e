"""The vmrun inside, started before the emulated host is saved, and waiting there for its VM.

Starting Python and importing what running a VM takes cost about 4 s of emulated time at
every run. So the host's init starts this before its snapshot point
(runner/emulated/snapshot.py), from the copy of its files that the host's initramfs holds
(runner/emulated/inside_bundle.py: the host's own files are not mounted yet there). It
imports `PRELOADED`, creates `READY`, and waits for one line on `REQUEST`; a restored host
finds it there, imported already.

When the run's job is set up, the init writes that line: the job's description (`job.json`
in the scratch directory, written by runner/emulated/host.py) and the devices of the job's
stdin, stdout, stderr, events and winsize ports. This process then becomes the run's vmrun
inside: its stdio on the ports, the host's files as its root (`chroot /host`, where the init
mounted them: later imports come from there, the same files), the job's directory and
environment, new seeds for what was seeded before the snapshot, and
`runner.emulated.inside.main` with the job's arguments. Its exit status is the job's.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import sys

PRELOADED = (
    "runner.emulated.inside",
    "runner.emulated.prepared_vm",
    "runner.builder",
    "runner.vmm",
)
DIRECTORY = "/run/vmrun-inside"
REQUEST = f"{DIRECTORY}/request"
READY = f"{DIRECTORY}/ready"
HOST_ROOT = "/host"
JOB_FAILED = 125  # as the job script's `cd ... || exit 125`


def main() -> int:
    for name in PRELOADED:
        importlib.import_module(name)
    os.makedirs(DIRECTORY, mode=0o700, exist_ok=True)
    os.mkfifo(REQUEST, 0o600)
    with open(READY, "w"):
        pass
    with open(REQUEST) as request:  # blocks until the init opens it: across the snapshot
        line = request.readline(65536)
    return become(line.rstrip("\n").split("\t"))


def become(fields: list[str]) -> int:
    """The run's vmrun inside, from the init's request."""
    if len(fields) != 6:
        print(f"vmrun: a bad request for the vmrun inside: {fields!r}", file=sys.stderr)
        return JOB_FAILED
    job_path, stdin, stdout, stderr, events, winsize = fields
    ends = ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY), (2, stderr, os.O_WRONLY))
    for fd, device, flags in ends:
        opened = os.open(device, flags | os.O_NOCTTY)
        os.dup2(opened, fd)
        os.close(opened)
    os.chroot(HOST_ROOT)
    os.chdir("/")
    with open(job_path, encoding="utf-8") as file:
        job = json.load(file)
    try:
        os.chdir(job["cwd"])
    except OSError as exc:
        print(f"vmrun: cannot enter {job['cwd']}: {exc.strerror}", file=sys.stderr)
        return JOB_FAILED
    _take_environment(job["env"], events, winsize)
    # Seeded before the snapshot, so the same in every restored run: seeded again, from the
    # kernel's pool that the restore reseeded (vmgenid).
    random.seed()
    # Started in the background by a shell, which ignores SIGINT and SIGQUIT for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    importlib.invalidate_caches()  # the directories seen from here on are the host's
    from runner.emulated import inside

    return inside.main(list(job["args"]))


def _take_environment(env: dict[str, str], events: str, winsize: str) -> None:
    from runner import terminal, timings

    os.environ.clear()
    os.environ.update(env)
    # What the init exports for the job, besides its environment (runner/emulated/host_init.py).
    for name, device in ((timings.EVENTS_ENV, events), (terminal.WINSIZE_PORT_ENV, winsize)):
        if device != "-":
            os.environ[name] = device


if __name__ == "__main__":
    sys.exit(main())
