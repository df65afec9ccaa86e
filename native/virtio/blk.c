/* virtio-blk's worker: see blk.h. The dispatcher and its pool; one request is blk_request.c.
 *
 *   notify eventfd ─▶ dispatcher: pop (KEEP_BAD_BUFFERS) ─▶ pending list ─▶ workers: execute
 *   on the disk ─▶ done list + done eventfd ─▶ dispatcher: push, should_interrupt, irq eventfd
 *
 * Only the dispatcher uses the queue (the engine's rule: one thread at a time), so pops and
 * pushes need no lock; the lists between it and the workers are under `lock`. At most
 * VMRUN_BLK_IN_FLIGHT chains are taken at once (the request slots): when all are busy, the
 * dispatcher leaves the rest in the ring until one comes back.
 */
#include "blk_internal.h"
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct vmrun_blk {
    struct blk_device device;
    struct vmrun_virtq *q;
    int notify_fd;
    int irq_fd;
    int stop_fd;
    int done_fd;
    uint32_t *interrupt_status;
    uint64_t served;

    pthread_mutex_t lock;
    pthread_cond_t work;
    int quit;                       /* under lock: workers end */
    struct blk_request *pending;    /* under lock: for the workers (FIFO) */
    struct blk_request *pending_tail;
    struct blk_request *done;       /* under lock: for the dispatcher */
    struct blk_request *free;       /* the dispatcher's */

    pthread_t dispatcher;
    pthread_t workers[VMRUN_BLK_WORKERS];
    int worker_count;
    struct blk_request requests[VMRUN_BLK_IN_FLIGHT];
};

static void signal_fd(int fd)
{
    uint64_t one = 1;
    (void)!write(fd, &one, sizeof one); /* fails only when the counter is full: still set */
}

static void drain_fd(int fd)
{
    uint64_t count;
    (void)!read(fd, &count, sizeof count);
}

/* ---- workers ------------------------------------------------------------------------------ */

static void *work(void *arg)
{
    struct vmrun_blk *blk = arg;
    struct vmrun_blk_disk *disk = blk->device.disk;
    void *channel = NULL;
    int channel_error = disk->ops->channel_open(disk, &channel);
    pthread_mutex_lock(&blk->lock);
    for (;;) {
        while (!blk->pending && !blk->quit)
            pthread_cond_wait(&blk->work, &blk->lock);
        if (blk->quit)
            break;
        struct blk_request *request = blk->pending;
        blk->pending = request->next;
        if (!blk->pending)
            blk->pending_tail = NULL;
        pthread_mutex_unlock(&blk->lock);

        blk_execute(&blk->device, channel, channel_error, request);

        pthread_mutex_lock(&blk->lock);
        request->next = blk->done;
        blk->done = request;
        signal_fd(blk->done_fd);
    }
    pthread_mutex_unlock(&blk->lock);
    if (!channel_error)
        disk->ops->channel_close(disk, channel);
    return NULL;
}

/* ---- the dispatcher ----------------------------------------------------------------------- */

static void hand_over(struct vmrun_blk *blk, struct blk_request *request)
{
    request->next = NULL;
    pthread_mutex_lock(&blk->lock);
    if (blk->pending_tail)
        blk->pending_tail->next = request;
    else
        blk->pending = request;
    blk->pending_tail = request;
    pthread_cond_signal(&blk->work);
    pthread_mutex_unlock(&blk->lock);
}

/* Take waiting chains while request slots are free. 0: the ring is empty and notifications
 * are on; 1: every slot is busy (chains may wait: look again after a completion); -1: the
 * guest broke the queue. */
static int take(struct vmrun_blk *blk)
{
    for (;;) {
        if (!blk->free)
            return 1;
        vmrun_virtq_notify(blk->q, 0);
        struct blk_request *request = blk->free;
        int got = vmrun_virtq_pop(blk->q, &request->chain,
                                  VMRUN_VIRTQ_READABLE | VMRUN_VIRTQ_WRITABLE |
                                      VMRUN_VIRTQ_KEEP_BAD_BUFFERS);
        if (got < 0)
            return -1;
        if (got == 0) {
            if (vmrun_virtq_notify(blk->q, 1))
                continue; /* a chain arrived while notifications were off */
            return 0;
        }
        blk->free = request->next;
        hand_over(blk, request);
    }
}

/* Return every finished request to the used ring; interrupt the driver when it asks. */
static void complete(struct vmrun_blk *blk)
{
    pthread_mutex_lock(&blk->lock);
    struct blk_request *done = blk->done;
    blk->done = NULL;
    pthread_mutex_unlock(&blk->lock);
    int returned = 0;
    while (done) {
        struct blk_request *request = done;
        done = request->next;
        /* On a queue broken meanwhile the push fails: the slot is free all the same. */
        if (vmrun_virtq_push(blk->q, request->chain.head, request->written) == 0) {
            returned = 1;
            __atomic_fetch_add(&blk->served, 1, __ATOMIC_RELAXED);
        }
        request->next = blk->free;
        blk->free = request;
    }
    if (returned && vmrun_virtq_should_interrupt(blk->q))
        vmrun_virtio_interrupt_raise(blk->interrupt_status, VMRUN_VIRTIO_INT_USED, blk->irq_fd);
}

static void *dispatch(void *arg)
{
    struct vmrun_blk *blk = arg;
    int broken = 0;
    int look = 1; /* chains may be waiting: the guest may have queued before the worker */
    for (;;) {
        if (look && !broken) {
            int taken = take(blk);
            if (taken < 0) {
                broken = 1; /* DEVICE_NEEDS_RESET: the transport reads q->error */
                vmrun_virtio_interrupt_raise(blk->interrupt_status, VMRUN_VIRTIO_INT_CONFIG,
                                             blk->irq_fd);
            }
            look = taken == 1;
        }
        struct pollfd fds[3] = {{.fd = blk->stop_fd, .events = POLLIN},
                                {.fd = blk->done_fd, .events = POLLIN},
                                {.fd = blk->notify_fd, .events = POLLIN}};
        /* While every slot is busy the notify eventfd is left set: a completion comes first. */
        int n = poll(fds, broken || look ? 2 : 3, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || fds[0].revents)
            return NULL;
        if (fds[1].revents) {
            drain_fd(blk->done_fd);
            complete(blk);
        }
        if (!broken && !look && fds[2].revents) {
            drain_fd(blk->notify_fd);
            look = 1;
        }
    }
}

/* ---- life ----------------------------------------------------------------------------------- */

static void end_workers(struct vmrun_blk *blk)
{
    pthread_mutex_lock(&blk->lock);
    blk->quit = 1;
    pthread_cond_broadcast(&blk->work);
    pthread_mutex_unlock(&blk->lock);
    for (int i = 0; i < blk->worker_count; i++)
        pthread_join(blk->workers[i], NULL);
    blk->worker_count = 0;
}

static void release(struct vmrun_blk *blk)
{
    if (blk->stop_fd >= 0)
        close(blk->stop_fd);
    if (blk->done_fd >= 0)
        close(blk->done_fd);
    pthread_cond_destroy(&blk->work);
    pthread_mutex_destroy(&blk->lock);
    free(blk);
}

struct vmrun_blk *vmrun_blk_start(struct vmrun_blk_disk *disk, int read_only, int flush,
                                  const uint8_t *id, uint32_t id_len, struct vmrun_virtq *q,
                                  int notify_fd, int irq_fd, uint32_t *interrupt_status)
{
    struct vmrun_blk *blk = calloc(1, sizeof *blk);
    if (!blk)
        return NULL;
    blk->device.disk = disk;
    blk->device.read_only = read_only != 0;
    blk->device.flush = flush;
    memcpy(blk->device.id, id, id_len < VMRUN_BLK_ID_BYTES ? id_len : VMRUN_BLK_ID_BYTES);
    blk->q = q;
    blk->notify_fd = notify_fd;
    blk->irq_fd = irq_fd;
    blk->interrupt_status = interrupt_status;
    for (int i = 0; i < VMRUN_BLK_IN_FLIGHT; i++) {
        blk->requests[i].chain.iov = blk->requests[i].iov;
        blk->requests[i].chain.capacity = VMRUN_BLK_CHAIN_CAPACITY;
        blk->requests[i].next = blk->free;
        blk->free = &blk->requests[i];
    }
    pthread_mutex_init(&blk->lock, NULL);
    pthread_cond_init(&blk->work, NULL);
    blk->stop_fd = eventfd(0, EFD_CLOEXEC);
    blk->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int error = blk->stop_fd < 0 || blk->done_fd < 0 ? errno : 0;
    for (int i = 0; !error && i < VMRUN_BLK_WORKERS; i++) {
        error = vmrun_worker_spawn(&blk->workers[i], work, blk);
        if (!error)
            blk->worker_count++;
    }
    if (!error)
        error = vmrun_worker_spawn(&blk->dispatcher, dispatch, blk);
    if (error) {
        end_workers(blk);
        release(blk);
        errno = error;
        return NULL;
    }
    return blk;
}

void vmrun_blk_stop(struct vmrun_blk *blk)
{
    if (!blk)
        return;
    /* Requests being executed end at their next piece; the dispatcher stops using the queue;
     * then the workers end, pending requests dropped: none is returned to a device that is
     * being reset, and no thread touches guest memory once this returns. */
    __atomic_store_n(&blk->device.stopping, 1, __ATOMIC_RELAXED);
    signal_fd(blk->stop_fd);
    pthread_join(blk->dispatcher, NULL);
    end_workers(blk);
    release(blk);
}

uint64_t vmrun_blk_served(const struct vmrun_blk *blk)
{
    return __atomic_load_n(&blk->served, __ATOMIC_RELAXED);
}

/* ---- the disk, whatever its kind ------------------------------------------------------------ */

void vmrun_blk_disk_close(struct vmrun_blk_disk *disk)
{
    if (!disk)
        return;
    disk->ops->close(disk);
    free(disk);
}

uint64_t vmrun_blk_disk_sectors(const struct vmrun_blk_disk *disk)
{
    return disk->size / VMRUN_BLK_SECTOR;
}

uint32_t vmrun_blk_disk_block_size(const struct vmrun_blk_disk *disk)
{
    return disk->block_size;
}

uint32_t vmrun_blk_disk_discard_alignment(const struct vmrun_blk_disk *disk)
{
    return disk->discard_alignment;
}

uint64_t vmrun_blk_disk_syncs(const struct vmrun_blk_disk *disk)
{
    return __atomic_load_n(&disk->syncs, __ATOMIC_RELAXED);
}
