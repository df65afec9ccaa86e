"""The files that tell the emulated host's init what to run (runner/emulated/host_init.py):
`mounts.sh` (the writable shares, the idle ports), `job.sh` (environment, directory,
command) and, for the waiting vmrun inside, `job.json` (runner/emulated/waiting_inside.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from runner import terminal
from runner.guest.debian import OFFLINE_ENV
from runner.host_kvm import INSIDE_ENV

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def write_job(
    scratch: Path,
    argv: Sequence[str],
    cwd: str,
    writable: list[str],
    env: dict[str, str],
    unused: Sequence[str] = (),
) -> None:
    """`mounts.sh` and `job.sh` in `scratch`: `argv` run in `cwd` with `env` (`job_env`),
    the `writable` directories mounted, the `unused` inbound ports idle."""
    # Sourced by the init (PID 1): it must not exit, only report through `fail`.
    # (A 9p channel mounts once: the scratch directory, already on /scratch, is bound.)
    mounts = [(f"-t 9p -o $P9,cache=loose rw{i}", path) for i, path in enumerate(writable)]
    mounts.append(("-o bind /scratch", str(scratch)))
    lines = [
        f"mount {how} /host{shlex.quote(path)} || fail {shlex.quote('cannot mount ' + path)}"
        for how, path in mounts
    ]
    lines.append(f"JOB={shlex.quote(str(scratch / 'job.sh'))}")
    # A host that can be saved has every inbound port: these idle ones are not the job's.
    lines.append(f"UNUSED_PORTS={shlex.quote(' '.join(unused))}")
    (scratch / "mounts.sh").write_text("\n".join(lines) + "\n")
    job = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    job += [f"cd {shlex.quote(cwd)} || exit 125", "exec " + shlex.join(argv)]
    (scratch / "job.sh").write_text("\n".join(job) + "\n")


def job_env(scratch: Path, extra_env: dict[str, str]) -> dict[str, str]:
    """The job's environment: this one's, what says where it runs, and `extra_env`."""
    env = {k: v for k, v in os.environ.items() if ENV_NAME.match(k)}
    env.pop(terminal.WINSIZE_PORT_ENV, None)  # the host's init names the port in there
    # No network inside: a package missing from the cache is an error that says so.
    env.update({"TMPDIR": str(scratch / "tmp"), INSIDE_ENV: "1", OFFLINE_ENV: "1", **extra_env})
    return env


def write_inside_job(scratch: Path, cwd: str, env: dict[str, str], args: Sequence[str]) -> None:
    """`job.json`: the job as the waiting vmrun inside takes it (job.sh's environment and
    directory, the inside's arguments)."""
    job = {"env": env, "cwd": cwd, "args": list(args)}
    (scratch / "job.json").write_text(json.dumps(job))
