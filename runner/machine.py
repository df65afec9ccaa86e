"""A built VM: its memory, vCPUs, buses and devices, the one way anything ends it, and the
main thread's event loop for device fds.

- **Ending the VM**: any thread (a vCPU on the exit port or the i8042's reset, a device, a
  signal handler) calls `Machine.end` with an `Ending`; the first one wins, and the hooks
  registered with `when_ended` (the Vmm's kick of every vCPU) run at once.
- **Device fds**: `watch(fd, callback)` runs `callback` in the main thread whenever `fd` is
  readable, while `Vmm.run` waits (an epoll loop): for work that must not be a thread of its
  own, such as relaying a native worker's interrupt to the split irqchip's I/O APIC.
- **Teardown**: everything the build opened is on one exit stack, `resources`, entered in
  build order and closed in reverse: devices (and their workers) first, then the VM, then
  guest memory.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from contextlib import ExitStack

import attrs

from runner.devices.bus import IoBus, MmioBus
from runner.devices.ioapic import IoApic
from runner.devices.legacy import guest_ports, serial
from runner.devices.legacy.serial_output import SerialOutput
from runner.devices.virtio.mmio import MmioTransport
from runner.kvm.memory import GuestMemory
from runner.kvm.vcpu import Vcpu
from runner.kvm.vm import Vm

VMM_FAILURE = 125


@attrs.frozen
class Ending:
    """How the VM ended: vmrun's exit status and, when it is not the workload's, why."""

    status: int
    reason: str = ""
    stopped: bool = False  # by SIGINT or SIGTERM: what the console still buffers is dropped


# What ends a VM, and the status vmrun exits with (see docs/architecture.md).
REBOOT = Ending(VMM_FAILURE, "the guest rebooted (a kernel panic reboots, with panic=-1)")
POWER_OFF = Ending(VMM_FAILURE, "the guest powered off without reporting a status")
CRASH = Ending(VMM_FAILURE, "the guest crashed (KVM system event)")


@attrs.define
class Machine:
    """A built VM, ready to run: owns its fds through `resources` (closed by `close`)."""

    vm: Vm
    memory: GuestMemory
    vcpus: list[Vcpu]
    io_bus: IoBus
    debug: guest_ports.DebugPort
    serials: list[serial.Serial8250]
    resources: ExitStack
    mmio_bus: MmioBus = attrs.Factory(MmioBus)
    ioapic: IoApic | None = None  # the user-space I/O APIC of a split irqchip
    outputs: list[SerialOutput] = attrs.Factory(list)  # the consoles' output writers
    virtio: list[MmioTransport] = attrs.Factory(list)  # in slot order
    # Run by `close(drain=True)` before the teardown: devices writing out what the guest
    # queued (the virtio consoles).
    drains: list[Callable[[], None]] = attrs.Factory(list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _ending: Ending | None = attrs.field(default=None, init=False)
    _ended: threading.Event = attrs.field(factory=threading.Event, init=False)
    _end_hooks: list[Callable[[], None]] = attrs.field(factory=list, init=False)
    _watched: dict[int, Callable[[], None]] = attrs.field(factory=dict, init=False)
    # Written by `end`, so that the event loop wakes at once.
    _wake: int = attrs.field(init=False, default=-1)

    def __attrs_post_init__(self) -> None:
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.resources.callback(os.close, self._wake)

    # ---- ending ---------------------------------------------------------------------------

    def end(self, ending: Ending) -> None:
        """From any thread: the VM ends with `ending`, unless something ended it first."""
        with self._lock:
            if self._ending is None:
                self._ending = ending
            hooks = list(self._end_hooks)
        self._ended.set()
        with contextlib.suppress(OSError):  # closed: torn down, nobody waits
            os.eventfd_write(self._wake, 1)
        for hook in hooks:
            hook()

    def when_ended(self, hook: Callable[[], None]) -> None:
        """Run `hook` on every `end` from now on (and at once if the VM has ended)."""
        with self._lock:
            self._end_hooks.append(hook)
            ended = self._ending is not None
        if ended:
            hook()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def ending(self) -> Ending | None:
        with self._lock:
            return self._ending

    # ---- the main thread's event loop ---------------------------------------------------------

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Run `callback` in the main thread when `fd` is readable (it must make it not
        readable, e.g. by reading an eventfd), while the VM runs."""
        self._watched[fd] = callback

    def serve_until_ended(self) -> None:
        """The main thread's loop while the vCPUs run: the watched fds, until `end`."""
        with select.epoll() as poller:
            poller.register(self._wake, select.EPOLLIN)
            for fd in self._watched:
                poller.register(fd, select.EPOLLIN)
            while not self._ended.is_set():
                for fd, _events in poller.poll():
                    if fd != self._wake:
                        self._watched[fd]()

    # ---- teardown -----------------------------------------------------------------------------

    def close(self, drain: bool = True) -> None:
        """Tear down; with `drain`, after the consoles' buffered output is written."""
        if not drain:
            for output in self.outputs:
                output.abandon()
        else:
            for drain_device in self.drains:
                drain_device()
        for uart in self.serials:
            uart.flush()
        self.resources.close()
