"""`vmrun run --host emulated`: the same `vmrun run` inside the emulated host, on its real KVM.

The VM's console streams through and its exit status comes back unchanged. What the VM
writes on the host (console files, sockets, writable disks and shares) must be writable
inside the emulated host, so those directories are shared read-write.
"""

from __future__ import annotations

import os
import sys

import runner
from runner import progress, timings
from runner.config.fields import PathUse
from runner.config.load import VmFile
from runner.config.paths import host_paths
from runner.emulated.host import Outcome, Settings, run_in_host
from runner.emulated.image import provision

# Memory of the emulated host beyond the guest's: its own kernel, vmrun and page tables.
HOST_OVERHEAD_MIB = 1536
MIN_HOST_MIB = 4096


def writable_dirs(vm: VmFile) -> tuple[str, ...]:
    """Host directories the VM writes to: where its output files and sockets go, and the
    directories of its writable disks and shares."""
    dirs: list[str] = []
    for key_path, use, value in host_paths(vm.resources):
        if use in (PathUse.PARENT, PathUse.STREAM_OUT):
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


def run_in_emulated_host(vm: VmFile, workload: list[str] | None, timeout_s: float) -> Outcome:
    # With --timings, the vmrun inside sends its phases to this one's timeline.
    show_timings = ["--timings"] if timings.TIMELINE.enabled else []
    # -S: the interpreter inside skips site's work (the venv's .pth files, the editable
    # install's finder: a second of emulated time) and gets this one's module path instead.
    argv = [sys.executable, "-S", "-m", "runner", "run", *show_timings, "--host", "kvm"]
    argv.append(os.path.abspath(vm.path))
    if workload is not None:
        argv += ["--", *workload]
    memory = max(MIN_HOST_MIB, vm.resources.machine.mem_size_mib + HOST_OVERHEAD_MIB)
    cpus = max(2, min(vm.resources.machine.vcpu_count, os.cpu_count() or 2))
    _compiled_modules()
    settings = Settings(
        cpus=cpus,
        memory_mib=memory,
        timeout_s=timeout_s,
        writable=writable_dirs(vm),
        env=(("PYTHONPATH", _module_path()), *_first_run()),
    )
    return run_in_host(provision(), argv, settings, sys.stdout.buffer, sys.stderr.buffer)


def _first_run() -> tuple[tuple[str, str], ...]:
    """On a first run, the vmrun inside announces its phases too."""
    return ((progress.FIRST_RUN_ENV, "1"),) if progress.first_run() else ()


def _compiled_modules() -> None:
    """Compile vmrun's modules here, where the checkout is writable: inside, the host's files
    are read-only, and every module without a current .pyc would be compiled again at each
    run, at emulated speed. Up-to-date modules cost a stat each; failures change nothing."""
    import compileall

    package = os.path.dirname(os.path.abspath(runner.__file__))
    compileall.compile_dir(package, quiet=2)


def _module_path() -> str:
    """Where this vmrun's modules and its dependencies are found: the directory that holds
    the `runner` package, then this interpreter's path (site's result)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(runner.__file__)))
    paths = [package_parent, *(path for path in sys.path if path)]
    return os.pathsep.join(dict.fromkeys(paths))
