/* virtio-blk's worker, inside: shared by blk.c (threads) and blk_request.c (one request).
 * Not read by cffi. */
#ifndef VMRUN_BLK_INTERNAL_H
#define VMRUN_BLK_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "blk.h"
#include "blk_disk.h"

/* A chain taken from the queue, from the dispatcher to a worker and back. */
struct blk_request {
    struct vmrun_virtq_chain chain;
    struct vmrun_iovec iov[VMRUN_BLK_CHAIN_CAPACITY];
    uint32_t written;  /* bytes written into the chain's writable buffers */
    int abandoned;     /* stopped half-way: never returned to the queue */
    struct blk_request *next;
};

/* What executing a request needs to know of its device. */
struct blk_device {
    struct vmrun_blk_disk *disk;
    int read_only;
    int flush;                          /* VMRUN_BLK_FLUSH_* */
    uint8_t id[VMRUN_BLK_ID_BYTES];     /* NUL-padded */
    int stopping;                       /* atomic: a request in progress ends at its next piece */
};

/* Parse `request` completely, then execute it on `channel` (this thread's; `channel_error`
 * nonzero when it could not be opened: every request then fails with IOERR); sets
 * request->written, writes the status byte, or sets request->abandoned on a stop. */
void blk_execute(struct blk_device *device, void *channel, int channel_error,
                 struct blk_request *request);

#endif /* VMRUN_BLK_INTERNAL_H */
