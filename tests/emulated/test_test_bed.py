"""Boot tests of the test bed itself: where boot tests run, /dev/kvm boots a real Linux.

Marked `boot`: on this machine (PVM) they run inside the emulated host, with the others.
"""

from __future__ import annotations

import subprocess

import pytest

from runner.emulated.peers import busybox_initramfs, qemu_microvm_command
from runner.guest.kernel import default_kernel
from runner.host_kvm import kvm_status

pytestmark = pytest.mark.boot

MARK = "VMRUN-PEER-GUEST-UP"


def test_kvm_is_usable_where_boot_tests_run() -> None:
    status = kvm_status()
    assert status.usable, status.reason


def test_qemu_microvm_boots_the_default_kernel_on_kvm() -> None:
    init = (
        "#!/bin/busybox sh\n"
        f"/bin/busybox echo {MARK} $(/bin/busybox nproc)\n"
        "/bin/busybox poweroff -f\n"
    )
    kernel = default_kernel()
    cmd = qemu_microvm_command(
        kernel.image, busybox_initramfs(init), cpus=2, mem_mib=256,
        cmdline="console=ttyS0 quiet panic=-1 reboot=t",
    )  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{MARK} 2" in result.stdout
