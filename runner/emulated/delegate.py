"""`vmrun run --host emulated`: the VM, as loaded here, run by a vmrun inside the emulated host
on its real KVM (runner/emulated/inside.py).

The VM's console streams through and its exit status comes back unchanged; vmrun's stdin
goes in when the VM reads it, a terminal there in raw mode as the VM's console. What the VM
writes on the host (console files, sockets, writable disks and shares) must be writable
inside the emulated host, so those directories are shared read-write.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import ExitStack
from typing import BinaryIO

import runner
from runner import progress, timings
from runner.config.fields import PathUse
from runner.config.load import VmFile
from runner.config.model import VmResources
from runner.config.paths import host_paths
from runner.devices.legacy.serial_output import open_output_file
from runner.devices.virtio import console_plan
from runner.emulated import output_ports, prepared_vm
from runner.emulated.host import Outcome, Settings, run_in_host
from runner.emulated.image import HostImage, provision
from runner.emulated.output_ports import OUTPUT_PORTS_ENV, encode, port_name
from runner.errors import VmrunError

# How the inside's interpreter starts it: its arguments follow.
INSIDE_ENTRY = ("-S", "-P", "-m", "runner.emulated.inside")
# Memory of the emulated host beyond the guest's: its own kernel, vmrun and page tables.
HOST_OVERHEAD_MIB = 1536
MIN_HOST_MIB = 4096


def writable_dirs(vm: VmFile) -> tuple[str, ...]:
    """Host directories the VM writes to: where its sockets go, and the directories of its
    writable disks and shares. Not those of its output files: the vmrun outside writes them
    (runner/emulated/output_ports.py)."""
    dirs: list[str] = []
    for key_path, use, value in host_paths(vm.resources):
        if key_path[0] == "console_output":  # an output file, written outside (output_files)
            continue
        if use is PathUse.PARENT:
            dirs.append(os.path.dirname(value) or ".")
        elif use is PathUse.DIR and not _read_only(vm, key_path):
            dirs.append(value)
        elif key_path[0] == "block" and not _read_only(vm, key_path):
            dirs.append(os.path.dirname(value))
    return tuple(dict.fromkeys(dirs))


def _read_only(vm: VmFile, key_path: tuple[str | int, ...]) -> bool:
    section, index = key_path[0], key_path[1]
    device = getattr(vm.resources, str(section))[int(index)]
    return bool(getattr(device, "read_only", False))


def output_files(
    vm: VmFile, stack: ExitStack
) -> tuple[tuple[tuple[str, BinaryIO], ...], tuple[str, str]]:
    """The consoles' output files, opened here (with the checks a host's KVM run makes),
    each with its port's name (one per file, whatever number of outputs name it); and the
    environment entry that tells the vmrun inside which port is which output's."""
    outputs: list[tuple[str, BinaryIO]] = []
    names: dict[str, str] = {}  # path -> port name
    ports: dict[str, str] = {}  # key -> port name
    for key, path in output_ports.output_files(vm.resources):
        if path not in names:
            names[path] = port_name(len(names))
            outputs.append((names[path], stack.enter_context(open_output_file(path, key))))
        ports[key] = names[path]
    return tuple(outputs), (OUTPUT_PORTS_ENV, encode(ports))


def run_in_emulated_host(vm: VmFile, workload: list[str] | None, timeout_s: float) -> Outcome:
    memory = max(MIN_HOST_MIB, vm.resources.machine.mem_size_mib + HOST_OVERHEAD_MIB)
    compile_modules()
    with ExitStack() as stack:
        # The VM as loaded here, for the vmrun inside, which sees this directory read-only.
        prepared = stack.enter_context(tempfile.TemporaryDirectory(prefix="vmrun-vm-"))
        path = prepared_vm.write(vm.resources, prepared)
        image = _with_waiting_inside(provision())
        outputs, ports_env = output_files(vm, stack)
        settings = Settings(
            cpus=host_cpus(vm.resources.machine.vcpu_count),
            memory_mib=memory,
            timeout_s=timeout_s,
            writable=writable_dirs(vm),
            writable_cwd=False,
            env=(("PYTHONPATH", module_path()), ports_env, *_first_run()),
            outputs=outputs,
            # Only a VM that reads stdin takes it: `while read f; do vmrun run ...; done`
            # keeps its lines otherwise.
            stdin="raw" if reads_stdin(vm.resources) else "null",
            snapshot=True,
            inside_args=tuple(inside_args(path, workload)),
        )
        # What the host's init runs when the waiting inside is not there.
        argv = inside_argv(path, workload)
        return run_in_host(image, argv, settings, sys.stdout.buffer, sys.stderr.buffer)


def _with_waiting_inside(image: HostImage) -> HostImage:
    """The host image with the waiting vmrun inside (runner/emulated/inside_bundle.py), or
    without it, said in one line, if its files cannot be gathered: that costs only time."""
    from runner.emulated.inside_bundle import with_waiting_inside

    try:
        return with_waiting_inside(image, module_path())
    except (VmrunError, OSError) as exc:
        print(f"vmrun: the vmrun inside starts with each run: {exc}", file=sys.stderr)
        return image


def inside_argv(prepared: str, workload: list[str] | None) -> list[str]:
    """The vmrun inside: `prepared` on its KVM (runner/emulated/inside.py)."""
    # -S: the interpreter inside skips site's work (the venv's .pth files, the editable
    # install's finder: a second of emulated time) and gets this one's module path instead.
    # -P: it runs in the user's directory, which `-m` would put first on the module path: a
    # `runner` package there would be run instead of vmrun's.
    return [sys.executable, *INSIDE_ENTRY, *inside_args(prepared, workload)]


def inside_args(prepared: str, workload: list[str] | None) -> list[str]:
    """The inside's arguments. With --timings, it sends its phases to this one's timeline."""
    args = [prepared, *(["--timings"] if timings.TIMELINE.enabled else [])]
    return args + (["--", *workload] if workload is not None else [])


def reads_stdin(resources: VmResources) -> bool:
    """Does a console of the VM read vmrun's stdin? A serial console whose input is `stdin`,
    or a virtio console port (the console plan's answer, which is the same whichever of
    vmrun's stdio are terminals)."""
    if any(serial.input == "stdin" for serial in resources.serial_consoles):
        return True
    return console_plan.reads_stdin(console_plan.console_plans(resources, frozenset()))


def host_cpus(vcpus: int) -> int:
    """Emulated CPUs for a guest of `vcpus`. One for a one-vCPU guest: no cross-CPU
    interrupts in the emulated host (one CI lock-up was an IPI from kvm_destroy_vm that never
    completed, and a two-CPU host's kernel once panicked under bench/boot), and as fast or
    faster, measured (README, "The emulated host holds")."""
    return 1 if vcpus == 1 else max(2, min(vcpus, os.cpu_count() or 2))


def _first_run() -> tuple[tuple[str, str], ...]:
    """On a first run, the vmrun inside announces its phases too."""
    return ((progress.FIRST_RUN_ENV, "1"),) if progress.first_run() else ()


def compile_modules() -> None:
    """Compile vmrun's modules here, where the checkout is writable: inside, the host's files
    are read-only, and every module without a current .pyc would be compiled again at each
    run, at emulated speed. Up-to-date modules cost a stat each; failures change nothing."""
    import compileall

    from runner.guest.initramfs import NATIVE_INIT

    package = os.path.dirname(os.path.abspath(runner.__file__))
    compileall.compile_dir(package, quiet=2)
    # The guest init's build script, which the builder loads to see whether the init is
    # current (an installed wheel has none).
    if (NATIVE_INIT / "build.py").exists():
        compileall.compile_file(str(NATIVE_INIT / "build.py"), quiet=2)


def module_path() -> str:
    """Where this vmrun's modules and its dependencies are found: the directory that holds
    the `runner` package, then this interpreter's path (site's result)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(runner.__file__)))
    paths = [package_parent, *(path for path in sys.path if path)]
    return os.pathsep.join(dict.fromkeys(paths))
