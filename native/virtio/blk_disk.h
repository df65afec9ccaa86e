/* Where a virtio-blk disk's sectors live: a table of operations per kind of disk. Not read by
 * cffi (blk.h declares what Python sees).
 *
 * Kinds: FILE (blk_disk_file.c: a host file or block device through its descriptor). A second
 * kind (an NBD client, for qcow2 through qemu-storage-daemon) fills the same table: blk.c
 * knows nothing of where sectors are.
 *
 * Threads: each thread that does I/O (blk.c's workers) opens a channel first and closes it
 * before it ends; every operation is called with the calling thread's channel, never another
 * thread's. A kind keeps per-thread state there (FILE: its O_DIRECT bounce buffer; NBD: its
 * connection). Operations on one disk run concurrently on several channels.
 *
 * Every operation gets byte offsets and lengths that blk.c has checked: inside the disk's
 * size, multiples of 512 (and of the disk's block size under direct I/O, as the guest was
 * told). Each moves ALL the bytes or fails: 0, or a negative errno value. `iov` entries point
 * into guest RAM (checked by the queue engine); a kind may use them only during the call.
 */
#ifndef VMRUN_BLK_DISK_H
#define VMRUN_BLK_DISK_H

#include <stdint.h>
#include <sys/uio.h>

#include "blk.h"

struct vmrun_blk_disk_ops {
    const char *kind;
    /* This thread's channel (NULL is a valid channel for a kind that needs none); `*channel`
     * set, 0 or a negative errno value. */
    int (*channel_open)(struct vmrun_blk_disk *disk, void **channel);
    void (*channel_close)(struct vmrun_blk_disk *disk, void *channel);
    int (*read)(struct vmrun_blk_disk *disk, void *channel, const struct iovec *iov, int count,
                uint64_t offset);
    int (*write)(struct vmrun_blk_disk *disk, void *channel, const struct iovec *iov, int count,
                 uint64_t offset);
    /* Data only (VMRUN_BLK_FLUSH_DATA) or data and metadata (VMRUN_BLK_FLUSH_ALL). */
    int (*flush)(struct vmrun_blk_disk *disk, void *channel, int what);
    /* Advisory: a kind that cannot deallocate returns 0. */
    int (*discard)(struct vmrun_blk_disk *disk, void *channel, uint64_t offset, uint64_t length);
    /* The range reads back as zeroes afterwards; `may_unmap`: deallocating it is allowed. */
    int (*write_zeroes)(struct vmrun_blk_disk *disk, void *channel, uint64_t offset,
                        uint64_t length, int may_unmap);
    /* Free the kind's state (not the descriptor or connection the caller handed in). */
    void (*close)(struct vmrun_blk_disk *disk);
};

/* What every kind has; a kind's own state hangs off `state`. */
struct vmrun_blk_disk {
    const struct vmrun_blk_disk_ops *ops;
    uint64_t size;              /* bytes, a multiple of 512 */
    uint32_t block_size;        /* what the guest is told (blk_size) */
    uint32_t discard_alignment; /* in sectors */
    uint64_t syncs;             /* host syncs done for guest flushes (atomic) */
    void *state;
};

#endif /* VMRUN_BLK_DISK_H */
