"""Where things are in the guest's physical address space and interrupt lines (x86_64).

Every magic address and interrupt number of the machine lives here, each with why.
"""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

# The kernel is loaded at 1 MiB (HIMEM_START), above the real-mode area and the BIOS
# hole, where the boot protocol expects a relocatable kernel when it does not say otherwise.
KERNEL_START = 1 * MIB

# virtio-mmio devices sit in the 32-bit MMIO gap below 4 GiB (768 MiB wide, as Firecracker
# and libkrun lay it out), one 4 KiB register window each.
MMIO_GAP_START = 4 * GIB - 768 * MIB  # 0xd000_0000
MMIO_GAP_SIZE = 768 * MIB
VIRTIO_MMIO_START = MMIO_GAP_START
VIRTIO_MMIO_SIZE = 4 * KIB

# IOAPIC pins for virtio-mmio devices: 0-4 are taken by the legacy devices (PIT 0, i8042 1,
# cascade 2, COM2/4 3, COM1/3 4); pins 5..23 of the 24-pin IOAPIC are free, one per device.
VIRTIO_IRQ_FIRST = 5
VIRTIO_IRQ_LAST = 23
VIRTIO_IRQ_COUNT = VIRTIO_IRQ_LAST - VIRTIO_IRQ_FIRST + 1

# Linux x86's COMMAND_LINE_SIZE: longer command lines are cut by the kernel.
CMDLINE_MAX_BYTES = 2048

# What Linux needs beyond its own image and the initramfs to reach init and run a small
# workload (page tables, slab, the unpacked initramfs): below this, boots fail with OOM.
GUEST_WORKING_SET = 48 * MIB
