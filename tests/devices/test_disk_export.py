"""runner/devices/virtio/disk_export.py: qemu-storage-daemon started, checked and stopped for
one qcow2 disk. (The data that goes through it: tests/native/test_nbd.py.)"""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qcow2_images import check_clean, make_qcow2, require_daemon

from runner.devices.virtio import disk_export
from runner.devices.virtio.disk_export import DiskExport, DiskExportError, daemon_argv

MiB = 1 << 20


def _options(argv: list[str], name: str) -> list[dict[str, object]]:
    return [json.loads(value) for option, value in itertools.pairwise(argv) if option == name]


@pytest.mark.parametrize(("read_only", "direct_io"), [(False, True), (True, False)])
def test_the_daemons_command_line(read_only: bool, direct_io: bool) -> None:
    image = "/disks/a,b=c d.qcow2"  # commas and `=`: JSON needs no escaping for them
    argv = daemon_argv(
        "/usr/bin/qsd", image, "/run/x/nbd.sock", read_only=read_only, direct_io=direct_io
    )
    assert argv[0] == "/usr/bin/qsd"
    file_node, qcow2_node = _options(argv, "--blockdev")
    assert file_node == {
        "driver": "file",
        "node-name": "image-file",
        "filename": image,
        "read-only": read_only,
        "cache": {"direct": direct_io},
        "aio": "threads",
        "discard": "unmap",
    }
    assert qcow2_node == {
        "driver": "qcow2",
        "node-name": "image",
        "file": "image-file",
        "read-only": read_only,
        "discard": "unmap",
    }
    assert _options(argv, "--nbd-server") == [{"addr": {"type": "unix", "path": "/run/x/nbd.sock"}}]
    (export,) = _options(argv, "--export")
    assert export["type"] == "nbd" and export["node-name"] == "image"
    assert export["name"] == disk_export.EXPORT_NAME and export["writable"] is not read_only


def test_without_the_daemon_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        DiskExportError, match=r"qcow2 disks need qemu-storage-daemon.*qemu-system-common"
    ):
        DiskExport(str(tmp_path / "disk.qcow2"), disk="block[0]", read_only=False, direct_io=False)


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR for the export's private directory, where the test can watch it."""
    require_daemon()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    return scratch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_daemon_runs_in_a_private_directory_and_is_gone_after_close(
    tmp_path: Path, tmpdir_here: Path
) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 8 * MiB)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=True) as export:
        (private,) = tmpdir_here.iterdir()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert export.socket_path == str(private / "nbd.sock")
        assert stat.S_ISSOCK(os.stat(export.socket_path).st_mode)
        assert export.export_name == "disk"
        pid = export.pid
        assert pid is not None and os.getpgid(pid) == pid  # a process group of its own
        assert os.getpgid(pid) != os.getpgid(0)
    assert not _alive(pid)
    assert list(tmpdir_here.iterdir()) == []
    check_clean(image)
    export.close()  # again: nothing left to do


def test_a_missing_image_is_named(tmp_path: Path, tmpdir_here: Path) -> None:
    missing = tmp_path / "missing.qcow2"
    with pytest.raises(DiskExportError) as caught:
        DiskExport(str(missing), disk="block[2]", read_only=False, direct_io=False)
    assert str(caught.value).startswith(f"block[2]: qemu-storage-daemon cannot serve {missing}: ")
    assert "No such file or directory" in str(caught.value)
    assert list(tmpdir_here.iterdir()) == []


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (b"garbage, not an image" * 100, "Image is not in qcow2 format"),
        (b"QFI\xfb\x00\x00\x00\x03" + b"\xff" * 200, "Unsupported cluster size"),
    ],
)
def test_a_corrupt_image_quotes_the_daemon(
    tmp_path: Path, tmpdir_here: Path, header: bytes, says: str
) -> None:
    image = tmp_path / "corrupt.qcow2"
    image.write_bytes(header + bytes(MiB))
    with pytest.raises(DiskExportError) as caught:
        DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False)
    message = str(caught.value)
    assert message.startswith(f"block[0]: qemu-storage-daemon cannot serve {image}: ")
    assert says in message.split(": ", 2)[2]
    assert "--blockdev" not in message  # the daemon's echo of vmrun's own option is left out
    assert list(tmpdir_here.iterdir()) == []


def test_an_image_locked_by_another_daemon_is_refused(tmp_path: Path, tmpdir_here: Path) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 8 * MiB)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False):
        with pytest.raises(DiskExportError, match=r'block\[1\]: .*Failed to get "write" lock'):
            DiskExport(str(image), disk="block[1]", read_only=False, direct_io=False)
        # A read-only user of a disk another VM writes would read torn data: refused too.
        with pytest.raises(DiskExportError, match="lock"):
            DiskExport(str(image), disk="block[1]", read_only=True, direct_io=False)
    check_clean(image)


def test_one_image_may_be_exported_read_only_twice(tmp_path: Path, tmpdir_here: Path) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 8 * MiB)
    with (
        DiskExport(str(image), disk="block[0]", read_only=True, direct_io=False) as first,
        DiskExport(str(image), disk="block[1]", read_only=True, direct_io=False) as second,
    ):
        assert first.socket_path != second.socket_path


def test_where_tmpdir_takes_no_socket_the_next_place_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_daemon()
    deep = tmp_path / ("d" * 100)  # a socket path there is over 108 bytes
    deep.mkdir()
    fallback = tmp_path / "shm"
    fallback.mkdir()
    monkeypatch.setattr(disk_export, "socket_bases", lambda: [str(deep), str(fallback)])
    image = make_qcow2(tmp_path / "disk.qcow2", MiB)
    with DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False) as export:
        assert Path(export.socket_path).parent.parent == fallback
        assert list(deep.iterdir()) == []  # the first try left nothing behind
    assert list(fallback.iterdir()) == []


def test_with_nowhere_for_the_socket_every_place_tried_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_daemon()
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    absent = tmp_path / "absent"
    monkeypatch.setattr(disk_export, "socket_bases", lambda: [str(deep), str(absent)])
    with pytest.raises(DiskExportError) as caught:
        DiskExport(str(tmp_path / "disk.qcow2"), disk="block[0]", read_only=False, direct_io=False)
    message = str(caught.value)
    assert message.startswith("block[0]: no directory for qemu-storage-daemon's socket (")
    assert f"{deep}: too long for a unix socket" in message
    assert f"{absent}: No such file or directory" in message
    assert message.endswith("set TMPDIR to a short local directory")
    assert list(deep.iterdir()) == []


def test_the_places_for_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert disk_export.socket_bases() == [str(tmp_path), "/run/user/1000", "/dev/shm"]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert disk_export.socket_bases() == [str(tmp_path), "/dev/shm"]


def test_a_daemon_that_ignores_sigterm_is_killed(
    tmp_path: Path, tmpdir_here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_export, "STOP_TIMEOUT_S", 0.5)
    image = make_qcow2(tmp_path / "disk.qcow2", 8 * MiB)
    export = DiskExport(str(image), disk="block[0]", read_only=False, direct_io=False)
    pid = export.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process takes SIGTERM only once continued
    started = time.monotonic()
    export.close()
    assert time.monotonic() - started < 5
    assert not _alive(pid)
    assert list(tmpdir_here.iterdir()) == []


VMRUN_KILLED = """
import os, signal, sys
from runner.devices.virtio.disk_export import DiskExport
export = DiskExport(sys.argv[1], disk="block[0]", read_only=False, direct_io=False)
print(export.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_daemon_dies_with_a_killed_vmrun(tmp_path: Path, tmpdir_here: Path) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 8 * MiB)
    env = {**os.environ, "TMPDIR": str(tmpdir_here)}
    done = subprocess.run(
        [sys.executable, "-c", VMRUN_KILLED, str(image)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Gone, or a zombie waiting for init to reap it: either way not running.
    assert not _alive(pid) or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
