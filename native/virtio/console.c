/* virtio-console's worker: see console.h; its ports' data path is in console_port.c, the
 * multiport control protocol in console_control.c (console_internal.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_timedjoin_np */
#endif
#include "console_internal.h"
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>


enum {
    MAX_WATCHED = 2 + MAX_QUEUES + 2 * VMRUN_CONSOLE_MAX_PORTS,
    STOP_GRACE_MS = 1000, /* beyond its drain, for a worker to end before it is cancelled */
};

/* Return a chain; -1 only when the queue is broken (console_internal.h). */
int vmrun_console_give_back(struct vmrun_console *c, uint32_t queue, uint16_t head,
                            uint32_t written)
{
    if (vmrun_virtq_push(c->q[queue], head, written) < 0)
        return c->q[queue]->error ? -1 : 0;
    c->pushed[queue] = 1;
    return 0;
}

static void raise_interrupt(struct vmrun_console *c, uint32_t bit)
{
    vmrun_virtio_interrupt_raise(c->interrupt_status, bit, c->irq_fd);
}

/* One used-buffer interrupt for all the queues returned to, if the driver wants one. */
static void interrupt(struct vmrun_console *c)
{
    int wanted = 0;
    for (uint32_t i = 0; i < c->queue_count; i++) {
        if (c->pushed[i]) {
            c->pushed[i] = 0;
            wanted |= vmrun_virtq_should_interrupt(c->q[i]);
        }
    }
    if (wanted)
        raise_interrupt(c, VMRUN_VIRTIO_INT_USED);
}

/* ---- the worker --------------------------------------------------------------------- */

/* Everything that can be done now. -1 when the guest broke a queue. */
static int serve(struct vmrun_console *c)
{
    if (c->multiport && vmrun_console_control_in(c) < 0)
        return -1;
    for (uint32_t i = 0; i < c->port_count; i++)
        if (vmrun_console_transmit(c, i) < 0 || vmrun_console_receive(c, i) < 0)
            return -1;
    /* After receive: a port's last input is in the used ring before its PORT_OPEN 0. */
    if (c->multiport && vmrun_console_control_out(c) < 0)
        return -1;
    interrupt(c);
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* The VM ended: write out the chains the guest queued, as long as the readers keep up. */
static void drain(struct vmrun_console *c)
{
    int64_t deadline = now_ms() + VMRUN_CONSOLE_DRAIN_MS;
    for (;;) {
        struct pollfd fds[VMRUN_CONSOLE_MAX_PORTS];
        nfds_t n = 0;
        for (uint32_t i = 0; i < c->port_count; i++) {
            if (vmrun_console_transmit(c, i) < 0)
                return;
            if (c->ports[i].tx_busy)
                fds[n++] = (struct pollfd){.fd = c->ports[i].out_fd, .events = POLLOUT};
        }
        interrupt(c);
        int64_t left = deadline - now_ms();
        if (n == 0 || left <= 0)
            return;
        poll(fds, n, (int)left);
    }
}

enum { WATCH_STOP, WATCH_EVENT, WATCH_INPUT, WATCH_OUTPUT };

/* What the worker waits on, and for what. */
struct watched {
    struct pollfd fds[MAX_WATCHED];
    uint32_t kind[MAX_WATCHED], port[MAX_WATCHED];
    nfds_t n;
};

static void watch(struct watched *w, int fd, short events, uint32_t kind, uint32_t port)
{
    w->fds[w->n] = (struct pollfd){.fd = fd, .events = events};
    w->kind[w->n] = kind;
    w->port[w->n++] = port;
}

static void *run(void *arg)
{
    struct vmrun_console *c = arg;
    for (;;) {
        struct watched w = {.n = 0};
        watch(&w, c->stop_fd, POLLIN, WATCH_STOP, 0);
        watch(&w, c->wake_fd, POLLIN, WATCH_EVENT, 0);
        for (uint32_t i = 0; !c->broken && i < c->queue_count; i++)
            watch(&w, c->notify_fd[i], POLLIN, WATCH_EVENT, 0);
        for (uint32_t i = 0; !c->broken && i < c->port_count; i++) {
            struct port *p = &c->ports[i];
            /* Input only with room for it and a guest to give it to. */
            if (p->in_fd >= 0 && !p->in_eof && !p->staged && !p->in_ready && p->guest_open)
                watch(&w, p->in_fd, POLLIN, WATCH_INPUT, i);
            if (p->tx_busy && p->out_blocked)
                watch(&w, p->out_fd, POLLOUT, WATCH_OUTPUT, i);
        }
        if (poll(w.fds, w.n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (w.fds[0].revents)
            break;
        for (nfds_t i = 1; i < w.n; i++) {
            if (!w.fds[i].revents)
                continue;
            uint64_t count;
            if (w.kind[i] == WATCH_EVENT)
                (void)!read(w.fds[i].fd, &count, sizeof count); /* non-blocking eventfds */
            else if (w.kind[i] == WATCH_INPUT)
                c->ports[w.port[i]].in_ready = 1; /* POLLHUP and POLLERR too: read says */
            else
                c->ports[w.port[i]].out_blocked = 0;
        }
        if (!c->broken && serve(c) < 0) {
            c->broken = 1; /* DEVICE_NEEDS_RESET: the transport reads q->error */
            raise_interrupt(c, VMRUN_VIRTIO_INT_CONFIG);
        }
    }
    if (__atomic_load_n(&c->draining, __ATOMIC_SEQ_CST) && !c->broken)
        drain(c);
    return NULL;
}

static void release(struct vmrun_console *c)
{
    if (c->stop_fd >= 0)
        close(c->stop_fd);
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    free(c->ports);
    free(c);
}

struct vmrun_console *vmrun_console_start(struct vmrun_virtq *const *queues,
                                          uint32_t queue_count, const int *notify_fds,
                                          int irq_fd, uint32_t *interrupt_status,
                                          const struct vmrun_console_port *ports,
                                          uint32_t port_count, int multiport)
{
    uint32_t layout = multiport ? 2 * (port_count + 1) : 2;
    if (!queues || !notify_fds || !interrupt_status || !ports || port_count == 0 ||
        port_count > VMRUN_CONSOLE_MAX_PORTS || (!multiport && port_count != 1) ||
        queue_count != layout) {
        errno = EINVAL;
        return NULL;
    }
    struct vmrun_console *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->stop_fd = c->wake_fd = -1;
    c->ports = calloc(port_count, sizeof *c->ports);
    if (!c->ports) {
        release(c);
        return NULL;
    }
    c->queue_count = queue_count;
    c->port_count = port_count;
    c->multiport = multiport != 0;
    c->irq_fd = irq_fd;
    c->interrupt_status = interrupt_status;
    for (uint32_t i = 0; i < queue_count; i++) {
        c->q[i] = queues[i];
        c->notify_fd[i] = notify_fds[i];
    }
    if (vmrun_console_set_up_ports(c, ports) < 0) {
        release(c);
        errno = EINVAL;
        return NULL;
    }
    c->stop_fd = eventfd(0, EFD_CLOEXEC);
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->stop_fd < 0 || c->wake_fd < 0) {
        int error = errno;
        release(c);
        errno = error;
        return NULL;
    }
    int error = vmrun_worker_spawn(&c->thread, run, c);
    if (error) {
        release(c);
        errno = error;
        return NULL;
    }
    /* The guest may have queued chains before the worker existed: one pass at once. */
    uint64_t one = 1;
    (void)!write(c->wake_fd, &one, sizeof one);
    return c;
}

void vmrun_console_resize(struct vmrun_console *c, uint32_t port, uint16_t rows, uint16_t cols)
{
    if (!c || !c->multiport || port >= c->port_count)
        return;
    struct port *p = &c->ports[port];
    __atomic_store_n(&p->size, HAS_SIZE | (uint64_t)rows << 16 | cols, __ATOMIC_SEQ_CST);
    __atomic_fetch_or(&p->pending, SEND_RESIZE, __ATOMIC_SEQ_CST);
    uint64_t one = 1;
    (void)!write(c->wake_fd, &one, sizeof one);
}

void vmrun_console_stop(struct vmrun_console *c, int drain_first)
{
    if (!c)
        return;
    __atomic_store_n(&c->draining, drain_first != 0, __ATOMIC_SEQ_CST);
    uint64_t one = 1;
    (void)!write(c->stop_fd, &one, sizeof one);
    /* A shared, blocking terminal that nobody reads could hold a write up for ever: past its
     * time the worker is cancelled there (a write is a cancellation point; it holds no lock,
     * and nothing of it is used after). */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    int64_t ms = (drain_first ? VMRUN_CONSOLE_DRAIN_MS : 0) + STOP_GRACE_MS;
    until.tv_sec += ms / 1000 + (until.tv_nsec + ms % 1000 * 1000000) / 1000000000;
    until.tv_nsec = (until.tv_nsec + ms % 1000 * 1000000) % 1000000000;
    if (pthread_timedjoin_np(c->thread, NULL, &until) != 0) {
        pthread_cancel(c->thread);
        pthread_join(c->thread, NULL);
    }
    release(c);
}

uint64_t vmrun_console_bytes_out(const struct vmrun_console *c)
{
    return __atomic_load_n(&c->bytes_out, __ATOMIC_RELAXED);
}

uint64_t vmrun_console_bytes_in(const struct vmrun_console *c)
{
    return __atomic_load_n(&c->bytes_in, __ATOMIC_RELAXED);
}
