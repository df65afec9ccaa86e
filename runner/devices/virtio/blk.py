"""virtio-blk (virtio 1.2, 5.2): a `[[block]]` disk as the guest's /dev/vdX.

One queue of 256; the data path is the native worker (native/virtio/blk.c: a dispatcher and
a pool of threads, the disk behind a table of operations, native/virtio/blk_disk.h). This
module opens the image, builds the configuration space and starts and stops the worker.

The image (`RawDisk`): opened O_RDWR, or O_RDONLY for a read-only disk, O_CLOEXEC, O_DIRECT
with `direct_io`, and O_NONBLOCK until fstat on the descriptor says it is a regular file or
a block device (a FIFO must not hold the open up). An OFD lock (F_OFD_SETLK: a write lock
for a writable disk, a read lock for a read-only one) keeps two VMs from writing one image:
any number of readers, or one writer. The lock goes with the descriptor, at `close`.

Cache and sync, decided here and carried out by the worker:
- `cache = "unsafe"`: a guest FLUSH completes OK and does nothing on the host (what the guest
  wrote reaches the disk when the host's page cache writes it back).
- `cache = "writeback"` (the default): a FLUSH does what `sync` says: `"none"` nothing,
  `"relaxed"` fdatasync (the data and the metadata needed to read it back), `"full"` fsync
  (all of the file's metadata too). The FLUSH is answered only once that returned, so data
  the guest flushed is on the host's disk (DESIGN invariant 4).
The FLUSH feature is offered either way (the guest keeps a write cache and sends flushes);
host syncs done are counted (`syncs`).

Features: SEG_MAX, SIZE_MAX, BLK_SIZE, FLUSH always; DISCARD and WRITE_ZEROES unless
read-only; RO when read-only. GET_ID answers the disk's `id` (its first 20 bytes of UTF-8,
NUL-padded): the guest's /sys/block/vdX/serial.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Sequence

from runner.config.devices import BlockDevice
from runner.devices.virtio.disk_export import DiskExport
from runner.errors import VmrunError
from runner.kvm.native import Cdata, ffi, lib
from runner.virtio.queue import Virtqueue

DEVICE_ID = lib.VMRUN_BLK_DEVICE_ID
QUEUE_SIZE = lib.VMRUN_BLK_QUEUE_SIZE
SECTOR = lib.VMRUN_BLK_SECTOR
ID_BYTES = lib.VMRUN_BLK_ID_BYTES

F_SIZE_MAX = 1 << lib.VMRUN_BLK_F_SIZE_MAX
F_SEG_MAX = 1 << lib.VMRUN_BLK_F_SEG_MAX
F_RO = 1 << lib.VMRUN_BLK_F_RO
F_BLK_SIZE = 1 << lib.VMRUN_BLK_F_BLK_SIZE
F_FLUSH = 1 << lib.VMRUN_BLK_F_FLUSH
F_DISCARD = 1 << lib.VMRUN_BLK_F_DISCARD
F_WRITE_ZEROES = 1 << lib.VMRUN_BLK_F_WRITE_ZEROES

# struct virtio_blk_config (5.2.4), 72 bytes: capacity, size_max, seg_max, geometry
# (cylinders, heads, sectors), blk_size, topology (physical_block_exp, alignment_offset,
# min_io_size, opt_io_size), writeback, unused0, num_queues, max_discard_sectors,
# max_discard_seg, discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
# write_zeroes_may_unmap, unused1[3], then the secure-erase fields (not offered: zeroes).
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3xIII")

# What a guest FLUSH does on the host, by (cache, sync).
FLUSH_MODES = {
    ("unsafe", "none"): lib.VMRUN_BLK_FLUSH_NOTHING,
    ("unsafe", "relaxed"): lib.VMRUN_BLK_FLUSH_NOTHING,
    ("unsafe", "full"): lib.VMRUN_BLK_FLUSH_NOTHING,
    ("writeback", "none"): lib.VMRUN_BLK_FLUSH_NOTHING,
    ("writeback", "relaxed"): lib.VMRUN_BLK_FLUSH_DATA,
    ("writeback", "full"): lib.VMRUN_BLK_FLUSH_ALL,
}

# struct flock on x86_64: l_type, l_whence, l_start, l_len, l_pid (0 for an OFD lock), padding.
FLOCK = struct.Struct("@hhqqi4x")


class DiskError(VmrunError):
    """A disk image that cannot be used; the message names the disk and its path."""


class DiskInUse(DiskError):
    """Another process holds a lock on the image that this disk's use conflicts with."""


def _name(disk: BlockDevice) -> str:
    return f"block disk {disk.id!r} ({disk.path})"


class _Disk:
    """What the worker needs of a disk of any kind: `native`, its sizes, its sync count."""

    native: Cdata | None
    read_only: bool

    @property
    def sectors(self) -> int:
        return lib.vmrun_blk_disk_sectors(self._live())

    @property
    def block_size(self) -> int:
        return lib.vmrun_blk_disk_block_size(self._live())

    @property
    def discard_alignment(self) -> int:
        return lib.vmrun_blk_disk_discard_alignment(self._live())

    @property
    def syncs(self) -> int:
        """Host syncs (fdatasync, fsync, an NBD flush) done for the guest's flushes."""
        return lib.vmrun_blk_disk_syncs(self._live())

    def _live(self) -> Cdata:
        if self.native is None:
            raise DiskError("the disk is closed")
        return self.native

    def _close_native(self) -> bool:
        native, self.native = self.native, None
        if native is not None:
            lib.vmrun_blk_disk_close(native)
        return native is not None


class RawDisk(_Disk):
    """The image of `disk`, opened, checked and locked; `native` is the worker's disk.
    Raises DiskError (or DiskInUse) with the disk's id and path."""

    def __init__(self, disk: BlockDevice) -> None:
        self.read_only = disk.read_only
        self.fd = _open_image(disk)
        try:
            _lock(self.fd, disk)
            flags = lib.VMRUN_BLK_DISK_DIRECT if disk.direct_io else 0
            native = lib.vmrun_blk_disk_open_file(self.fd, flags)
            if native == ffi.NULL:
                error = ffi.errno
                why = os.strerror(error)
                if disk.direct_io and error == errno.EINVAL:
                    why = "its file system cannot do direct I/O (direct_io = true)"
                raise DiskError(f"{_name(disk)}: {why}")
        except BaseException:
            os.close(self.fd)
            raise
        self.native = native

    def close(self) -> None:
        """Free the native disk and close the image (its lock goes with it). Idempotent; the
        worker must be stopped first."""
        if self._close_native():
            os.close(self.fd)


class Qcow2Disk(_Disk):
    """A qcow2 image of `disk`, served by a qemu-storage-daemon of its own over NBD
    (`disk_export.DiskExport`: it opens, checks and locks the image, and its qcow2 code
    writes it); the worker's threads each connect to it. `key` names the disk in messages."""

    def __init__(self, disk: BlockDevice, key: str) -> None:
        self.read_only = disk.read_only
        self._export = DiskExport(
            disk.path, disk=key, read_only=disk.read_only, direct_io=disk.direct_io
        )
        try:
            native = lib.vmrun_blk_disk_open_nbd(
                self._export.socket_path.encode(), self._export.export_name.encode()
            )
            if native == ffi.NULL:
                raise DiskError(f"{_name(disk)}: its NBD export: {os.strerror(ffi.errno)}")
        except BaseException:
            self._export.close()
            raise
        self.native = native

    def close(self) -> None:
        """Free the native disk, then stop the daemon (which writes the image's metadata out
        as it ends). Idempotent; the worker must be stopped first."""
        self._close_native()
        self._export.close()


def _open_image(disk: BlockDevice) -> int:
    flags = (os.O_RDONLY if disk.read_only else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK
    if disk.direct_io:
        flags |= os.O_DIRECT
    try:
        fd = os.open(disk.path, flags)
    except OSError as exc:
        if exc.errno == errno.EINVAL and disk.direct_io:
            why = "its file system cannot do direct I/O (direct_io = true)"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not disk.read_only:
            why = f"{exc.strerror} (opening it for writing; read_only = true opens it to read)"
        else:
            why = exc.strerror or str(exc)
        raise DiskError(f"{_name(disk)}: {why}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise DiskError(f"{_name(disk)}: not a regular file or a block device")
        # Opened non-blocking only so that a FIFO could not hold the open up.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock(fd: int, disk: BlockDevice) -> None:
    kind = fcntl.F_RDLCK if disk.read_only else fcntl.F_WRLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise DiskInUse(
                f"{_name(disk)}: disk image {disk.path} is in use by another process"
            ) from exc
        raise DiskError(f"{_name(disk)}: cannot lock the image: {exc.strerror}") from exc


class VirtioBlk:
    """The virtio-blk device of `disk` (`config`: its [[block]] entry); closes the image
    at `close`."""

    device_id = DEVICE_ID
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, config: BlockDevice, disk: RawDisk | Qcow2Disk) -> None:
        self._disk = disk
        self._read_only = config.read_only
        self._flush = FLUSH_MODES[config.cache, config.sync]
        self._id = config.id.encode()[:ID_BYTES]
        self._worker: Cdata | None = None
        features = F_SEG_MAX | F_SIZE_MAX | F_BLK_SIZE | F_FLUSH
        features |= F_RO if config.read_only else F_DISCARD | F_WRITE_ZEROES
        self.features = features
        self._config = CONFIG.pack(
            disk.sectors,
            lib.VMRUN_BLK_SIZE_MAX,
            lib.VMRUN_BLK_SEG_MAX,
            0, 0, 0,  # no geometry
            disk.block_size,
            0, 0, 0, 0,  # no topology
            0, 0,  # writeback (CONFIG_WCE not offered), unused0
            1,  # num_queues
            lib.VMRUN_BLK_MAX_DISCARD_SECTORS,
            lib.VMRUN_BLK_MAX_DISCARD_SEG,
            disk.discard_alignment,
            lib.VMRUN_BLK_MAX_WRITE_ZEROES_SECTORS,
            lib.VMRUN_BLK_MAX_WRITE_ZEROES_SEG,
            1,  # write_zeroes_may_unmap: a hole reads back as zeroes
            0, 0, 0,  # secure erase: not offered
        )  # fmt: skip

    def config(self) -> bytes:
        return self._config

    def config_generation(self) -> int:
        return 0  # never changes while the VM runs

    def activate(
        self, queues: Sequence[Virtqueue], notify_fds: Sequence[int], irq_fd: int, status: Cdata
    ) -> None:
        self.reset()
        native = self._disk.native
        if native is None:
            return  # the VM is over
        worker = lib.vmrun_blk_start(
            native, int(self._read_only), self._flush,
            ffi.new("uint8_t[]", self._id), len(self._id),
            queues[0].native, notify_fds[0], irq_fd, status,
        )  # fmt: skip
        if worker == ffi.NULL:
            raise OSError(ffi.errno, "cannot start the virtio-blk worker")
        self._worker = worker

    def reset(self) -> None:
        """Stop the worker: every thread joined, none touching guest memory after this."""
        worker, self._worker = self._worker, None
        if worker is not None:
            lib.vmrun_blk_stop(worker)

    def close(self) -> None:
        self.reset()
        self._disk.close()

    @property
    def syncs(self) -> int:
        return self._disk.syncs

    def served(self) -> int:
        """Requests returned so far by the running worker."""
        return lib.vmrun_blk_served(self._worker) if self._worker is not None else 0
