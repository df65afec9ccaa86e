/* virtio-rng's worker: see rng.h. */
#include "rng.h"
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

struct vmrun_rng {
    struct vmrun_virtq *q;
    int notify_fd;
    int irq_fd;
    int stop_fd;
    uint32_t *interrupt_status;
    uint64_t served;
    pthread_t thread;
};

static void raise_interrupt(struct vmrun_rng *rng, uint32_t bit)
{
    vmrun_virtio_interrupt_raise(rng->interrupt_status, bit, rng->irq_fd);
}

/* Fill the chain's writable buffers, up to VMRUN_RNG_CHAIN_LIMIT bytes: the bytes written. */
static uint32_t fill(const struct vmrun_virtq_chain *chain)
{
    uint32_t written = 0;
    for (uint32_t i = chain->readable; i < chain->readable + chain->writable; i++) {
        uint8_t *at = chain->iov[i].base;
        uint32_t left = chain->iov[i].len;
        while (left && written < VMRUN_RNG_CHAIN_LIMIT) {
            size_t want = left;
            if (want > VMRUN_RNG_CHAIN_LIMIT - written)
                want = VMRUN_RNG_CHAIN_LIMIT - written;
            /* Never waiting for the host's pool (a host just booted may not have it ready):
             * the worker must always answer its stop at once. */
            ssize_t got = getrandom(at, want, GRND_NONBLOCK);
            if (got < 0) {
                if (errno == EINTR)
                    continue;
                return written; /* the host has no randomness to give: the driver asks again */
            }
            at += got;
            left -= (uint32_t)got;
            written += (uint32_t)got;
        }
    }
    return written;
}

/* Serve every waiting chain; -1 when the guest broke the queue. Notifications are off while
 * draining and on again before waiting, with one more look (vmrun_virtq_notify). */
static int serve(struct vmrun_rng *rng)
{
    struct vmrun_iovec iov[64];
    struct vmrun_virtq_chain chain = {.capacity = 64, .iov = iov};
    int returned = 0;
    do {
        vmrun_virtq_notify(rng->q, 0);
        int got;
        while ((got = vmrun_virtq_pop(rng->q, &chain, VMRUN_VIRTQ_WRITABLE)) > 0) {
            if (vmrun_virtq_push(rng->q, chain.head, fill(&chain)) == 0) {
                returned = 1;
                __atomic_fetch_add(&rng->served, 1, __ATOMIC_RELAXED);
            }
        }
        if (got < 0)
            return -1;
    } while (vmrun_virtq_notify(rng->q, 1));
    if (returned && vmrun_virtq_should_interrupt(rng->q))
        raise_interrupt(rng, VMRUN_VIRTIO_INT_USED);
    return 0;
}

static void *run(void *arg)
{
    struct vmrun_rng *rng = arg;
    int broken = 0;
    for (;;) {
        struct pollfd fds[2] = {{.fd = rng->stop_fd, .events = POLLIN},
                                {.fd = rng->notify_fd, .events = POLLIN}};
        int n = poll(fds, broken ? 1 : 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || fds[0].revents)
            return NULL;
        uint64_t count;
        if (read(rng->notify_fd, &count, sizeof count) < 0 && errno != EAGAIN)
            return NULL;
        if (serve(rng) < 0) {
            broken = 1; /* DEVICE_NEEDS_RESET: the transport reads q->error */
            raise_interrupt(rng, VMRUN_VIRTIO_INT_CONFIG);
        }
    }
}

struct vmrun_rng *vmrun_rng_start(struct vmrun_virtq *q, int notify_fd, int irq_fd,
                                  uint32_t *interrupt_status)
{
    struct vmrun_rng *rng = calloc(1, sizeof *rng);
    if (!rng)
        return NULL;
    *rng = (struct vmrun_rng){.q = q, .notify_fd = notify_fd, .irq_fd = irq_fd,
                              .interrupt_status = interrupt_status};
    rng->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (rng->stop_fd < 0) {
        free(rng);
        return NULL;
    }
    int error = vmrun_worker_spawn(&rng->thread, run, rng);
    if (error) {
        close(rng->stop_fd);
        free(rng);
        errno = error;
        return NULL;
    }
    /* The guest may have queued chains before the worker existed: serve them at once. */
    uint64_t one = 1;
    (void)!write(notify_fd, &one, sizeof one);
    return rng;
}

void vmrun_rng_stop(struct vmrun_rng *rng)
{
    if (!rng)
        return;
    uint64_t one = 1;
    (void)!write(rng->stop_fd, &one, sizeof one);
    pthread_join(rng->thread, NULL);
    close(rng->stop_fd);
    free(rng);
}

uint64_t vmrun_rng_served(const struct vmrun_rng *rng)
{
    return __atomic_load_n(&rng->served, __ATOMIC_RELAXED);
}
