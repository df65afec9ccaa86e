"""qcow2 images for the tests of qcow2 disks: made, checked and read back with qemu-img, and
served by qemu-storage-daemon (runner/devices/virtio/disk_export.py).

Without qemu-img or the daemon a test is skipped here, and fails under CI, which installs
both (`bash scripts/setup` as root).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from required_tools import unavailable

from runner.devices.virtio.disk_export import DAEMON


def qemu_img() -> str:
    found = shutil.which("qemu-img")
    if found is None:
        unavailable("qemu-img is not installed (Debian: apt-get install qemu-utils)")
    return found


def require_daemon() -> None:
    if shutil.which(DAEMON) is None:
        unavailable(f"{DAEMON} is not installed (Debian: apt-get install qemu-system-common)")


def make_qcow2(path: Path, size: int, cluster_size: int = 65536) -> Path:
    """An empty qcow2 of `size` bytes (and no backing file: unwritten clusters read zero)."""
    subprocess.run(
        [qemu_img(), "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster_size}"]
        + [str(path), str(size)],
        check=True,
    )
    return path


def check_clean(path: Path) -> None:
    """`qemu-img check` finds nothing wrong, and no leaked clusters."""
    done = subprocess.run([qemu_img(), "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No errors were found on the image." in done.stdout, done.stdout


def raw_contents(path: Path) -> bytes:
    """The disk's bytes as a guest sees them (`qemu-img convert -O raw`)."""
    raw = path.with_suffix(".raw")
    subprocess.run([qemu_img(), "convert", "-O", "raw", str(path), str(raw)], check=True)
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


def allocated(path: Path, start: int, length: int) -> bool:
    """Does any part of [start, start+length) hold data in the image (`qemu-img map`)?"""
    out = subprocess.run(
        [qemu_img(), "map", "--output=json", str(path)], capture_output=True, check=True
    ).stdout
    for extent in json.loads(out):
        overlaps = extent["start"] < start + length and start < extent["start"] + extent["length"]
        if overlaps and extent["data"]:
            return True
    return False
