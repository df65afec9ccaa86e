"""Can this host's /dev/kvm boot a standard Linux guest?

Not every /dev/kvm can: PVM (the `kvm_pvm` module) gives one to machines without hardware
virtualization, and it runs only guests built for it. A usable KVM needs the device, and
either vmx or svm in the CPU flags with a KVM module that is not PVM.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from runner.errors import VmrunError


@attrs.frozen
class KvmStatus:
    usable: bool
    reason: str  # why not, or what was found


def kvm_status(root: str = "/") -> KvmStatus:
    """The answer for the host whose /proc, /sys and /dev are under `root` (tests pass a
    fake tree)."""
    base = Path(root)
    dev = base / "dev" / "kvm"
    if not dev.exists():
        return KvmStatus(False, "/dev/kvm does not exist")
    if (base / "sys" / "module" / "kvm_pvm").exists():
        return KvmStatus(
            False, "/dev/kvm is PVM (kvm_pvm), which cannot boot a standard Linux kernel"
        )
    flags = _cpu_flags(base / "proc" / "cpuinfo")
    if not flags & {"vmx", "svm"}:
        return KvmStatus(False, "the CPU has neither vmx nor svm (no hardware virtualization)")
    if root == "/" and not os.access(dev, os.R_OK | os.W_OK):
        return KvmStatus(False, "/dev/kvm is not readable and writable by this user")
    kind = "vmx" if "vmx" in flags else "svm"
    return KvmStatus(True, f"/dev/kvm with {kind}")


def _cpu_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


# Set by vmrun for what runs inside the emulated host, so that nested tools know where they are.
INSIDE_ENV = "VMRUN_IN_EMULATED_HOST"


def inside_emulated_host() -> bool:
    return bool(os.environ.get(INSIDE_ENV))


class HostChoiceError(VmrunError):
    """`--host kvm` on a host whose KVM cannot boot Linux."""


def choose_host(requested: str, status: KvmStatus) -> str:
    """`kvm` or `emulated` for `vmrun run --host auto|kvm|emulated`."""
    if requested == "kvm" and not status.usable:
        raise HostChoiceError(f"--host kvm: {status.reason}; use --host emulated (or auto)")
    if requested == "auto":
        return "kvm" if status.usable else "emulated"
    return requested
