"""The guest init's config (native/init/README.md) as the tests write it: with the runner's
own writer, so that the init is tested on exactly what vmrun gives it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

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
) -> list[tuple[str, str]]:
    """The lines of a workload (initramfs root)."""
    lines: list[tuple[str, str]] = []
    if hostname is not None:
        lines.append(("hostname", hostname))
    lines += [("env", f"{name}={value}") for name, value in (env or {}).items()]
    if workdir is not None:
        lines.append(("workdir", workdir))
    lines += [("rlimit", f"{n} {soft} {hard}") for n, (soft, hard) in (rlimits or {}).items()]
    lines.append(("exec", exec_))
    lines += [("arg", arg) for arg in args]
    return lines
