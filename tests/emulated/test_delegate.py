"""Which host directories `vmrun run --host emulated` shares read-write, and how the VM's
output files are written from outside the emulated host."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from runner.config.load import load
from runner.devices.legacy.serial_output import OutputFileError
from runner.emulated import delegate
from runner.emulated.delegate import output_files, writable_dirs
from runner.emulated.host import Settings
from runner.host_kvm import kvm_status


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
    # Not "logs": the vmrun outside writes output files (runner/emulated/output_ports.py).
    assert writable_dirs(load(path)) == tuple(
        str(tmp_path / name) for name in ("rw-share", "disks", "sockets")
    )


def test_output_files_are_opened_outside_each_with_a_port(write_vm, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = write_vm("""\
        disable_implicit_console = true
        serial_consoles = [
          { output = "stdout" }, { output = "logs/one.log" }, { output = "null" },
          { output = "logs/three.log" },
        ]
        """)
    with ExitStack() as stack:
        outputs, env = output_files(load(path), stack)
        assert [name for name, _ in outputs] == ["out1", "out3"]
        assert env == ("VMRUN_OUTPUT_PORTS", "1=out1 3=out3")
        outputs[0][1].write(b"written outside\n")
    assert (tmp_path / "logs" / "one.log").read_bytes() == b"written outside\n"
    assert (tmp_path / "logs" / "three.log").read_bytes() == b""


def test_an_output_file_that_is_a_symbolic_link_is_refused_outside(
    write_vm, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "out.log").symlink_to(tmp_path / "elsewhere")
    path = write_vm("""\
        disable_implicit_console = true
        serial_consoles = [{ output = "out.log" }]
        """)
    with ExitStack() as stack, pytest.raises(OutputFileError, match="is a symbolic link"):
        output_files(load(path), stack)


def test_a_vm_writes_its_output_file_through_the_emulated_host(tmp_path: Path) -> None:
    # Its directory is not shared with the emulated host at all: the vmrun outside writes it.
    if kvm_status().usable:
        pytest.skip("this host's KVM boots Linux: vmrun does not use the emulated host here")
    logs = tmp_path / "logs"
    logs.mkdir()
    vm = tmp_path / "vm.toml"
    vm.write_text(
        "disable_implicit_console = true\n"
        'serial_consoles = [{ output = "stdout" }, { output = "logs/ttyS1.log" }]\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "emulated", str(vm),
         "--", "/bin/sh", "-c", "echo to the file > /dev/ttyS1; echo to stdout"],
        cwd=work, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "to stdout\n"
    assert (logs / "ttyS1.log").read_text() == "to the file\n"


@pytest.mark.parametrize(("vcpus", "cpus"), [(1, 1), (2, 2), (4, min(4, os.cpu_count() or 2))])
def test_the_emulated_host_gets_one_cpu_for_a_one_vcpu_guest(
    write_vm, monkeypatch: pytest.MonkeyPatch, vcpus: int, cpus: int
) -> None:
    # Measured (README): one emulated CPU is as fast for such a guest, and without
    # cross-CPU interrupts in the emulated host.
    seen: list[Settings] = []
    monkeypatch.setattr(delegate, "provision", lambda: None)
    monkeypatch.setattr(delegate, "compile_modules", lambda: None)
    monkeypatch.setattr(
        delegate, "run_in_host", lambda _image, _argv, settings, *_: seen.append(settings)
    )
    path = write_vm(f"disable_implicit_console = true\n[machine]\nvcpu_count = {vcpus}\n")
    delegate.run_in_emulated_host(load(path), ["/bin/true"], 60)
    assert seen[0].cpus == max(cpus, 1 if vcpus == 1 else 2)
    # Only where the VM file says it writes: not the current directory, not the cache.
    assert seen[0].writable_cwd is False
    assert seen[0].writable == ()


@pytest.mark.parametrize(("vcpus", "cpus"), [(1, 1), (2, 2), (3, 2), (8, 2)])
def test_emulated_cpus_follow_the_guests_vcpus(vcpus: int, cpus: int, monkeypatch) -> None:
    # One emulated CPU for a one-vCPU guest (no cross-CPU interrupts to lose), at least two
    # for more, never more than the machine's cores.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert delegate.host_cpus(vcpus) == cpus
