/* virtio-balloon's worker: see balloon.h. */
#include "balloon.h"
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

enum { BALLOON_PAGE = 1 << VMRUN_BALLOON_PFN_SHIFT };

struct vmrun_balloon {
    struct vmrun_virtq *queues[VMRUN_BALLOON_QUEUES_MAX];
    int notify_fds[VMRUN_BALLOON_QUEUES_MAX];
    size_t count;
    int irq_fd;
    int stop_fd;
    uint32_t *interrupt_status;
    uintptr_t host_page; /* the host's page size: only whole host pages are given back */
    uint64_t pages_freed;
    uint64_t chains;
    pthread_t thread;
    struct vmrun_iovec iov[VMRUN_BALLOON_CHAIN_BUFFERS];
    /* An inflate chain's page numbers, copied out of guest memory once (the guest may
     * change them meanwhile): the worker's stack is small, so they live here. */
    uint8_t pfns[VMRUN_BALLOON_CHAIN_PFNS * 4];
};

/* Give back the whole host pages inside host range [at, at + len): a hole in the memfd.
 * A failure (which a shared, writable mapping of a memfd does not have) leaves the pages
 * where they are: the guest sees its data, as if the host had been slow to free them. */
static void give_back(struct vmrun_balloon *balloon, uint8_t *at, uint64_t len)
{
    uintptr_t start = ((uintptr_t)at + balloon->host_page - 1) & ~(balloon->host_page - 1);
    uintptr_t end = ((uintptr_t)at + len) & ~(balloon->host_page - 1);
    if (end <= start)
        return;
    if (madvise((void *)start, end - start, MADV_REMOVE) == 0)
        __atomic_fetch_add(&balloon->pages_freed, (end - start) / BALLOON_PAGE,
                           __ATOMIC_RELAXED);
}

/* The page numbers of an inflate chain, each page inside RAM given back; runs of pages
 * adjacent on the host go in one call. A number outside RAM is skipped, never touched. */
static void inflate(struct vmrun_balloon *balloon, const struct vmrun_virtq *q,
                    const struct vmrun_virtq_chain *chain)
{
    size_t have = 0;
    for (uint32_t i = 0; i < chain->readable && have < sizeof balloon->pfns; i++) {
        size_t take = chain->iov[i].len;
        if (take > sizeof balloon->pfns - have)
            take = sizeof balloon->pfns - have;
        memcpy(balloon->pfns + have, chain->iov[i].base, take);
        have += take;
    }
    uint8_t *run = NULL;
    uint64_t run_len = 0;
    for (size_t at = 0; at + 4 <= have; at += 4) {
        const uint8_t *b = balloon->pfns + at;
        uint64_t pfn = (uint64_t)b[0] | (uint64_t)b[1] << 8 | (uint64_t)b[2] << 16 |
                       (uint64_t)b[3] << 24;
        uint8_t *page = vmrun_guest_ptr(q->regions, q->region_count,
                                        pfn << VMRUN_BALLOON_PFN_SHIFT, BALLOON_PAGE);
        if (!page)
            continue;
        if (run && page == run + run_len) {
            run_len += BALLOON_PAGE;
            continue;
        }
        if (run)
            give_back(balloon, run, run_len);
        run = page;
        run_len = BALLOON_PAGE;
    }
    if (run)
        give_back(balloon, run, run_len);
}

/* A chain of queue `index`, handled; the engine checked every buffer (inside RAM, in the
 * queue's direction). */
static void handle(struct vmrun_balloon *balloon, size_t index,
                   const struct vmrun_virtq_chain *chain)
{
    switch (index) {
    case VMRUN_BALLOON_INFLATE:
        inflate(balloon, balloon->queues[index], chain);
        break;
    case VMRUN_BALLOON_REPORTING:
        for (uint32_t i = 0; i < chain->writable; i++)
            give_back(balloon, chain->iov[i].base, chain->iov[i].len);
        break;
    default: /* deflate: the pages come back at the guest's next touch */
        break;
    }
}

/* Serve every waiting chain of queue `index`; -1 when the guest broke it. Notifications are
 * off while draining and on again before waiting, with one more look (vmrun_virtq_notify). */
static int serve(struct vmrun_balloon *balloon, size_t index)
{
    struct vmrun_virtq *q = balloon->queues[index];
    struct vmrun_virtq_chain chain = {.capacity = VMRUN_BALLOON_CHAIN_BUFFERS,
                                      .iov = balloon->iov};
    unsigned direction = index == VMRUN_BALLOON_REPORTING ? VMRUN_VIRTQ_WRITABLE
                                                          : VMRUN_VIRTQ_READABLE;
    int returned = 0;
    do {
        vmrun_virtq_notify(q, 0);
        int got;
        while ((got = vmrun_virtq_pop(q, &chain, direction)) > 0) {
            handle(balloon, index, &chain);
            /* The driver waits for each chain back before it reuses those pages. */
            if (vmrun_virtq_push(q, chain.head, 0) == 0) {
                returned = 1;
                __atomic_fetch_add(&balloon->chains, 1, __ATOMIC_RELAXED);
            }
        }
        if (got < 0)
            return -1;
    } while (vmrun_virtq_notify(q, 1));
    if (returned && vmrun_virtq_should_interrupt(q))
        vmrun_virtio_interrupt_raise(balloon->interrupt_status, VMRUN_VIRTIO_INT_USED,
                                     balloon->irq_fd);
    return 0;
}

static void *run(void *arg)
{
    struct vmrun_balloon *balloon = arg;
    int broken = 0;
    for (;;) {
        struct pollfd fds[1 + VMRUN_BALLOON_QUEUES_MAX] = {{.fd = balloon->stop_fd,
                                                           .events = POLLIN}};
        for (size_t i = 0; i < balloon->count; i++)
            fds[1 + i] = (struct pollfd){.fd = balloon->notify_fds[i], .events = POLLIN};
        int n = poll(fds, broken ? 1 : 1 + balloon->count, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || fds[0].revents)
            return NULL;
        for (size_t i = 0; i < balloon->count; i++) {
            uint64_t ticks;
            if (fds[1 + i].revents && read(balloon->notify_fds[i], &ticks, sizeof ticks) < 0 &&
                errno != EAGAIN)
                return NULL;
        }
        /* Every queue, whichever was notified: cheap, and chains queued before the worker
         * started are found whatever queue they are on. */
        for (size_t i = 0; i < balloon->count && !broken; i++) {
            if (serve(balloon, i) < 0) {
                broken = 1; /* DEVICE_NEEDS_RESET: the transport reads q->error */
                vmrun_virtio_interrupt_raise(balloon->interrupt_status, VMRUN_VIRTIO_INT_CONFIG,
                                             balloon->irq_fd);
            }
        }
    }
}

struct vmrun_balloon *vmrun_balloon_start(struct vmrun_virtq *const *queues,
                                          const int *notify_fds, size_t count, int irq_fd,
                                          uint32_t *interrupt_status)
{
    if (count < 2 || count > VMRUN_BALLOON_QUEUES_MAX) {
        errno = EINVAL;
        return NULL;
    }
    long host_page = sysconf(_SC_PAGESIZE);
    struct vmrun_balloon *balloon = calloc(1, sizeof *balloon);
    if (!balloon)
        return NULL;
    balloon->count = count;
    balloon->irq_fd = irq_fd;
    balloon->interrupt_status = interrupt_status;
    balloon->host_page = host_page > 0 ? (uintptr_t)host_page : 4096;
    for (size_t i = 0; i < count; i++) {
        balloon->queues[i] = queues[i];
        balloon->notify_fds[i] = notify_fds[i];
    }
    balloon->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (balloon->stop_fd < 0) {
        free(balloon);
        return NULL;
    }
    int error = vmrun_worker_spawn(&balloon->thread, run, balloon);
    if (error) {
        close(balloon->stop_fd);
        free(balloon);
        errno = error;
        return NULL;
    }
    /* The guest may have queued chains before the worker existed: serve them at once. */
    uint64_t one = 1;
    (void)!write(notify_fds[0], &one, sizeof one);
    return balloon;
}

void vmrun_balloon_stop(struct vmrun_balloon *balloon)
{
    if (!balloon)
        return;
    uint64_t one = 1;
    (void)!write(balloon->stop_fd, &one, sizeof one);
    pthread_join(balloon->thread, NULL);
    close(balloon->stop_fd);
    free(balloon);
}

uint64_t vmrun_balloon_pages_freed(const struct vmrun_balloon *balloon)
{
    return __atomic_load_n(&balloon->pages_freed, __ATOMIC_RELAXED);
}

uint64_t vmrun_balloon_chains(const struct vmrun_balloon *balloon)
{
    return __atomic_load_n(&balloon->chains, __ATOMIC_RELAXED);
}
