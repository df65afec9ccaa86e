"""`vmrun validate` on a hostile VM file: it reads the file and looks at (stats) the paths the
file names, and never opens, loads or runs one of them. Checked with an audit hook that
records every file the validating process opens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDITED = """
import json, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        opened.append(str(args[0]))
sys.addaudithook(hook)
from runner.cli import main
try:
    status = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as out:
        json.dump(opened, out)
sys.exit(status)
"""


def validate_opening(vm: Path, tmp_path: Path) -> tuple[int, set[str], str]:
    record = tmp_path / "opened.json"
    result = subprocess.run(
        [sys.executable, "-c", AUDITED, str(record), "validate", str(vm)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    return result.returncode, set(json.loads(record.read_text())), result.stdout + result.stderr


@pytest.fixture
def named(tmp_path: Path) -> dict[str, Path]:
    """Files of every kind a VM file may name, each something that must not be opened."""
    files = tmp_path / "named"
    files.mkdir()
    kernel = files / "bzImage"
    header = bytearray(0x1000)
    header[0x202:0x206] = b"HdrS"
    kernel.write_bytes(bytes(header))
    (files / "initrd.img").write_bytes(b"\0" * 512)
    (files / "evil.so").write_bytes(b"\x7fELF" + b"\0" * 60)
    (files / "disk.img").write_bytes(b"\0" * 512)
    (files / "input.txt").write_text("typed\n")
    os.mkfifo(files / "kernel.fifo")
    os.mkfifo(files / "out.fifo")
    (files / "share").mkdir()
    return {p.name: p for p in files.iterdir()}


VM_FILES = {
    "kernel, initramfs, consoles, disk, share": """
        disable_implicit_console = true
        serial_consoles = [{{ input = "{d}/input.txt", output = "{d}/out.fifo" }}]
        [kernel]
        path = "{d}/bzImage"
        initramfs = "{d}/initrd.img"
        [[block]]
        id = "root"
        path = "{d}/disk.img"
        [[fs]]
        tag = "data"
        shared_dir = "{d}/share"
        """,
    "a FIFO as the kernel": """
        [kernel]
        path = "{d}/kernel.fifo"
        """,
    "a device as the kernel and the initramfs": """
        [kernel]
        path = "/dev/zero"
        initramfs = "/dev/urandom"
        """,
    "a library that would run code when loaded": """
        [kernel_bundle]
        library = "{d}/evil.so"
        """,
}


@pytest.mark.parametrize("text", VM_FILES.values(), ids=VM_FILES.keys())
def test_validate_opens_none_of_the_paths_a_file_names(
    tmp_path: Path, named: dict[str, Path], text: str
) -> None:
    directory = next(iter(named.values())).parent
    vm = tmp_path / "vm.toml"
    vm.write_text(text.format(d=directory).replace("\n        ", "\n"))
    status, opened, said = validate_opening(vm, tmp_path)
    assert "Traceback" not in said
    assert status in (0, 1), said
    touched = {
        path for path in opened if path.startswith(str(directory)) or path.startswith("/dev/")
    }
    assert touched == set(), touched
    assert str(vm) in opened  # the VM file itself is read
