"""virtio-balloon (virtio 1.2, 5.5): the guest gives memory it does not use back to the host.

Present in every VM, as in libkrun. vmrun never asks the guest to inflate (the target,
`num_pages`, stays 0 unless `set_target` says otherwise); what frees memory is free page
reporting (F_REPORTING): the guest's free 2 MiB blocks come on the reporting queue and the
worker punches them out of the memfd that backs guest RAM, so vmrun's resident memory falls
back after the guest frees what it used. F_DEFLATE_ON_OOM is offered so that a guest under
memory pressure takes pages back from a balloon before it kills anything. STATS_VQ and
FREE_PAGE_HINT are not offered.

The data path is the native worker in native/virtio/balloon.c; the configuration space
(le32 num_pages, le32 actual, which the driver writes) is kept here.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

from runner.kvm.native import Cdata, ffi, lib
from runner.virtio.queue import Virtqueue

DEVICE_ID = 5
QUEUE_SIZE = 128  # Linux needs 32 entries at least on the reporting queue
F_DEFLATE_ON_OOM = 2
F_REPORTING = 5
CONFIG = struct.Struct("<II")  # num_pages, actual
ACTUAL = slice(4, 8)  # the one field the driver writes


class VirtioBalloon:
    device_id = DEVICE_ID
    features = 1 << F_DEFLATE_ON_OOM | 1 << F_REPORTING
    # inflateq, deflateq, reporting queue (index 2: neither STATS_VQ nor FREE_PAGE_HINT).
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self) -> None:
        # Config writes come from vCPU threads, set_target from any: one lock for both, and
        # (generation, config) replaced as one pair.
        self._lock = threading.Lock()
        self._state = (0, CONFIG.pack(0, 0))
        self._worker: Cdata | None = None
        self._line: tuple[Cdata, int] | None = None  # (InterruptStatus, irq fd) while active

    # ---- the configuration space ----------------------------------------------------------

    def config(self) -> bytes:
        return self._state[1]

    def config_generation(self) -> int:
        return self._state[0]

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver's write: only the bytes of `actual` take it; num_pages is the host's."""
        with self._lock:
            generation, config = self._state
            updated = bytearray(config)
            for index, byte in enumerate(data, start=offset):
                if ACTUAL.start <= index < ACTUAL.stop:
                    updated[index] = byte
            self._state = (generation, bytes(updated))

    @property
    def num_pages(self) -> int:
        """The host's target: 4 KiB pages the guest is asked to hold in its balloon."""
        return CONFIG.unpack(self._state[1])[0]

    @property
    def actual(self) -> int:
        """Pages the driver says its balloon holds."""
        return CONFIG.unpack(self._state[1])[1]

    def set_target(self, pages: int) -> None:
        """Ask the guest to hold `pages` 4 KiB pages in its balloon (a configuration change,
        with its interrupt when the device is active)."""
        if not 0 <= pages <= 0xFFFFFFFF:
            raise ValueError(f"balloon target {pages} is not a u32")
        with self._lock:
            generation, config = self._state
            self._state = (generation + 1, CONFIG.pack(pages, CONFIG.unpack(config)[1]))
            if self._line is not None:
                status, irq_fd = self._line
                lib.vmrun_virtio_interrupt_raise(status, lib.VMRUN_VIRTIO_INT_CONFIG, irq_fd)

    # ---- the transport's side ---------------------------------------------------------------

    def queues_needed(self, features: int) -> int:
        return 3 if features >> F_REPORTING & 1 else 2

    def activate(
        self, queues: Sequence[Virtqueue], notify_fds: Sequence[int], irq_fd: int, status: Cdata
    ) -> None:
        self.reset()
        natives = ffi.new("struct vmrun_virtq *[]", [queue.native for queue in queues])
        fds = ffi.new("int[]", list(notify_fds))
        worker = lib.vmrun_balloon_start(natives, fds, len(queues), irq_fd, status)
        if worker == ffi.NULL:
            raise OSError(ffi.errno, "cannot start the virtio-balloon worker")
        with self._lock:
            self._worker = worker
            self._line = (status, irq_fd)

    def reset(self) -> None:
        with self._lock:
            worker, self._worker, self._line = self._worker, None, None
        if worker is not None:
            lib.vmrun_balloon_stop(worker)

    # ---- for tests --------------------------------------------------------------------------

    def pages_freed(self) -> int:
        """4 KiB pages given back to the host since the last activation."""
        with self._lock:
            return lib.vmrun_balloon_pages_freed(self._worker) if self._worker else 0

    def chains(self) -> int:
        """Chains returned to the driver since the last activation."""
        with self._lock:
            return lib.vmrun_balloon_chains(self._worker) if self._worker else 0
