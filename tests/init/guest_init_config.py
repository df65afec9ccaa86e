"""A reference writer of the guest init's config (native/init/README.md), for the tests.

The runner's own writer must produce the same bytes for the same settings.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType

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


def escape(value: str) -> bytes:
    """`value` as UTF-8, with `\\` and every control byte escaped; NUL cannot be written."""
    out = bytearray()
    for byte in value.encode("utf-8", "surrogateescape"):
        if byte == 0:
            raise ValueError("a config value cannot hold a NUL character")
        if byte == 0x5C:
            out += b"\\\\"
        elif byte == 0x0A:
            out += b"\\n"
        elif byte < 0x20 or byte == 0x7F:
            out += b"\\x%02x" % byte
        else:
            out.append(byte)
    return bytes(out)


def render(lines: Iterable[tuple[str, str]]) -> bytes:
    """The file: magic, one `KEY VALUE` line per pair (value escaped), `end`."""
    body = b"".join(key.encode() + b" " + escape(value) + b"\n" for key, value in lines)
    return MAGIC + b"\n" + body + END + b"\n"


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
