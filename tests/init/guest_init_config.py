"""The guest init's config (native/init/README.md) as the tests write it: with the runner's
own writer, so that the init is tested on exactly what vmrun gives it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from runner.guest.initramfs import escape as runner_escape
from runner.guest.initramfs import render_config

MAGIC = b"vmrun-init-config 1"
END = b"end"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "native" / "init" / "build.py"


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vmrun_init_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_script()  # native/init/build.py: not part of the package


# The runner's writer is the one under test: the init must parse exactly what it writes.
escape = runner_escape
render = render_config


def workload(
    exec_: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    rlimits: Mapping[str, tuple[int, int]] | None = None,
    hostname: str | None = None,
    console: str | None = None,
    stdio_ports: Mapping[int, str] | None = None,
) -> list[tuple[str, str]]:
    """The lines of a workload (initramfs root)."""
    lines: list[tuple[str, str]] = []
    if hostname is not None:
        lines.append(("hostname", hostname))
    if console is not None:
        lines.append(("console", console))
    lines += [("stdio-port", f"{fd} {name}") for fd, name in (stdio_ports or {}).items()]
    lines += [("env", f"{name}={value}") for name, value in (env or {}).items()]
    if workdir is not None:
        lines.append(("workdir", workdir))
    lines += [("rlimit", f"{n} {soft} {hard}") for n, (soft, hard) in (rlimits or {}).items()]
    lines.append(("exec", exec_))
    lines += [("arg", arg) for arg in args]
    return lines


# ---- running the init in test mode ----------------------------------------------------------


class Result(NamedTuple):
    status: int
    out: str  # the workload's stdout (the init's `exit-status` line taken off)
    err: str


def run(
    init: Path,
    tmp_path: Path,
    config: bytes | list[tuple[str, str]],
    env: dict[str, str] | None = None,
) -> Result:
    path = tmp_path / "config"
    path.write_bytes(config if isinstance(config, bytes) else render(config))
    return run_path(init, str(path), env)


def run_path(init: Path, config_path: str, env: dict[str, str] | None = None) -> Result:
    done = subprocess.run(
        [str(init), config_path],
        env={"VMRUN_INIT_TEST": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    # the workload's output may not end in a newline: the init's line then follows on its line
    match = re.fullmatch(r"(.*)exit-status (\d+)\n", out, re.DOTALL)
    assert match, f"no exit-status line at the end of {out!r}"
    return Result(int(match[2]), match[1], err)
