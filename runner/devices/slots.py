"""Which virtio-mmio devices a VM has, in slot order, with their register window and IRQ.

The one place that orders devices: the kernel command line (`virtio_mmio.device=` entries),
the interrupt-budget check and the builder all read this list.
"""

from __future__ import annotations

import attrs

from runner.arch.x86_64 import layout
from runner.config.model import VmResources


@attrs.frozen
class VirtioSlot:
    kind: str  # console, rng, fs, block, net, vsock, gpu, snd, input
    index: int  # the n-th device of its kind
    slot: int  # position on the MMIO bus

    @property
    def mmio_base(self) -> int:
        return layout.VIRTIO_MMIO_START + self.slot * layout.VIRTIO_MMIO_SIZE

    @property
    def irq(self) -> int:
        return layout.VIRTIO_IRQ_FIRST + self.slot

    @property
    def cmdline_entry(self) -> str:
        size_kib = layout.VIRTIO_MMIO_SIZE // layout.KIB
        return f"virtio_mmio.device={size_kib}K@{self.mmio_base:#x}:{self.irq}"


def virtio_slots(resources: VmResources) -> list[VirtioSlot]:
    """Every virtio device of `resources`, in the order the guest enumerates them."""
    counts = [
        (
            "console",
            (0 if resources.disable_implicit_console else 1) + len(resources.virtio_consoles),
        ),
        # Implicit, as in libkrun: every guest gets an entropy source it can trust.
        ("rng", 1),
        ("fs", len(resources.fs)),
        ("block", len(resources.block)),
        ("net", len(resources.net)),
        ("vsock", 1 if resources.vsock else 0),
        ("gpu", 1 if resources.gpu else 0),
        ("snd", 1 if resources.snd_device else 0),
        ("input", len(resources.input_backends)),
    ]
    slots: list[VirtioSlot] = []
    for kind, count in counts:
        for index in range(count):
            slots.append(VirtioSlot(kind, index, len(slots)))
    return slots
