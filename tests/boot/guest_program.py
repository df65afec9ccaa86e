"""A small C program for the guest, built here and carried in a user initramfs.

The boot tests that play a hostile guest (port_hammer.c, ring_vandal.c, blk_vandal.c) need
code that busybox has no applet for; the cloud kernel runs static ELF binaries from the
initramfs. A program is one source file; what the virtio drivers among them share is
guest_virtio.h beside them, which gcc finds through `#include "..."` (the source's own
directory is searched first).
A program this host already has (mke2fs, fio) is packed with its libraries instead, by
runner/emulated/guest_programs.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runner.boot.initramfs import Entry, cpio


def guest_program_initramfs(source: Path, tmp_path: Path) -> Path:
    """A cpio with /NAME (the source's stem), built static here (where gcc is)."""
    name = source.stem
    if shutil.which("gcc") is None:
        pytest.fail(f"gcc is needed to build the guest's {name}")
    program = tmp_path / name
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(program), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    archive = tmp_path / f"{name}.cpio"
    archive.write_bytes(cpio([Entry.file(name, program.read_bytes(), 0o755)]))
    return archive
