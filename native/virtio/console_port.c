/* virtio-console's ports, their data path: see console.h and console_internal.h. */
#include "console_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
    WRITE_BATCH = 64, /* iovecs per writev */
};

static uint32_t rx_queue(uint32_t port)
{
    return port == 0 ? 0 : 2 + 2 * port;
}

/* ---- guest -> host ------------------------------------------------------------------ */

static ssize_t host_write(const struct port *p, struct iovec *iov, int count)
{
    if (!p->out_socket)
        return writev(p->out_fd, iov, count);
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)count};
    return sendmsg(p->out_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* poll says `fd` is ready for `events` now (or has an error, which the next call reports). */
static int ready(int fd, short events)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    return poll(&pfd, 1, 0) > 0;
}

static void advance(struct port *p, size_t n)
{
    while (n) {
        uint32_t left = p->tx.iov[p->tx_seg].len - p->tx_off;
        if (n < left) {
            p->tx_off += (uint32_t)n;
            return;
        }
        n -= left;
        p->tx_seg++;
        p->tx_off = 0;
    }
}

/* Write what is left of the port's transmit chain: 1 once all of it is written (or dropped:
 * no output fd, or one that failed), 0 when the fd is full. */
static int write_out(struct vmrun_console *c, struct port *p)
{
    while (p->out_fd >= 0 && !p->out_failed && p->tx_seg < p->tx.readable) {
        struct iovec iov[WRITE_BATCH];
        int count = 0;
        /* A blocking description: only once poll says there is room, and no more than a
         * pipe takes at once then (a terminal may still hold a larger write up). */
        size_t room = p->out_careful ? PIPE_BUF : SIZE_MAX;
        for (uint32_t s = p->tx_seg; s < p->tx.readable && count < WRITE_BATCH && room; s++) {
            uint32_t skip = s == p->tx_seg ? p->tx_off : 0;
            size_t len = p->tx.iov[s].len - skip < room ? p->tx.iov[s].len - skip : room;
            iov[count++] = (struct iovec){p->tx.iov[s].base + skip, len};
            room -= len;
        }
        if (p->out_careful && !ready(p->out_fd, POLLOUT)) {
            p->out_blocked = 1;
            return 0;
        }
        ssize_t n = host_write(p, iov, count);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            p->out_blocked = 1;
            return 0;
        }
        if (n <= 0) {
            p->out_failed = 1; /* the reader is gone: the guest must not wait for it */
            break;
        }
        __atomic_fetch_add(&c->bytes_out, (uint64_t)n, __ATOMIC_RELAXED);
        advance(p, (size_t)n);
    }
    return 1;
}

/* Write out the port's transmit queue; a chain goes back only once all of it is written, so
 * a full fd holds the guest back. -1 when the guest broke the queue. */
int vmrun_console_transmit(struct vmrun_console *c, uint32_t index)
{
    struct port *p = &c->ports[index];
    uint32_t queue = rx_queue(index) + 1;
    struct vmrun_virtq *q = c->q[queue];
    do {
        vmrun_virtq_notify(q, 0);
        for (;;) {
            if (p->tx_busy) {
                if (!write_out(c, p))
                    return 0; /* notifications stay off until POLLOUT brings us back */
                p->tx_busy = 0;
                if (vmrun_console_give_back(c, queue, p->tx.head, 0) < 0)
                    return -1;
            }
            int got = vmrun_virtq_pop(q, &p->tx, VMRUN_VIRTQ_READABLE);
            if (got < 0)
                return -1;
            if (got == 0)
                break;
            p->tx_busy = 1;
            p->tx_seg = 0;
            p->tx_off = 0;
        }
    } while (vmrun_virtq_notify(q, 1));
    return 0;
}

/* ---- host -> guest ------------------------------------------------------------------ */

/* Read the port's input into its empty staging buffer: 1 when it holds bytes. Only after
 * poll said so: a FIFO that never had a writer reads as end of file. */
static int fill_staging(struct port *p)
{
    while (p->in_ready && !p->in_eof) {
        ssize_t n = p->in_socket ? recv(p->in_fd, p->staging, sizeof p->staging, MSG_DONTWAIT)
                                 : read(p->in_fd, p->staging, sizeof p->staging);
        if (n < 0 && errno == EINTR)
            continue;
        p->in_ready = 0;
        if (n > 0) {
            p->staged = (uint32_t)n;
            p->staged_off = 0;
            /* A full buffer: likely more, read before polling (a blocking one: never). */
            p->in_ready = (size_t)n == sizeof p->staging && !p->in_careful;
            return 1;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            p->in_eof = 1;
    }
    return 0;
}

static uint32_t copy_in(struct port *p, const struct vmrun_virtq_chain *chain)
{
    uint32_t copied = 0;
    for (uint32_t i = chain->readable; i < chain->readable + chain->writable && p->staged; i++) {
        uint32_t n = chain->iov[i].len < p->staged ? chain->iov[i].len : p->staged;
        memcpy(chain->iov[i].base, p->staging + p->staged_off, n);
        p->staged_off += n;
        p->staged -= n;
        copied += n;
    }
    return copied;
}

/* Give the port's input to the guest, a chain taken only once there are bytes for it (an
 * empty used buffer reads as end of file). -1 when the guest broke the queue. */
int vmrun_console_receive(struct vmrun_console *c, uint32_t index)
{
    struct port *p = &c->ports[index];
    uint32_t queue = rx_queue(index);
    struct vmrun_virtq_chain chain = {.capacity = VMRUN_CONSOLE_SEGMENTS, .iov = c->scratch};
    while (p->guest_open && (p->staged || fill_staging(p))) {
        int got = vmrun_virtq_pop(c->q[queue], &chain, VMRUN_VIRTQ_WRITABLE);
        if (got < 0)
            return -1;
        if (got == 0) {
            if (vmrun_virtq_notify(c->q[queue], 1))
                continue;
            break; /* the guest's next buffers notify */
        }
        uint32_t copied = copy_in(p, &chain);
        if (vmrun_console_give_back(c, queue, chain.head, copied) < 0)
            return -1;
        __atomic_fetch_add(&c->bytes_in, copied, __ATOMIC_RELAXED);
    }
    if (p->in_eof && !p->staged && !p->eof_told) {
        p->eof_told = 1;
        /* Linux blocks a port's writes while its host side is closed, and the protocol has
         * no half-close: only a port without output hears that its input ended (after its
         * last bytes, which are in the used ring already). */
        if (c->multiport && p->out_fd < 0) {
            p->host_open = 0;
            __atomic_fetch_or(&p->pending, SEND_OPEN, __ATOMIC_SEQ_CST);
        }
    }
    return 0;
}

/* ---- the ports as the host gives them ----------------------------------------------- */

static int is_socket(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* A pipe or device whose description blocks: console.py shares it only when it cannot be
 * opened anew (a virtio port takes one open at a time). Regular files never wait long. */
static int is_careful(int fd)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || S_ISREG(st.st_mode) || S_ISSOCK(st.st_mode))
        return 0;
    int flags = fcntl(fd, F_GETFL);
    return flags >= 0 && !(flags & O_NONBLOCK);
}

int vmrun_console_set_up_ports(struct vmrun_console *c, const struct vmrun_console_port *ports)
{
    for (uint32_t i = 0; i < c->port_count; i++) {
        const struct vmrun_console_port *spec = &ports[i];
        struct port *p = &c->ports[i];
        if (spec->name_len > VMRUN_CONSOLE_NAME_MAX || (spec->name_len && !spec->name))
            return -1;
        p->in_fd = spec->input_fd < 0 ? -1 : spec->input_fd;
        p->out_fd = spec->output_fd < 0 ? -1 : spec->output_fd;
        p->in_socket = (uint8_t)is_socket(p->in_fd);
        p->out_socket = (uint8_t)is_socket(p->out_fd);
        p->in_careful = (uint8_t)is_careful(p->in_fd);
        p->out_careful = (uint8_t)is_careful(p->out_fd);
        p->console = spec->console != 0;
        p->name_len = spec->name_len;
        if (spec->name_len)
            memcpy(p->name, spec->name, spec->name_len);
        if (spec->has_size)
            p->size = HAS_SIZE | (uint64_t)spec->rows << 16 | spec->cols;
        p->guest_open = !c->multiport; /* a single port is open from DRIVER_OK on */
        p->host_open = 1;
        p->tx = (struct vmrun_virtq_chain){.capacity = VMRUN_CONSOLE_SEGMENTS, .iov = p->tx_iov};
    }
    return 0;
}
