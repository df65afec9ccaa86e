"""virtio-rng (virtio 1.2, 5.4): the guest's /dev/hwrng, filled from the host's getrandom().

Present in every VM, as in libkrun. One queue of device-writable buffers; no features, no
configuration. The data path is the native worker in native/virtio/rng.c.
"""

from __future__ import annotations

from collections.abc import Sequence

from runner.kvm.native import Cdata, ffi, lib
from runner.virtio.queue import Virtqueue

DEVICE_ID = 4
QUEUE_SIZE = 256


class VirtioRng:
    device_id = DEVICE_ID
    features = 0
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self) -> None:
        self._worker: Cdata | None = None

    def config(self) -> bytes:
        return b""

    def config_generation(self) -> int:
        return 0  # no configuration, never changed

    def activate(
        self, queues: Sequence[Virtqueue], notify_fds: Sequence[int], irq_fd: int, status: Cdata
    ) -> None:
        self.reset()
        worker = lib.vmrun_rng_start(queues[0].native, notify_fds[0], irq_fd, status)
        if worker == ffi.NULL:
            raise OSError(ffi.errno, "cannot start the virtio-rng worker")
        self._worker = worker

    def reset(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            lib.vmrun_rng_stop(worker)

    def served(self) -> int:
        """Requests answered so far."""
        return lib.vmrun_rng_served(self._worker) if self._worker is not None else 0
