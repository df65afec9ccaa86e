"""A virtio device's interrupt line: an eventfd that native workers write, and whoever turns
that into an interrupt of the guest.

- With KVM's in-kernel irqchip, the eventfd is an irqfd on the device's GSI: a write is an
  edge on that I/O APIC pin, and no vmrun thread is involved.
- With a split irqchip, the I/O APIC is vmrun's own (runner/devices/ioapic.py) and KVM's GSI
  routing belongs to it, so no irqfd is added beside it: the main thread's event loop
  (Machine.watch) reads the eventfd and raises the edge on the user-space I/O APIC.

Either way the device side is the same: write 1 to `fd` (vmrun_virtio_interrupt_raise).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from runner.kvm.vm import Vm


class InterruptLine:
    """An eventfd turned into edges on a GSI; `close` undoes it (the VM's fd closing also
    drops an irqfd)."""

    def __init__(self, fd: int, stop: Callable[[], None]) -> None:
        self.fd = fd
        self._stop = stop

    @classmethod
    def irqfd(cls, vm: Vm, gsi: int) -> InterruptLine:
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            vm.irqfd(fd, gsi)
        except BaseException:
            os.close(fd)
            raise

        def stop() -> None:
            os.close(fd)

        return cls(fd, stop)

    @classmethod
    def relayed(
        cls, watch: Callable[[int, Callable[[], None]], None], raise_edge: Callable[[], None]
    ) -> InterruptLine:
        """Edges raised by `raise_edge`, one per wake-up of the eventfd, from the main thread's
        event loop (`watch` is Machine.watch)."""
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

        def relay() -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return
            raise_edge()

        watch(fd, relay)

        def stop() -> None:
            os.close(fd)

        return cls(fd, stop)

    def close(self) -> None:
        stop, self._stop = self._stop, lambda: None
        stop()
