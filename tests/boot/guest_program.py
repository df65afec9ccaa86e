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
import sys
from collections.abc import Sequence
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


ALL_HELD = 42  # a guest driver program's status when every expectation held


def run_guest_driver(
    vm: Path, device: str, command: str, rounds: Sequence[str], cwd: Path
) -> list[str]:
    """Runs the guest driver `command` (ring_vandal, blk_vandal) in the VM of `vm` after
    unbinding Linux's virtio-mmio driver from `device` (LNRO0005:NN), and checks what every
    such program must show: vmrun ran to the end and returned the program's status for
    "every expectation held", without a traceback, with one "round NAME: ... ok" line per
    round of `rounds`, in order. Returns those lines, for the test's own checks."""
    script = f"echo {device} > /sys/bus/platform/drivers/virtio-mmio/unbind && exec {command}"
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", str(vm),
         "--", "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=900, cwd=cwd,
    )  # fmt: skip
    lines = [line.strip() for line in result.stdout.splitlines()]
    report = [line for line in lines if line.startswith("round ")]
    context = (result.returncode, result.stderr[-2000:], lines[-20:])
    assert result.returncode == ALL_HELD, context
    assert "Traceback" not in result.stderr, result.stderr
    assert [line.split(":")[0] for line in report] == [f"round {name}" for name in rounds], report
    assert all(line.endswith(": ok") for line in report), report
    assert lines[-1] == "vandal: every expectation held", context
    return report
