"""Which host directories `vmrun run --host emulated` shares read-write."""

from __future__ import annotations

from pathlib import Path

from runner.config.load import load
from runner.emulated.delegate import writable_dirs


def test_writable_dirs_are_where_the_vm_writes(write_vm, tmp_path: Path) -> None:
    for name in ("ro-share", "rw-share", "disks", "ro-disks", "logs", "sockets"):
        (tmp_path / name).mkdir()
    (tmp_path / "disks" / "a.img").write_bytes(b"\0" * 512)
    (tmp_path / "ro-disks" / "b.img").write_bytes(b"\0" * 512)
    path = write_vm("""\
        console_output = "logs/console.txt"
        serial_consoles = [{ output = "stdout" }]

        [[fs]]
        tag = "ro"
        shared_dir = "ro-share"
        read_only = true

        [[fs]]
        tag = "rw"
        shared_dir = "rw-share"

        [[block]]
        id = "a"
        path = "disks/a.img"

        [[block]]
        id = "b"
        path = "ro-disks/b.img"
        read_only = true

        [vsock]
        ports = [{ port = 5, socket_path = "sockets/s.sock" }]
        """)
    assert writable_dirs(load(path)) == tuple(
        str(tmp_path / name) for name in ("rw-share", "disks", "sockets", "logs")
    )
