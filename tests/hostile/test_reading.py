"""What `vmrun validate` is given may be no VM file at all: a FIFO (opening one for reading
waits for a writer), a device that never ends, a directory, a huge file, or a link to one.
Each is refused at once with one located message; a link to a VM file is a VM file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from runner.config import source
from runner.config.load import load
from runner.config.problems import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LIMIT = source.MAX_FILE_BYTES


def refusal(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return info.value.lines()


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    # In a process of its own, with a timeout: a FIFO opened for reading would block it.
    return subprocess.run(
        [sys.executable, "-m", "runner", "validate", *map(str, paths)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "vm.toml"
    os.mkfifo(fifo)
    result = validate(fifo)
    assert result.returncode == 1
    assert result.stdout == f"{fifo}:1:1: (document): is a FIFO, not a regular file\n"


@pytest.mark.parametrize(
    ("target", "what"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_a_link_to_a_device_is_refused(tmp_path: Path, target: str, what: str) -> None:
    link = tmp_path / "vm.json"
    link.symlink_to(target)
    assert refusal(link) == [f"{link}:1:1: (document): is {what}, not a regular file"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "vm.toml"
    directory.mkdir()
    assert refusal(directory) == [
        f"{directory}:1:1: (document): cannot read the file: Is a directory"
    ]


def test_a_file_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "vm.toml"
    with huge.open("wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB that would take minutes to read and parse
    with mock.patch("os.read", side_effect=AssertionError("read")):
        lines = refusal(huge)
    assert lines == [f"{huge}:1:1: (document): is {8 << 30} bytes; a VM file is at most {LIMIT} "
                     "bytes (1 MiB)"]  # fmt: skip


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    vm = tmp_path / "vm.toml"
    vm.write_text("#" * (LIMIT - 1) + "\n")
    assert load(str(vm)).resources.workload is None


def test_a_file_that_holds_more_than_its_size_says_is_cut_at_the_limit(tmp_path: Path) -> None:
    # /proc files say 0 bytes; a file may grow while read: the read itself is bounded.
    vm = tmp_path / "vm.toml"
    vm.write_text("#" * (2 * LIMIT))
    real_fstat = os.fstat

    def small(fd: int) -> os.stat_result:
        info = list(real_fstat(fd))
        info[6] = 0  # st_size
        return os.stat_result(info)

    reads: list[int] = []
    real_read = os.read

    def counted(fd: int, size: int) -> bytes:
        reads.append(size)
        return real_read(fd, size)

    with mock.patch("os.fstat", small), mock.patch("os.read", counted):
        lines = refusal(vm)
    assert lines == [f"{vm}:1:1: (document): holds more than its size said; a VM file is at "
                     f"most {LIMIT} bytes (1 MiB)"]  # fmt: skip
    assert sum(reads) <= LIMIT + 1


def test_a_link_to_a_vm_file_is_a_vm_file(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text("[machine]\nvcpu_count = 2\n")
    link = tmp_path / "vm.toml"
    link.symlink_to(target)
    assert load(str(link)).resources.machine.vcpu_count == 2


def test_every_file_given_is_answered_in_one_run(tmp_path: Path) -> None:
    fifo = tmp_path / "a.toml"
    os.mkfifo(fifo)
    zero = tmp_path / "b.toml"
    zero.symlink_to("/dev/zero")
    good = tmp_path / "c.toml"
    good.write_text("")
    result = validate(fifo, zero, good)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{fifo}:1:1: (document): is a FIFO, not a regular file",
        f"{zero}:1:1: (document): is a character device, not a regular file",
    ]
    assert result.stderr == "2 of 3 file(s) invalid\n"
