"""Disks (virtio-blk) seen from a real guest (runner/devices/virtio/blk.py, native/virtio/blk.c).

Marked `boot`: where /dev/kvm cannot boot Linux, these run inside the emulated host, whose
writable directories are 9p shares; a test that needs a file system that punches holes
puts its disk on a tmpfs (/dev/shm) instead. The guest's tools are busybox's (dd with
oflag=direct, blkdiscard, sha256sum) and, for ext4, the host's mke2fs carried in an
initramfs of the file's own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qcow2_images import check_clean, make_qcow2, raw_contents

from runner.host_kvm import INSIDE_ENV

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ROOT_DISK = ROOT / "configs" / "examples" / "disks" / "root.img"
MIB = 1 << 20
VM = """\
[machine]
mem_size_mib = 256
"""


def disk(id: str, path: Path, **options: object) -> str:
    """A [[block]] table; options are written as TOML values."""
    lines = [f'id = "{id}"', f'path = "{path}"']
    for name, value in options.items():
        lines.append(
            f"{name} = " + (str(value).lower() if value in (True, False) else f'"{value}"')
        )
    return "[[block]]\n" + "\n".join(lines) + "\n"


def run(
    tmp_path: Path, script: str, *tables: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`vmrun run` of a VM with `tables`, whose workload is `sh -c script`."""
    vm = tmp_path / "vm.toml"
    vm.write_text(VM + "".join(tables))
    return subprocess.run(
        [*prefix, sys.executable, "-m", "runner", "run", "--host", "kvm", str(vm),
         "--", "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def pattern(size: int) -> bytes:
    """What `yes vmrun-block-pattern | head -c SIZE` writes in the guest."""
    line = b"vmrun-block-pattern\n"
    return (line * (size // len(line) + 1))[:size]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hole_capable_dir(tmp_path: Path) -> Path:
    """A directory whose file system punches holes: inside the emulated host, tmp_path is a
    9p share (no fallocate), /dev/shm a tmpfs."""
    shm = Path("/dev/shm")
    if os.environ.get(INSIDE_ENV) and os.access(shm, os.W_OK):
        place = shm / f"vmrun-blk-{os.getpid()}-{tmp_path.name}"
        place.mkdir()
        return place
    return tmp_path


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed here (scripts/setup installs it)")
    return found


def test_a_pattern_written_with_o_direct_and_fsync_is_on_the_host(tmp_path: Path) -> None:
    image = tmp_path / "data.img"
    image.write_bytes(bytes(4 * MIB))
    script = (
        "yes vmrun-block-pattern | head -c 1048576 > /tmp/p && "
        "dd if=/tmp/p of=/dev/vda bs=65536 seek=1 oflag=direct conv=fsync,notrunc 2>/dev/null && "
        "cat /sys/block/vda/serial; echo; readlink /dev/disk/by-id/virtio-data-disk.1"
    )
    result = run(tmp_path, script, disk("data-disk.1", image))
    assert (result.returncode, result.stdout) == (0, "data-disk.1\n../../vda\n"), result.stderr
    data = image.read_bytes()
    assert data[65536 : 65536 + MIB] == pattern(MIB)
    assert data[:65536] == bytes(65536) and data[65536 + MIB :] == bytes(len(data) - 65536 - MIB)


def test_the_guest_reads_what_the_host_wrote(tmp_path: Path) -> None:
    image = tmp_path / "host.img"
    image.write_bytes(os.urandom(3 * MIB) + pattern(MIB))
    script = "blockdev --getsize64 /dev/vda; sha256sum /dev/vda; tail -c 20 /dev/vda"
    result = run(tmp_path, script, disk("host", image))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines(keepends=True)
    assert lines[:2] == [f"{4 * MIB}\n", f"{sha256(image)}  /dev/vda\n"], lines
    assert "".join(lines[2:]).encode() == pattern(MIB)[-20:]


def test_a_read_only_disk_refuses_writes_and_is_unchanged(tmp_path: Path) -> None:
    image = tmp_path / "ro.img"
    image.write_bytes(os.urandom(MIB))
    before, mtime = sha256(image), image.stat().st_mtime_ns
    script = (
        "cat /sys/block/vda/ro; "
        "dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync,notrunc 2>/dev/null; echo dd=$?; "
        "sha256sum /dev/vda"
    )
    result = run(tmp_path, script, disk("ro", image, read_only=True))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "1" and lines[1] != "dd=0", result.stdout
    assert lines[2].split()[0] == before
    assert (sha256(image), image.stat().st_mtime_ns) == (before, mtime)


def test_a_qcow2_disk_written_by_the_guest_is_clean_and_holds_the_data(tmp_path: Path) -> None:
    image = make_qcow2(tmp_path / "data.qcow2", 64 * MIB)
    script = (
        "yes vmrun-block-pattern | head -c 1048576 > /tmp/p && "
        "dd if=/tmp/p of=/dev/vda bs=65536 seek=160 conv=fsync,notrunc 2>/dev/null && "
        "blockdev --getsize64 /dev/vda"
    )
    result = run(tmp_path, script, disk("q", image, format="qcow2"))
    assert (result.returncode, result.stdout) == (0, f"{64 * MIB}\n"), result.stderr
    check_clean(image)
    data = raw_contents(image)
    start = 160 * 65536
    assert data[start : start + MIB] == pattern(MIB)
    assert data[:start] == bytes(start)


def test_root_on_a_disk_with_env_workdir_and_exit_status(tmp_path: Path) -> None:
    # The example's root disk: ext4 with busybox. The workload runs from it as it would from
    # the initramfs: its env, its workdir, its status.
    image = tmp_path / "root.img"
    shutil.copyfile(EXAMPLE_ROOT_DISK, image)
    vm = tmp_path / "vm.toml"
    vm.write_text(
        VM + disk("system", image) + '[root]\ntype = "block"\nid = "system"\n'
        '[workload]\nexec = "/bin/sh"\nworkdir = "/mnt"\n'
        'args = ["-c", "echo $GREETING; pwd; grep \' / \' /proc/mounts; echo made > /f; '
        'exit 7"]\n[workload.env]\nGREETING = "hello from a disk"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", str(vm)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 7, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["hello from a disk", "/mnt"]
    assert lines[2].startswith("/dev/vda / ext4 rw"), lines
    # The init left the file system clean (read-only before power-off), with the file made.
    fsck = subprocess.run([tool("e2fsck"), "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    debugfs = subprocess.run(
        [tool("debugfs"), "-R", "cat /f", str(image)], capture_output=True, text=True
    )
    assert debugfs.stdout == "made\n"


def test_discard_punches_holes_in_the_image(tmp_path: Path) -> None:
    image = hole_capable_dir(tmp_path) / "thin.img"
    try:
        image.write_bytes(os.urandom(8 * MIB))
        os.fsync(os.open(image, os.O_RDONLY))
        allocated = image.stat().st_blocks * 512
        assert allocated >= 8 * MIB
        script = "blkdiscard -o 1048576 -l 4194304 /dev/vda && sync && echo discarded"
        result = run(tmp_path, script, disk("thin", image))
        assert (result.returncode, result.stdout) == (0, "discarded\n"), result.stderr
        dropped = allocated - image.stat().st_blocks * 512
        assert dropped >= 4 * MIB, f"only {dropped} bytes given back"
        assert image.read_bytes()[MIB : 5 * MIB] == bytes(4 * MIB)
    finally:
        if image.parent != tmp_path:
            shutil.rmtree(image.parent)


@pytest.mark.parametrize(("cache", "syncs"), [("unsafe", False), ("writeback", True)])
def test_a_guest_flush_syncs_the_image_only_with_writeback(
    tmp_path: Path, cache: str, syncs: bool
) -> None:
    # Counted from outside: strace sees every fsync/fdatasync vmrun makes, in any thread.
    log = tmp_path / "syscalls"
    image = tmp_path / "flushed.img"
    image.write_bytes(bytes(MIB))
    strace = (tool("strace"), "-f", "-qq", "--seccomp-bpf", "-e", "trace=fsync,fdatasync",
              "-o", str(log))  # fmt: skip
    script = "echo x | dd of=/dev/vda conv=fsync,notrunc 2>/dev/null && echo flushed"
    result = run(tmp_path, script, disk("f", image, cache=cache), prefix=strace)
    assert (result.returncode, result.stdout) == (0, "flushed\n"), result.stderr
    calls = [line for line in log.read_text().splitlines() if "sync(" in line]
    assert bool(calls) == syncs, calls
    assert image.read_bytes()[:2] == b"x\n"


def test_the_block_example_does_what_its_comment_says(tmp_path: Path) -> None:
    # configs/examples/block.toml, on copies of its disks (its runs write them): the root
    # on the ext4 disk, the qcow2 scratch disk formatted, mounted and shown beside it.
    examples = ROOT / "configs" / "examples"
    shutil.copytree(examples / "disks", tmp_path / "disks")
    vm = tmp_path / "block.toml"
    vm.write_text((examples / "block.toml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", str(vm)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = [line.split() for line in result.stdout.splitlines()[1:]]
    mounts = {fields[-1]: fields[0] for fields in shown}
    assert mounts == {"/": "/dev/vda", "/mnt": "/dev/vdb"}, result.stdout
    check_clean(tmp_path / "disks" / "data.qcow2")


def test_an_ext4_file_system_the_guest_made_is_found_by_a_later_boot(
    tmp_path: Path, e2fsprogs_initramfs: Path
) -> None:
    image = tmp_path / "ext4.img"
    image.write_bytes(bytes(32 * MIB))
    tools = f'[kernel]\ninitramfs = "{e2fsprogs_initramfs}"\n'
    make = (
        "mkfs.ext4 -q -L made-in-guest /dev/vda && mkdir -p /mnt && mount /dev/vda /mnt && "
        "mkdir /mnt/dir && echo kept > /mnt/dir/file && umount /mnt && echo made"
    )
    result = run(tmp_path, make, tools, disk("fs", image))
    assert (result.returncode, result.stdout) == (0, "made\n"), result.stderr
    # A later boot, a new VM: the file system (clean) and its file are there.
    find = (
        "e2fsck -fn /dev/vda >/dev/null 2>&1; echo fsck=$?; "
        "mkdir -p /mnt && mount -o ro -t ext4 /dev/vda /mnt && cat /mnt/dir/file && "
        "grep /mnt /proc/mounts"
    )
    result = run(tmp_path, find, tools, disk("fs", image, read_only=True))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["fsck=0", "kept"], lines
    assert lines[2].startswith("/dev/vda /mnt ext4 ro"), lines
    # And the host sees an ext4 file system (a journal, extents) labelled by the guest.
    header = subprocess.run(
        [tool("dumpe2fs"), "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "made-in-guest" in header
    features = next(line for line in header.splitlines() if line.startswith("Filesystem features"))
    assert {"has_journal", "extent"} <= set(features.split(":", 1)[1].split())
