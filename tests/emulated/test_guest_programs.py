"""Host programs packed for the guest (runner/emulated/guest_programs.py): the archive alone,
unpacked and entered with chroot, runs them, so the set of libraries is complete."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from runner import cache
from runner.emulated import guest_programs as gp
from runner.emulated.guest_programs import GuestProgramError, guest_programs


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cache, "_checked", set())
    monkeypatch.delenv(cache.INSIDE_ENV, raising=False)
    monkeypatch.setenv("VMRUN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def unpack(archive: bytes, into: Path) -> list[str]:
    """Make the newc archive's files, directories and symlinks under `into`; their names."""
    names, pos = [], 0
    while True:
        head = archive[pos : pos + 110]
        assert head[:6] == b"070701", f"no newc header at {pos}"
        fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = archive[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return names
        names.append(name)
        path = into / name
        if stat.S_ISDIR(mode):
            path.mkdir(exist_ok=True)
        elif stat.S_ISLNK(mode):
            path.symlink_to(data.decode())
        else:
            path.write_bytes(data)
            path.chmod(stat.S_IMODE(mode))


def chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # An empty environment: nothing from this host's (LD_LIBRARY_PATH, ...) helps it.
    return subprocess.run(
        [str(shutil.which("chroot")), str(root), *argv],
        capture_output=True,
        text=True,
        env={},
        timeout=120,
    )


def unpacked(names: list[str], tmp_path: Path, **kwargs: bool) -> tuple[Path, list[str]]:
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        pytest.skip("entering the unpacked archive needs root and chroot(8)")
    programs = guest_programs(names, **kwargs)
    data = programs.archive.read_bytes()
    if kwargs.get("compress"):
        data = gzip.decompress(data)
    root = tmp_path / "root"
    root.mkdir()
    return root, unpack(data, root)


def test_mke2fs_and_e2fsck_run_from_the_archive_alone(tmp_path: Path) -> None:
    root, names = unpacked(["mke2fs", "e2fsck"], tmp_path, compress=True)
    mke2fs = str(gp.host_program("mke2fs"))
    assert mke2fs.lstrip("/") in names
    version = chroot(root, mke2fs, "-V")
    assert version.returncode == 0, version.stderr
    assert "mke2fs" in version.stderr
    # It makes a file system, as mkfs.ext4 too, and e2fsck finds it clean.
    (root / "disk.img").write_bytes(bytes(4 << 20))
    made = chroot(root, str(Path(mke2fs).parent / "mkfs.ext4"), "-F", "-q", "/disk.img")
    assert made.returncode == 0, made.stderr
    checked = chroot(root, str(gp.host_program("e2fsck")), "-f", "-n", "/disk.img")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_fio_runs_an_aio_job_from_the_archive_alone(tmp_path: Path) -> None:
    if shutil.which("fio") is None:
        pytest.skip("fio is not installed here (bench/blk installs it)")
    root, _ = unpacked(["fio"], tmp_path)
    fio = str(gp.host_program("fio"))
    version = chroot(root, fio, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("fio-")
    # libaio, which the benchmark's jobs use, loads and works.
    job = chroot(root, fio, "--name=w", "--filename=/f", "--size=1M", "--rw=write",
                 "--bs=64k", "--ioengine=libaio", "--output-format=terse")  # fmt: skip
    assert job.returncode == 0, job.stdout + job.stderr
    assert (root / "f").stat().st_size == 1 << 20


def test_the_archive_is_built_once_per_set_of_files() -> None:
    first = guest_programs(["mke2fs"])
    built = first.archive.stat().st_mtime_ns
    again = guest_programs(["mke2fs"])
    assert again == first
    assert again.archive.stat().st_mtime_ns == built
    assert guest_programs(["mke2fs"], compress=True).archive != first.archive


def test_the_loader_and_libraries_are_the_hosts() -> None:
    objects = gp.shared_objects(gp.host_program("mke2fs"))
    assert any("ld-linux" in path for path in objects)
    assert any(Path(path).name.startswith("libext2fs.so") for path in objects)
    assert all(path.startswith("/") and os.path.exists(path) for path in objects)


def test_a_missing_program_says_what_to_install() -> None:
    with pytest.raises(GuestProgramError, match=r"not on this host.*apt-get install"):
        guest_programs(["no-such-program-for-vmrun"])


def test_a_path_is_not_a_program_name() -> None:
    with pytest.raises(GuestProgramError, match="a program's name"):
        guest_programs(["/usr/bin/fio"])
