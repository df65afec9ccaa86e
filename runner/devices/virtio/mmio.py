"""The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): one 4 KiB register window and
one interrupt per device.

The transport is the control plane, run on the vCPU's MMIO exit: feature negotiation, queue
registers, status and reset. Each queue's notifications arrive on an eventfd that KVM
signals itself (an ioeventfd on QueueNotify, with the queue's index as datamatch), so the
data path never passes here: the device's native worker waits on that eventfd, uses the
queue engine (runner/virtio/queue.py, native/virtio/virtqueue.c) and raises the interrupt
through the device's InterruptLine. InterruptStatus is one 32-bit word shared with the
workers, read and acknowledged with atomic operations; the vCPU threads answer those two
registers in C (`fast_register`, runner/vmm.py), so only the control registers come here.

A queue the guest set up wrongly (rings outside RAM, a size that is no power of 2), or that
a worker found broken, makes the device report DEVICE_NEEDS_RESET in its status, with a
configuration-change interrupt; the guest may reset it. vmrun goes on either way.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Sequence
from typing import Protocol

import attrs

from runner.devices.virtio.interrupt import InterruptLine
from runner.kvm.memory import GuestMemory
from runner.kvm.native import Cdata, ffi, lib
from runner.kvm.vm import Vm
from runner.virtio.queue import Feature, QueueBroken, Virtqueue

MAGIC = 0x74726976  # "virt"
VERSION = 2
VENDOR_ID = 0x4E524D56  # "VMRN"
# What the transport (and the engine) gives every device.
TRANSPORT_FEATURES = 1 << Feature.VERSION_1 | 1 << Feature.INDIRECT_DESC | 1 << Feature.EVENT_IDX


class Reg(enum.IntEnum):
    """Register offsets (virtio 1.2, table 4.1)."""

    MAGIC_VALUE = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    CONFIG_GENERATION = 0x0FC
    CONFIG = 0x100


class Status(enum.IntFlag):
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


class VirtioBackend(Protocol):
    """A device behind the transport: what it is, its queues, and its workers."""

    device_id: int
    features: int  # device-specific feature bits; the transport adds its own
    queue_sizes: tuple[int, ...]  # QueueNumMax of each queue

    def config(self) -> bytes: ...

    # Changes whenever config() does (virtio 1.2, 4.2.2: ConfigGeneration); the pair must be
    # replaced as one, so that a driver reading the same generation around its reads of the
    # configuration saw one state of it.
    def config_generation(self) -> int: ...

    def activate(
        self, queues: Sequence[Virtqueue], notify_fds: Sequence[int], irq_fd: int, status: Cdata
    ) -> None: ...

    def reset(self) -> None: ...


# Optional, on a backend that has them:
#   write_config(offset, data): the driver wrote `data` at `offset` of the configuration space
#     (a device whose every field is read-only has none: such writes are ignored). The driver's
#     own write is not a change the device made, so ConfigGeneration stays as it is.
#   queues_needed(features) -> int: how many queues, from index 0, the device uses with the
#     negotiated features (a queue of a feature not negotiated gets no index: Linux's
#     virtio_mmio numbers only the queues a driver asks for). Without it: every queue.


@attrs.define
class _QueueRegs:
    size: int
    ready: bool = False
    desc: int = 0
    driver: int = 0
    device: int = 0


def _set_half(value: int, half: int, high: bool) -> int:
    return (value & 0xFFFFFFFF) | half << 32 if high else (value & ~0xFFFFFFFF) | half


class MmioTransport:
    """`backend` at guest physical `base`, interrupting through `line`."""

    def __init__(
        self, backend: VirtioBackend, memory: GuestMemory, vm: Vm, base: int, line: InterruptLine
    ) -> None:
        self._backend = backend
        self._memory = memory
        self._line = line
        self._base = base
        self._lock = threading.Lock()  # vCPUs exit here concurrently
        self._interrupt_status = ffi.new("uint32_t *")
        self._notify_fds: list[int] = []
        for index in range(len(backend.queue_sizes)):
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._notify_fds.append(fd)
            vm.ioeventfd(fd, base + Reg.QUEUE_NOTIFY, 4, pio=False, datamatch=index)
        self._device_features = TRANSPORT_FEATURES | backend.features
        self._reset_registers()

    @property
    def fast_register(self) -> tuple[int, Cdata]:
        """InterruptStatus's guest address and the shared word behind it: the vCPU threads
        answer it, and InterruptACK after it, in C (runner/vmm.py)."""
        return self._base + Reg.INTERRUPT_STATUS, self._interrupt_status

    @property
    def backend(self) -> VirtioBackend:
        return self._backend

    @property
    def status(self) -> int:
        """The device status the driver wrote (and DEVICE_NEEDS_RESET when it is broken)."""
        with self._lock:
            return self._read_register(Reg.STATUS)

    def _reset_registers(self) -> None:
        self._status = 0
        self._device_features_sel = 0
        self._driver_features = 0
        self._driver_features_sel = 0
        self._queue_sel = 0
        self._queues = [_QueueRegs(size) for size in self._backend.queue_sizes]
        self._active: list[Virtqueue] = []
        self._needs_reset = False
        lib.vmrun_virtio_interrupt_ack(self._interrupt_status, 0xFFFFFFFF)

    # ---- the bus --------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset >= Reg.CONFIG:
            config = self._backend.config()[offset - Reg.CONFIG : offset - Reg.CONFIG + size]
            return int.from_bytes(config, "little")
        if size != 4 or offset % 4:
            return 0  # the driver must use aligned 32-bit accesses (4.2.2.2)
        with self._lock:
            return self._read_register(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= Reg.CONFIG:
            write_config = getattr(self._backend, "write_config", None)
            if write_config is not None and size in (1, 2, 4, 8):
                write_config(
                    offset - Reg.CONFIG, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
                )
            return
        if size != 4 or offset % 4:
            return  # the driver must use aligned 32-bit accesses (4.2.2.2)
        with self._lock:
            self._write_register(offset, value)

    def _selected(self) -> _QueueRegs | None:
        return self._queues[self._queue_sel] if self._queue_sel < len(self._queues) else None

    def _read_register(self, offset: int) -> int:
        queue = self._selected()
        match offset:
            case Reg.MAGIC_VALUE:
                return MAGIC
            case Reg.VERSION:
                return VERSION
            case Reg.DEVICE_ID:
                return self._backend.device_id
            case Reg.VENDOR_ID:
                return VENDOR_ID
            case Reg.DEVICE_FEATURES:
                sel = self._device_features_sel
                return (self._device_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
            case Reg.QUEUE_NUM_MAX:
                return self._backend.queue_sizes[self._queue_sel] if queue else 0
            case Reg.QUEUE_READY:
                return int(queue.ready) if queue else 0
            case Reg.INTERRUPT_STATUS:
                return lib.vmrun_virtio_interrupt_status(self._interrupt_status)
            case Reg.STATUS:
                return self._status | (Status.DEVICE_NEEDS_RESET if self._broken() else 0)
            case Reg.CONFIG_GENERATION:
                return self._backend.config_generation() & 0xFFFFFFFF
        return 0

    def _write_register(self, offset: int, value: int) -> None:
        queue = self._selected()
        settable = queue is not None and not queue.ready  # a live queue's rings stay put
        match offset:
            case Reg.DEVICE_FEATURES_SEL:
                self._device_features_sel = value
            case Reg.DRIVER_FEATURES:
                if self._driver_features_sel < 2 and not self._status & Status.FEATURES_OK:
                    shift = 32 * self._driver_features_sel
                    kept = self._driver_features & ~(0xFFFFFFFF << shift)
                    self._driver_features = kept | value << shift
            case Reg.DRIVER_FEATURES_SEL:
                self._driver_features_sel = value
            case Reg.QUEUE_SEL:
                self._queue_sel = value
            case Reg.QUEUE_NUM if settable:
                queue.size = min(value, self._backend.queue_sizes[self._queue_sel])
            case Reg.QUEUE_READY if queue is not None:
                self._queue_ready(queue, value == 1)
            case Reg.QUEUE_NOTIFY:
                # Only without an ioeventfd for it (KVM answers those itself).
                if value < len(self._notify_fds):
                    os.eventfd_write(self._notify_fds[value], 1)
            case Reg.INTERRUPT_ACK:
                lib.vmrun_virtio_interrupt_ack(self._interrupt_status, value)
            case Reg.STATUS:
                self._write_status(value)
            case Reg.QUEUE_DESC_LOW | Reg.QUEUE_DESC_HIGH if settable:
                queue.desc = _set_half(queue.desc, value, offset == Reg.QUEUE_DESC_HIGH)
            case Reg.QUEUE_DRIVER_LOW | Reg.QUEUE_DRIVER_HIGH if settable:
                queue.driver = _set_half(queue.driver, value, offset == Reg.QUEUE_DRIVER_HIGH)
            case Reg.QUEUE_DEVICE_LOW | Reg.QUEUE_DEVICE_HIGH if settable:
                queue.device = _set_half(queue.device, value, offset == Reg.QUEUE_DEVICE_HIGH)

    def _queue_ready(self, queue: _QueueRegs, ready: bool) -> None:
        if ready and self._status & Status.DRIVER_OK and not queue.ready:
            # Queues are enabled before DRIVER_OK (3.1.1); one enabled later would need its
            # worker restarted: the device asks to be reset instead.
            self._fail("a queue was enabled after DRIVER_OK")
            return
        queue.ready = ready

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        new = value & ~self._status
        if new & Status.FEATURES_OK and not self._features_acceptable():
            value &= ~Status.FEATURES_OK  # the driver reads it back and gives up (3.1.1)
        self._status = value & 0xFF & ~Status.DEVICE_NEEDS_RESET
        if new & Status.DRIVER_OK and self._status & Status.FEATURES_OK:
            self._activate()

    def _features_acceptable(self) -> bool:
        wanted = self._driver_features
        return wanted & ~self._device_features == 0 and bool(wanted >> Feature.VERSION_1 & 1)

    def _queues_needed(self) -> int:
        needed = getattr(self._backend, "queues_needed", None)
        count = len(self._queues) if needed is None else needed(self._driver_features)
        return min(count, len(self._queues))

    def _activate(self) -> None:
        needed = self._queues[: self._queues_needed()]
        queues = []
        for regs in needed:
            if not regs.ready:
                continue
            rings = (regs.desc, regs.driver, regs.device)
            try:
                queues.append(Virtqueue(self._memory, regs.size, *rings, self._driver_features))
            except QueueBroken as exc:
                self._fail(str(exc))
                return
        if len(queues) != len(needed):
            self._fail("DRIVER_OK with a queue not enabled")
            return
        self._active = queues
        notify_fds = self._notify_fds[: len(queues)]
        self._backend.activate(queues, notify_fds, self._line.fd, self._interrupt_status)

    def _broken(self) -> bool:
        return self._needs_reset or any(queue.broken for queue in self._active)

    def _fail(self, _why: str) -> None:
        self._needs_reset = True
        lib.vmrun_virtio_interrupt_raise(
            self._interrupt_status, lib.VMRUN_VIRTIO_INT_CONFIG, self._line.fd
        )

    def _reset(self) -> None:
        self._backend.reset()  # the workers are gone before their queues are
        self._reset_registers()

    def close(self) -> None:
        """Stop the device's workers and let go of the eventfds: before guest memory goes."""
        with self._lock:
            self._backend.reset()
            self._active = []
        for fd in self._notify_fds:
            os.close(fd)
        self._notify_fds = []
        self._line.close()
