/* virtio-balloon's data path: a native worker thread per device (virtio 1.2, 5.5).
 *
 * Read twice like virtqueue.h: by the compiler and, less its `#` lines, by cffi.
 *
 * Queues, by index as the driver enables them (Linux's virtio_mmio numbers only the queues
 * of negotiated features: without STATS_VQ and FREE_PAGE_HINT, which vmrun does not offer,
 * the reporting queue is index 2, and a driver without REPORTING enables 2 queues):
 *   0 inflateq    readable buffers of le32 page frame numbers (4 KiB guest pages) that the
 *                 guest gives up: each page inside guest RAM is given back to the host; a
 *                 number outside RAM is skipped, never touched;
 *   1 deflateq    pages the guest takes back: nothing to do on the host (a page given back
 *                 reads as zeros and is allocated again at its next touch);
 *   2 reporting   (F_REPORTING only) writable buffers that are free guest pages: given back.
 * "Given back" is MADV_REMOVE on the shared memfd mapping of guest RAM: it punches a hole in
 * the file, so the pages leave the host's memory (MADV_DONTNEED would only drop this
 * mapping's view of shmem pages, which stay in the file). Only whole host pages inside each
 * range are given back. Every chain is returned to the driver, with no bytes written.
 *
 * Bounded work per chain: at most VMRUN_BALLOON_CHAIN_PFNS page numbers of an inflate chain
 * (Linux sends 256), at most VMRUN_BALLOON_CHAIN_BUFFERS buffers of any chain (more breaks
 * the queue in the engine); the worker never takes the GIL. A queue the guest broke is left
 * alone: the configuration-change bit is raised once and the worker waits only for its stop.
 */
#ifndef VMRUN_BALLOON_H
#define VMRUN_BALLOON_H

#include <stdint.h>

#include "virtqueue.h"

enum {
    VMRUN_BALLOON_QUEUES_MAX = 3,
    VMRUN_BALLOON_INFLATE = 0,
    VMRUN_BALLOON_DEFLATE = 1,
    VMRUN_BALLOON_REPORTING = 2,
    VMRUN_BALLOON_PFN_SHIFT = 12, /* the spec's page: 4 KiB, whatever the guest's own */
    VMRUN_BALLOON_CHAIN_PFNS = 4096,
    VMRUN_BALLOON_CHAIN_BUFFERS = 256,
};

struct vmrun_balloon;

/* Start the worker on `queues[0..count)` (count 2, or 3 with the reporting queue; set up,
 * owned by the caller, kept alive until stop), woken by `notify_fds[0..count)`. The queues'
 * region table says where guest RAM is mapped. `interrupt_status` is the transport's
 * register, updated atomically. The fds stay the caller's. Returns NULL with errno set when
 * the thread cannot start or `count` is not 2 or 3. */
struct vmrun_balloon *vmrun_balloon_start(struct vmrun_virtq *const *queues,
                                          const int *notify_fds, size_t count, int irq_fd,
                                          uint32_t *interrupt_status);

/* Stop the worker and wait for it; frees `balloon`. Safe on NULL. */
void vmrun_balloon_stop(struct vmrun_balloon *balloon);

/* 4 KiB pages given back to the host so far (inflated or reported), for tests. */
uint64_t vmrun_balloon_pages_freed(const struct vmrun_balloon *balloon);

/* Chains returned so far on every queue, for tests. */
uint64_t vmrun_balloon_chains(const struct vmrun_balloon *balloon);

#endif /* VMRUN_BALLOON_H */
