"""A real libkrunfw bundle (libkrunfw.so.5 from the boxlite wheel: Linux 6.12) booted by vmrun.

Marked `boot`. libkrun's kernel is built for libkrun's devices only: it has no 8250 UART
driver (its console is hvc0, a virtio console), no initramfs support (CONFIG_BLK_DEV_INITRD
is off: its root is a virtio-fs share) and no ACPI (it finds its vCPUs in the MP table).
vmrun builds neither of those virtio devices yet, so the workload cannot run and nothing
reaches a console; the kernel's own log, read from guest memory after its panic (no root)
has ended the VM, says how far it got. Its virtio-rng (built in) is vmrun's implicit one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.builder import build
from runner.config.load import load
from runner.devices.virtio.mmio import Status
from runner.vmm import REBOOT, Vmm

pytestmark = pytest.mark.boot

VM = """\
disable_implicit_console = true
serial_consoles = [{{ output = "stdout" }}]

[machine]
vcpu_count = 2
mem_size_mib = 256

[kernel_bundle]
library = "{library}"
"""


def test_a_libkrunfw_kernel_boots_until_it_needs_its_root(tmp_path: Path, libkrunfw: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(VM.format(library=libkrunfw))
    vm = load(str(path))
    machine = build(vm.resources, ["/bin/true"])
    try:
        ending = Vmm(machine).run()
        ram = machine.memory.read(0, vm.resources.machine.mem_size_mib * 1024 * 1024)
        rng, _balloon = machine.virtio
        rng_status, rng_served = rng.status, rng.backend.served()
    finally:
        machine.close()
    assert ending == REBOOT  # panic=-1 reboots through the i8042: vmrun's status 125
    # Formatted messages, found only in the kernel's log buffer (its image holds just the
    # format strings): the command line vmrun put in the zero page reached it, it started
    # both vCPUs from the MP table, and it stopped where it needed a root device.
    assert b"Kernel command line: reboot=k panic=-1 " in ram
    assert b"found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]" in ram
    assert b"smp: Brought up 1 node, 2 CPUs" in ram
    assert b"Kernel panic - not syncing: VFS: Unable to mount root fs" in ram
    # The implicit virtio-rng, found once, from its `virtio_mmio.device=` entry (this kernel
    # has no ACPI), driven (DRIVER_OK) and read: the hwrng core takes early randomness
    # from a new device.
    found = b"virtio-mmio: Registering device virtio-mmio.0 at 0xd0000000-0xd0000fff, IRQ 5."
    assert ram.count(found) == 1
    # Then the implicit balloon's, once, and no other.
    balloon = b"virtio-mmio: Registering device virtio-mmio.1 at 0xd0001000-0xd0001fff, IRQ 6."
    assert ram.count(balloon) == 1
    assert b"Registering device virtio-mmio.2" not in ram
    assert rng_status & Status.DRIVER_OK and not rng_status & Status.DEVICE_NEEDS_RESET
    assert rng_served > 0
