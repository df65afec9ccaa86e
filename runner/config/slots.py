"""Which virtio devices a VM has, in slot order, each with its own config; and the one table
of device kinds: what each is in the user's words and whether this build runs it.

The one place that orders devices: the kernel command line (`virtio_mmio.device=` entries),
the ACPI tables, the interrupt-budget check, the refusals (runner/unsupported.py) and the
builder (which dispatches on `slot.kind.name`) all read `virtio_slots`. It lives with the
configuration, not with the devices: `vmrun validate` imports no device code.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import attrs

from runner.arch.x86_64 import layout
from runner.config.model import VmResources

Path = tuple[str | int, ...]  # where in the file, as Problem takes it


class State(enum.Enum):
    BUILT = "built"
    NOT_BUILT_YET = "not built yet"
    UNSUPPORTED = "not supported by this vmrun build"


@attrs.frozen
class DeviceKind:
    """A kind of virtio device: `name` (the builder's key), `what` (the user's words), its
    `state` here and, when it is not built, the refusal: `message` at `refusal_path`, or at
    each device's own place when `per_device`."""

    name: str
    what: str
    state: State
    devices: Callable[[VmResources], Sequence[tuple[object, Path]]]  # (config, where) each
    refusal_path: Path = ()
    message: str = ""
    per_device: bool = False


def _listed(section: str) -> Callable[[VmResources], Sequence[tuple[object, Path]]]:
    def devices(r: VmResources) -> Sequence[tuple[object, Path]]:
        return [(item, (section, index)) for index, item in enumerate(getattr(r, section))]

    return devices


def _consoles(r: VmResources) -> Sequence[tuple[object, Path]]:
    implicit = [] if r.disable_implicit_console else [(None, ("disable_implicit_console",))]
    return implicit + list(_listed("virtio_consoles")(r))


def _one(section: str) -> Callable[[VmResources], Sequence[tuple[object, Path]]]:
    def devices(r: VmResources) -> Sequence[tuple[object, Path]]:
        value = getattr(r, section)
        return [(value, (section,))] if value else []

    return devices


# In slot order (the console first, as libkrun attaches it; the implicit rng and balloon
# after it: the rng first, so that without a console it is the DSDT's first window).
DEVICE_KINDS = (
    DeviceKind("console", "virtio console", State.BUILT, _consoles),
    # Implicit, as in libkrun: every guest gets an entropy source it can trust.
    DeviceKind("rng", "virtio-rng", State.BUILT, lambda r: [(None, ())]),
    # Implicit, as in libkrun: the guest reports its free pages, which the host takes back.
    DeviceKind("balloon", "virtio-balloon", State.BUILT, lambda r: [(None, ())]),
    DeviceKind(
        "fs", "virtio-fs", State.NOT_BUILT_YET, _listed("fs"), ("fs",),
        "virtio-fs is not built yet",
    ),
    DeviceKind("block", "virtio-blk", State.BUILT, _listed("block")),
    DeviceKind(
        "net", "virtio-net", State.NOT_BUILT_YET, _listed("net"), ("net",),
        "virtio-net is not built yet",
    ),
    DeviceKind(
        "vsock", "virtio-vsock", State.NOT_BUILT_YET, _one("vsock"), ("vsock",),
        "virtio-vsock is not built yet",
    ),
    DeviceKind(
        "gpu", "virtio-gpu", State.UNSUPPORTED, _one("gpu"), ("gpu",),
        "virtio-gpu is not supported by this vmrun build (no virglrenderer)",
    ),
    DeviceKind(
        "snd", "virtio-snd", State.UNSUPPORTED, _one("snd_device"), ("snd_device",),
        "virtio-snd is not supported by this vmrun build",
    ),
    DeviceKind(
        "input", "virtio-input", State.UNSUPPORTED, _listed("input_backends"), (),
        "virtio-input is not supported by this vmrun build", per_device=True,
    ),
)  # fmt: skip
KINDS = {kind.name: kind for kind in DEVICE_KINDS}


@attrs.frozen
class VirtioSlot:
    kind: DeviceKind
    config: object  # the device's part of the file (None for an implicit device)
    where: Path  # where the file declares it (() for an implicit device)
    index: int  # the n-th device of its kind
    slot: int  # position on the MMIO bus

    @property
    def mmio_base(self) -> int:
        return layout.VIRTIO_MMIO_START + self.slot * layout.VIRTIO_MMIO_SIZE

    @property
    def irq(self) -> int:
        irqs = layout.VIRTIO_IRQS
        # Past the budget (a file the interrupt-budget check refuses), numbers go on, so
        # that the command line can still be composed and measured.
        return irqs[self.slot] if self.slot < len(irqs) else irqs[-1] + 1 + self.slot - len(irqs)

    @property
    def cmdline_entry(self) -> str:
        size_kib = layout.VIRTIO_MMIO_SIZE // layout.KIB
        return f"virtio_mmio.device={size_kib}K@{self.mmio_base:#x}:{self.irq}"


def virtio_slots(resources: VmResources) -> list[VirtioSlot]:
    """Every virtio device of `resources`, in the order the guest enumerates them."""
    slots: list[VirtioSlot] = []
    for kind in DEVICE_KINDS:
        for index, (config, where) in enumerate(kind.devices(resources)):
            slots.append(VirtioSlot(kind, config, where, index, len(slots)))
    return slots
