"""Builds vmrun's guest init: one static executable from the C files beside this script.

`build_init(out_path)` compiles with the host's C compiler (`$CC`, default gcc) against its
static C library; it needs nothing from PyPI. From a shell: `python native/init/build.py OUT`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("init.c", "config.c", "modparams.c", "disks.c")
HEADERS = ("config.h", "disks.h", "modparams.h", "ports.h")
CFLAGS = (
    "-std=c11", "-static", "-Os", "-Wall", "-Wextra", "-Werror",
    "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections", "-s",
)  # fmt: skip

# What a linker says when the static C library is not installed.
_NO_STATIC_LIBC = ("cannot find -lc", "cannot find crt1.o", "cannot find crti.o", "libc.a")


class InitBuildError(RuntimeError):
    """The guest init cannot be built here; the message says why and what to install."""


def inputs() -> tuple[Path, ...]:
    """Every file the init is built from, this script included (for a cache key)."""
    return (*(SOURCE_DIR / name for name in (*SOURCES, *HEADERS)), Path(__file__).resolve())


def source_digest() -> str:
    """A digest of every input: an init built from other sources has another."""
    import hashlib  # here: vmrun loads this module on every run, and hashlib loads OpenSSL

    digest = hashlib.sha256()
    for path in inputs():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_init(out_path: str) -> None:
    """Compiles the guest init into `out_path` (replaced atomically, mode 0755)."""
    cc = os.environ.get("CC", "gcc")
    compiler = shutil.which(cc)
    if compiler is None:
        raise InitBuildError(
            f"cannot build the guest init: no C compiler '{cc}' on PATH "
            "(install gcc, e.g. `apt-get install gcc libc6-dev`, or set CC)"
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".init-build-") as tmp:
        built = Path(tmp) / "init"
        command = [compiler, *CFLAGS, "-o", str(built), *(str(SOURCE_DIR / s) for s in SOURCES)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise InitBuildError(_explain(cc, result.stderr))
        built.chmod(0o755)
        os.replace(built, out)


def _explain(cc: str, stderr: str) -> str:
    if any(sign in stderr for sign in _NO_STATIC_LIBC):
        return (
            f"cannot build the guest init: {cc} has no static C library to link against "
            "(install libc6-dev on Debian/Ubuntu, glibc-static on Fedora, or musl-tools and "
            f"set CC=musl-gcc); the linker said:\n{stderr.strip()}"
        )
    return f"cannot build the guest init: {cc} failed:\n{stderr.strip()}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT")
    try:
        build_init(sys.argv[1])
    except InitBuildError as exc:
        sys.exit(str(exc))
