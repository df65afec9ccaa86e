/* virtio-rng's data path: a native worker thread per device (virtio 1.2, 5.4).
 *
 * Read twice like virtqueue.h: by the compiler and, less its `#` lines, by cffi.
 *
 * The worker waits on the queue's notify eventfd (a KVM ioeventfd on QueueNotify), fills
 * every writable chain from the host's getrandom(), returns it, and raises the device's
 * interrupt (sets the used-buffer bit of `interrupt_status` and writes `irq_fd`) when the
 * driver asked for one. It never takes the GIL. A queue the guest broke is left alone: the
 * configuration-change bit is raised once and the worker waits only for its stop.
 */
#ifndef VMRUN_RNG_H
#define VMRUN_RNG_H

#include <stdint.h>

#include "virtqueue.h"

enum {
    /* At most this many bytes of randomness per chain: a guest asking for gigabytes gets
     * what it asked for in pieces, and the worker stays responsive to its stop. */
    VMRUN_RNG_CHAIN_LIMIT = 65536,
    /* A worker thread's stack. */
    VMRUN_WORKER_STACK = 65536,
};

struct vmrun_rng;

/* Start the worker on queue `q` (set up, owned by the caller, kept alive until stop).
 * `interrupt_status` is the transport's register, updated atomically. The fds stay the
 * caller's. Returns NULL with errno set when the thread cannot start. */
struct vmrun_rng *vmrun_rng_start(struct vmrun_virtq *q, int notify_fd, int irq_fd,
                                  uint32_t *interrupt_status);

/* Stop the worker and wait for it; frees `rng`. Safe on NULL. */
void vmrun_rng_stop(struct vmrun_rng *rng);

/* Chains the worker has returned so far (for tests and the benchmark). */
uint64_t vmrun_rng_served(const struct vmrun_rng *rng);

#endif /* VMRUN_RNG_H */
