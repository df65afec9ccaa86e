"""Peers that run beside vmrun in the same emulated host, for tests and benchmarks.

A vmrun figure is only ever compared with a peer's measured in the same run on the same
host: inside the emulated host everything is slowed by emulation, but alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from runner.boot.initramfs import Entry, compressed, cpio
from runner.cache import cache_dir
from runner.guest import debian

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
