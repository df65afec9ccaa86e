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
        console_output = "logs/console.log"
        serial_consoles = [
          { output = "stdout" }, { output = "logs/one.log" }, { output = "null" },
          { output = "logs/three.log" },
        ]
        [[virtio_consoles]]
        type = "auto"
        output = "logs/one.log"
        err = "logs/err.log"
        [[virtio_consoles]]
        type = "ports"
        ports = [
          { type = "inout", name = "m", output = "logs/m.log" }, { type = "tty", name = "t" },
        ]
        """)
    with ExitStack() as stack:
        outputs, env = output_files(load(path), stack)
        # One port per file, whatever number of outputs name it.
        assert [name for name, _ in outputs] == ["out0", "out1", "out2", "out3", "out4"]
        assert env == (
            "VMRUN_OUTPUT_PORTS",
            "serial_consoles[1].output=out0 serial_consoles[3].output=out1 "
            "console_output=out2 virtio_consoles[0].output=out0 virtio_consoles[0].err=out3 "
            "virtio_consoles[1].ports[0].output=out4",
        )
        outputs[0][1].write(b"written outside\n")
    assert (tmp_path / "logs" / "one.log").read_bytes() == b"written outside\n"
    for name in ("three", "console", "err", "m"):
        assert (tmp_path / "logs" / f"{name}.log").read_bytes() == b""


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
    argvs: list[list[str]] = []
    monkeypatch.setattr(delegate, "provision", lambda: None)
    monkeypatch.setattr(delegate, "_with_waiting_inside", lambda image: image)
    monkeypatch.setattr(delegate, "compile_modules", lambda: None)
    monkeypatch.setattr(
        delegate,
        "run_in_host",
        lambda _image, argv, settings, *_: (argvs.append(argv), seen.append(settings)),
    )
    path = write_vm(f"disable_implicit_console = true\n[machine]\nvcpu_count = {vcpus}\n")
    delegate.run_in_emulated_host(load(path), ["/bin/true"], 60)
    assert seen[0].cpus == max(cpus, 1 if vcpus == 1 else 2)
    # Saved and restored, its job run by the waiting inside with the same arguments.
    assert seen[0].snapshot
    inside_args = seen[0].inside_args
    assert inside_args is not None and inside_args[1:] == ("--", "/bin/true")
    assert argvs[0] == [sys.executable, *delegate.INSIDE_ENTRY, *inside_args]
    # Only where the VM file says it writes: not the current directory, not the cache.
    assert seen[0].writable_cwd is False
    assert seen[0].writable == ()


@pytest.mark.parametrize(("vcpus", "cpus"), [(1, 1), (2, 2), (3, 2), (8, 2)])
def test_emulated_cpus_follow_the_guests_vcpus(vcpus: int, cpus: int, monkeypatch) -> None:
    # One emulated CPU for a one-vCPU guest (no cross-CPU interrupts to lose), at least two
    # for more, never more than the machine's cores.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert delegate.host_cpus(vcpus) == cpus


@pytest.mark.parametrize(
    ("text", "reads"),
    [
        ("", True),  # the implicit console: the workload's stdin
        ('console_output = "out.log"', False),  # that console writes a file, reads nothing
        ("disable_implicit_console = true", False),
        ('disable_implicit_console = true\nserial_consoles = [{ input = "stdin" }]', True),
        ('disable_implicit_console = true\nserial_consoles = [{ input = "in.txt" }]', False),
        ('disable_implicit_console = true\n[[virtio_consoles]]\ntype = "auto"', True),
        (
            'disable_implicit_console = true\n[[virtio_consoles]]\ntype = "auto"\ninput = "null"',
            False,
        ),
        (
            'disable_implicit_console = true\n[[virtio_consoles]]\ntype = "ports"\n'
            'ports = [{ type = "inout", name = "io" }, { type = "tty", name = "t" }]',
            True,  # a tty port's terminal is vmrun's stdin unless it names one
        ),
        (
            'disable_implicit_console = true\n[[virtio_consoles]]\ntype = "ports"\n'
            'ports = [{ type = "inout", name = "io", input = "stdin" }]',
            True,
        ),
        (
            'disable_implicit_console = true\n[[virtio_consoles]]\ntype = "ports"\n'
            'ports = [{ type = "inout", name = "io", input = "in.txt", output = "null" }]',
            False,
        ),
    ],
)
def test_vmrun_s_stdin_goes_in_only_for_a_vm_that_reads_it(
    write_vm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, reads: bool
) -> None:
    (tmp_path / "in.txt").write_text("typed\n")
    vm = load(write_vm(text + "\n"))
    assert delegate.reads_stdin(vm.resources) is reads
    seen: list[Settings] = []
    monkeypatch.setattr(delegate, "provision", lambda: None)
    monkeypatch.setattr(delegate, "_with_waiting_inside", lambda image: image)
    monkeypatch.setattr(delegate, "compile_modules", lambda: None)
    monkeypatch.setattr(
        delegate, "run_in_host", lambda _image, _argv, settings, *_: seen.append(settings)
    )
    delegate.run_in_emulated_host(vm, ["/bin/true"], 60)
    # "raw": a terminal there becomes the VM's console; otherwise the workload gets /dev/null
    # and a `while read` loop around vmrun keeps its lines.
    assert seen[0].stdin == ("raw" if reads else "null")


def test_the_vmrun_inside_runs_the_prepared_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import timings

    argv = delegate.inside_argv("/tmp/vmrun-vm-x/vm.pickle", ["/bin/sh", "-c", "exit 3"])
    assert argv == [
        sys.executable, "-S", "-P", "-m", "runner.emulated.inside", "/tmp/vmrun-vm-x/vm.pickle",
        "--", "/bin/sh", "-c", "exit 3",
    ]  # fmt: skip
    assert delegate.inside_argv("p", None)[-1] == "p"  # the file's own workload
    monkeypatch.setattr(timings, "TIMELINE", timings.Timeline())
    timings.TIMELINE.enable()
    assert delegate.inside_argv("p", None)[-2:] == ["p", "--timings"]


def test_modules_the_vmrun_inside_loads_are_compiled_outside() -> None:
    # Inside, the checkout is read-only: a module without a current .pyc would be compiled
    # at emulated speed on every run. The guest init's build script is loaded by path.
    import importlib.util

    from runner.guest.initramfs import NATIVE_INIT

    delegate.compile_modules()
    for source in (Path(delegate.__file__), NATIVE_INIT / "build.py"):
        compiled = Path(importlib.util.cache_from_source(str(source)))
        assert compiled.stat().st_mtime_ns >= source.stat().st_mtime_ns, compiled


def test_the_vmrun_inside_runs_no_code_from_the_user_s_directory(tmp_path: Path) -> None:
    # It runs in the user's directory: a `runner` package there must not be imported.
    fake = tmp_path / "runner"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    argv = delegate.inside_argv(str(tmp_path / "missing.pickle"), None)
    env = {**os.environ, "PYTHONPATH": delegate.module_path()}
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert not (tmp_path / "ran").exists()
    assert result.returncode == 125, result.stderr
    assert result.stderr.startswith("vmrun: "), result.stderr
