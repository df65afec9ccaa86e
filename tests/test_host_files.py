"""Files a VM file names for vmrun to read: a path that is not what its key expects (a FIFO,
a device, a directory, a file larger than the guest) is refused, never waited on or read
without bound, in `vmrun validate` and in `vmrun run`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import attrs
import pytest
from fake_machine import stand_in_for_kvm

from runner import builder
from runner.builder import BuildError
from runner.config.load import load
from runner.host_files import HostFileError, open_regular, read_regular

MIB = 1 << 20


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(b"x" * 1000)
    assert read_regular(str(path), "kernel.initramfs", MIB) == b"x" * 1000


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/dev/zero", "a character device"), ("/", "a directory")],
)
def test_devices_and_directories_are_refused(path: str, kind: str) -> None:
    with pytest.raises(HostFileError) as info:
        open_regular(path, "kernel.path", 256 * MIB)
    assert str(info.value) == f"kernel.path: {path} is {kind}, not a regular file"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "kernel"
    os.mkfifo(fifo)
    outcome: list[object] = []

    def attempt() -> None:
        try:
            open_regular(str(fifo), "kernel.path", MIB)
        except HostFileError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome == [f"kernel.path: {fifo} is a FIFO, not a regular file"]


def test_a_file_larger_than_the_guest_is_refused_before_it_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB that would take a long time to read
    with pytest.raises(HostFileError) as info:
        open_regular(str(huge), "kernel.initramfs", 256 * MIB)
    assert str(info.value) == (
        f"kernel.initramfs: {huge} is {64 << 30} bytes, more than the guest's memory "
        "(256 MiB) could hold"
    )


def test_a_pseudo_file_that_cannot_be_read_is_an_error_value() -> None:
    with pytest.raises(HostFileError, match=r"^kernel\.path: /proc/self/mem: "):
        read_regular("/proc/self/mem", "kernel.path", MIB)


VM = """\
disable_implicit_console = true
serial_consoles = [{{ output = "stdout" }}]
[machine]
mem_size_mib = 128
[kernel]
{key} = "{path}"
"""


@pytest.mark.parametrize("key", ["path", "initramfs"])
def test_run_refuses_a_device_where_a_kernel_or_initramfs_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # Loaded without the path checks (as if /dev/zero had replaced the file after them).
    vm = tmp_path / "vm.toml"
    vm.write_text(VM.format(key=key, path=tmp_path / "stand-in"))
    (tmp_path / "stand-in").write_bytes(b"")
    resources = load(str(vm)).resources
    swapped = attrs.evolve(resources, kernel=attrs.evolve(resources.kernel, **{key: "/dev/zero"}))
    stand_in_for_kvm(monkeypatch, tmp_path)
    with pytest.raises(BuildError) as info:
        builder.build(swapped, ["/bin/true"])
    step = "loading the kernel" if key == "path" else "placing the initramfs"
    assert str(info.value) == (
        f"{step}: kernel.{key}: /dev/zero is a character device, not a regular file"
    )


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "proc-self-mem", "directory"])
def test_validate_says_what_the_kernel_path_is_and_never_waits(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        target = tmp_path / "kernel"
        os.mkfifo(target)
        expected = f"kernel.path: is a FIFO, not a regular file: {target}"
    elif kind == "dev-zero":
        target = Path("/dev/zero")
        expected = "kernel.path: is a character device, not a regular file: /dev/zero"
    elif kind == "directory":
        target = tmp_path
        expected = f"kernel.path: is a directory, not a file: {tmp_path}"
    else:
        target = Path("/proc/self/mem")
        expected = None  # a regular file to stat; its header cannot be read: no size known
    vm = tmp_path / "vm.toml"
    vm.write_text(VM.format(key="path", path=target))
    result = subprocess.run(
        [sys.executable, "-m", "runner", "validate", str(vm)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    if expected is None:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode == 1
        assert expected in result.stdout + result.stderr
