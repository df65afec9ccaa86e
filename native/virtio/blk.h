/* virtio-blk's data path (virtio 1.2, 5.2): a disk, and a dispatcher with a pool of workers.
 *
 * Read twice like virtqueue.h: by the compiler and, less its `#` lines, by cffi.
 *
 * A disk (`struct vmrun_blk_disk`) is where the sectors live, behind a small table of
 * operations (blk_disk.h, not read by cffi): today a host file or block device, opened by
 * Python and handed over as a descriptor. It outlives the device's resets; the worker
 * (`struct vmrun_blk`) lives from DRIVER_OK to the next reset.
 *
 * The worker: a dispatcher thread waits on the queue's notify eventfd (a KVM ioeventfd) and a
 * stop eventfd, takes chains (with VMRUN_VIRTQ_KEEP_BAD_BUFFERS: a buffer outside guest RAM
 * is an IOERR for its request, not a broken queue), hands them to VMRUN_BLK_WORKERS threads
 * and returns the finished ones to the used ring itself, so the queue is only ever used by
 * the dispatcher. It never takes the GIL.
 */
#ifndef VMRUN_BLK_H
#define VMRUN_BLK_H

#include <stdint.h>

#include "virtqueue.h"

enum {
    VMRUN_BLK_DEVICE_ID = 2,
    VMRUN_BLK_QUEUE_SIZE = 256,
    VMRUN_BLK_SECTOR = 512,
    VMRUN_BLK_ID_BYTES = 20,

    /* Feature bits (5.2.3). */
    VMRUN_BLK_F_SIZE_MAX = 1,
    VMRUN_BLK_F_SEG_MAX = 2,
    VMRUN_BLK_F_RO = 5,
    VMRUN_BLK_F_BLK_SIZE = 6,
    VMRUN_BLK_F_FLUSH = 9,
    VMRUN_BLK_F_DISCARD = 13,
    VMRUN_BLK_F_WRITE_ZEROES = 14,

    /* Request types and status values (5.2.6). */
    VMRUN_BLK_T_IN = 0,
    VMRUN_BLK_T_OUT = 1,
    VMRUN_BLK_T_FLUSH = 4,
    VMRUN_BLK_T_GET_ID = 8,
    VMRUN_BLK_T_DISCARD = 11,
    VMRUN_BLK_T_WRITE_ZEROES = 13,
    VMRUN_BLK_S_OK = 0,
    VMRUN_BLK_S_IOERR = 1,
    VMRUN_BLK_S_UNSUPP = 2,
    VMRUN_BLK_WRITE_ZEROES_FLAG_UNMAP = 1,

    /* Limits the device announces (config space) and holds every request to: what one
     * request may make vmrun do is bounded whatever the guest writes. seg_max as QEMU: the
     * queue size less the header and status descriptors. */
    VMRUN_BLK_SEG_MAX = 254,
    VMRUN_BLK_SIZE_MAX = 1048576,        /* bytes in one data buffer */
    VMRUN_BLK_MAX_DISCARD_SECTORS = 4194304, /* 2 GiB per range */
    VMRUN_BLK_MAX_DISCARD_SEG = 32,
    VMRUN_BLK_MAX_WRITE_ZEROES_SECTORS = 4194304,
    VMRUN_BLK_MAX_WRITE_ZEROES_SEG = 32,
    /* Buffers one chain may have: header and status may each be split by a driver; more
     * breaks the queue (the engine's E_SEGMENTS). */
    VMRUN_BLK_CHAIN_CAPACITY = 262, /* VMRUN_BLK_SEG_MAX + 8 */
    VMRUN_BLK_WORKERS = 4,    /* requests in flight on the host at once */
    VMRUN_BLK_IN_FLIGHT = 64, /* chains taken and not returned, at most */

    /* What a guest FLUSH does on the host (the VM file's cache and sync). */
    VMRUN_BLK_FLUSH_NOTHING = 0, /* cache "unsafe", or sync "none": completes OK */
    VMRUN_BLK_FLUSH_DATA = 1,    /* sync "relaxed": fdatasync */
    VMRUN_BLK_FLUSH_ALL = 2,     /* sync "full": fsync */

    /* vmrun_blk_disk_open_file's flags. */
    VMRUN_BLK_DISK_DIRECT = 1, /* the descriptor was opened O_DIRECT */
};

struct vmrun_blk_disk;
struct vmrun_blk;

/* A disk over host descriptor `fd` (a regular file or a block device; stays the caller's,
 * open until vmrun_blk_disk_close). Reads its size (a file's, rounded down to sectors; a
 * block device's BLKGETSIZE64) and, with VMRUN_BLK_DISK_DIRECT, the alignments O_DIRECT
 * needs (statx STATX_DIOALIGN, else BLKSSZGET, else 4096 for memory and 512 for offsets).
 * NULL with errno set on failure. */
struct vmrun_blk_disk *vmrun_blk_disk_open_file(int fd, unsigned flags);
/* A disk served over NBD (blk_disk_nbd.c): export `export_name` on the unix socket
 * `socket_path`, qemu-storage-daemon's for a qcow2 image. A first connection reads its size
 * (rounded down to sectors); each worker thread connects on its own. NULL with errno set
 * (nbd.h's vmrun_nbd_connect errors). */
struct vmrun_blk_disk *vmrun_blk_disk_open_nbd(const char *socket_path, const char *export_name);
void vmrun_blk_disk_close(struct vmrun_blk_disk *disk); /* safe on NULL */

/* The disk's capacity in 512-byte sectors. */
uint64_t vmrun_blk_disk_sectors(const struct vmrun_blk_disk *disk);
/* The block size to tell the guest: 512, or what direct I/O on this disk needs. */
uint32_t vmrun_blk_disk_block_size(const struct vmrun_blk_disk *disk);
/* Sectors a discard should be aligned to (the file system's or the device's block). */
uint32_t vmrun_blk_disk_discard_alignment(const struct vmrun_blk_disk *disk);
/* Host syncs (fdatasync, fsync) done for guest FLUSHes so far: an atomic counter. */
uint64_t vmrun_blk_disk_syncs(const struct vmrun_blk_disk *disk);

/* Start the worker of `disk` (kept alive until stop) on queue `q` (set up, the caller's
 * until stop). `id` is the GET_ID answer (at most VMRUN_BLK_ID_BYTES, NUL-padded there);
 * `flush` a VMRUN_BLK_FLUSH_* value. NULL with errno set when a thread cannot start. */
struct vmrun_blk *vmrun_blk_start(struct vmrun_blk_disk *disk, int read_only, int flush,
                                  const uint8_t *id, uint32_t id_len, struct vmrun_virtq *q,
                                  int notify_fd, int irq_fd, uint32_t *interrupt_status);

/* Stop and join every thread of the worker, then free it; safe on NULL. Requests being
 * executed end at their next chunk boundary and are not returned (the device is being
 * reset); once this returns, no thread of the worker touches guest memory. */
void vmrun_blk_stop(struct vmrun_blk *blk);

/* Chains returned to the used ring so far (for tests). */
uint64_t vmrun_blk_served(const struct vmrun_blk *blk);

#endif /* VMRUN_BLK_H */
