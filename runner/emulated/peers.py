"""Peers that run beside vmrun in the same emulated host, for tests and benchmarks.

A vmrun figure is only ever compared with a peer's measured in the same run on the same
host: inside the emulated host everything is slowed by emulation, but alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from runner.boot.cmdline import compose
from runner.boot.initramfs import Entry, compressed, cpio
from runner.cache import cache_dir
from runner.config.model import VmResources
from runner.devices.virtio import console_plan
from runner.guest import debian
from runner.guest.initramfs import guest_initramfs
from runner.guest.kernel import default_kernel

# Under TCG, a microVM guest can hang calibrating its TSC against the PIT; telling it the
# frequency skips the calibration (see shared/notes/nested-kvm-host.md).
QEMU_MICROVM_MACHINE = "microvm,x-option-roms=off,rtc=off,isa-serial=on,pic=off,pit=on"


def busybox_initramfs(init_script: str) -> Path:
    """A gzip initramfs of busybox-static with `init_script` as /init (cached by content)."""
    deb = debian.fetch("busybox-static")
    key = hashlib.sha256(deb.name.encode() + b"\0" + init_script.encode()).hexdigest()[:16]
    target = cache_dir("peers") / f"busybox-{key}.cpio.gz"
    if not target.exists():
        busybox = (debian.unpack(deb) / "bin" / "busybox").read_bytes()
        entries = [
            Entry.directory("bin"),
            Entry.file("bin/busybox", busybox, 0o755),
            Entry.symlink("bin/sh", "busybox"),
            Entry.file("init", init_script.encode(), 0o755),
        ]
        partial = target.with_suffix(".part")
        partial.write_bytes(compressed(cpio(entries)))
        partial.replace(target)
    return target


def tsc_khz() -> int | None:
    """This host's TSC frequency in kHz, as the kernel reports it (None if it does not)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def qemu_microvm_command(
    kernel: Path, initramfs: Path, cpus: int, mem_mib: int, cmdline: str, extra: Sequence[str] = ()
) -> list[str]:
    """QEMU microvm on /dev/kvm with the serial console on stdout, as vmrun's peer."""
    khz = tsc_khz()
    append = cmdline + (f" tsc_early_khz={khz}" if khz else "")
    return [
        "qemu-system-x86_64",
        "-M", QEMU_MICROVM_MACHINE,
        "-accel", "kvm",
        "-cpu", "host",
        "-smp", str(cpus),
        "-m", str(mem_mib),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-serial", "stdio",
        "-kernel", str(kernel),
        "-initrd", str(initramfs),
        "-append", append,
        *extra,
    ]  # fmt: skip


class PeerMismatch(Exception):
    """vmrun's console is no longer laid out as its QEMU peer's."""


# vmrun's implicit console when none of its stdio is a terminal: port 0 the console (hvc0),
# then a port for each of stdin, stdout, stderr (runner/devices/virtio/console_plan.py).
IMPLICIT_PORTS = (0, "krun-stdin"), (1, "krun-stdout"), (2, "krun-stderr")


def qemu_implicit_console(*, hvc0: str, stdout: str, stderr: str) -> list[str]:
    """QEMU arguments for a virtio console laid out as vmrun's implicit one when none of its
    stdio is a terminal: a virtio-serial-device (virtio-mmio, which microvm puts in its DSDT)
    with a virtconsole and the three named ports. Each argument is the path that port's
    output goes to (QEMU opens it: /proc/self/fd/N for an fd it inherits, as the emulated
    host has no /dev/fd); the stdin port reads nothing, as vmrun's from /dev/null."""
    outputs = {"krun-stdout": stdout, "krun-stderr": stderr}
    args = ["-device", f"virtio-serial-device,max_ports={len(IMPLICIT_PORTS) + 1}",
            "-chardev", f"file,id=hvc0,path={hvc0}",
            "-device", "virtconsole,chardev=hvc0"]  # fmt: skip
    for _fd, name in IMPLICIT_PORTS:
        path = outputs.get(name)
        chardev = f"file,id={name},path={path}" if path else f"null,id={name}"
        args += ["-chardev", chardev, "-device", f"virtserialport,chardev={name},name={name}"]
    return args


def implicit_console_stdio(resources: VmResources) -> console_plan.InitStdio:
    """What vmrun's init is told about the workload's stdio when none of vmrun's is a
    terminal; raises PeerMismatch unless that is the console of qemu_implicit_console."""
    plans = console_plan.console_plans(resources, frozenset())
    stdio = console_plan.init_stdio(resources, plans)
    named = len(IMPLICIT_PORTS)
    if stdio != console_plan.InitStdio("/dev/hvc0", IMPLICIT_PORTS, (named + 1, named)):
        raise PeerMismatch(f"vmrun's implicit console is not its QEMU peer's: {stdio}")
    return stdio


def implicit_console_initramfs(resources: VmResources, argv: Sequence[str]) -> bytes:
    """The initramfs vmrun builds for `resources` running `argv` when none of its stdio is a
    terminal, byte for byte: for QEMU with qemu_implicit_console."""
    stdio = implicit_console_stdio(resources)
    return guest_initramfs(
        resources,
        argv,
        console=stdio.console,
        stdio_ports=stdio.stdio_ports,
        virtio_ports=stdio.virtio_ports,
    )


def qemu_vmrun_peer(resources: VmResources, initramfs: Path, console: Sequence[str]) -> list[str]:
    """QEMU microvm booting what vmrun boots for `resources`: the default kernel with
    `initramfs`, vmrun's command line, vCPUs and memory (memfd-backed, as vmrun's guest RAM),
    and isa-debug-exit where the init reports its status (port 0xf4: QEMU exits with
    (status << 1) | 1); `console` adds the console's arguments."""
    mem = resources.machine.mem_size_mib
    extra = ["-object", f"memory-backend-memfd,id=ram,size={mem}M",
             "-machine", "memory-backend=ram",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
             *console]  # fmt: skip
    return qemu_microvm_command(
        default_kernel().image,
        initramfs,
        resources.machine.vcpu_count,
        mem,
        compose(resources),
        extra=extra,
    )
