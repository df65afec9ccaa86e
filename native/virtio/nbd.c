/* The NBD client: see nbd.h. Protocol facts from the NBD protocol document (doc/proto.md of
 * the NBD project): every number on the wire is big-endian. */
#include "nbd.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Handshake. */
#define NBDMAGIC 0x4e42444d41474943ULL  /* "NBDMAGIC" */
#define IHAVEOPT 0x49484156454f5054ULL  /* "IHAVEOPT": newstyle (oldstyle sends another) */
#define OPTION_REPLY_MAGIC 0x0003e889045565a9ULL
#define FLAG_FIXED_NEWSTYLE 1u          /* server's handshake flags */
#define FLAG_NO_ZEROES 2u
#define FLAG_C_FIXED_NEWSTYLE 1u        /* client's flags */
#define FLAG_C_NO_ZEROES 2u
#define OPT_ABORT 2u
#define OPT_GO 7u
#define REP_ACK 1u
#define REP_INFO 3u
#define REP_FLAG_ERROR 0x80000000u
#define REP_ERR_UNSUP (REP_FLAG_ERROR | 1)
#define REP_ERR_POLICY (REP_FLAG_ERROR | 2)
#define REP_ERR_INVALID (REP_FLAG_ERROR | 3)
#define REP_ERR_PLATFORM (REP_FLAG_ERROR | 4)
#define REP_ERR_TLS_REQD (REP_FLAG_ERROR | 5)
#define REP_ERR_UNKNOWN (REP_FLAG_ERROR | 6)
#define REP_ERR_SHUTDOWN (REP_FLAG_ERROR | 7)
#define REP_ERR_BLOCK_SIZE_REQD (REP_FLAG_ERROR | 8)
#define REP_ERR_TOO_BIG (REP_FLAG_ERROR | 9)
#define INFO_EXPORT 0u
#define INFO_BLOCK_SIZE 3u
/* An option reply longer than this is no reply QEMU sends: the handshake is off the rails. */
#define OPTION_REPLY_LIMIT 65536u
/* The protocol's longest export name. */
#define EXPORT_NAME_LIMIT 4096u

/* Transmission. */
#define REQUEST_MAGIC 0x25609513u
#define SIMPLE_REPLY_MAGIC 0x67446698u
#define CMD_READ 0u
#define CMD_WRITE 1u
#define CMD_DISC 2u
#define CMD_FLUSH 3u
#define CMD_TRIM 4u
#define CMD_WRITE_ZEROES 6u
#define CMD_FLAG_FUA 1u
#define CMD_FLAG_NO_HOLE 2u
/* TRIM / WRITE_ZEROES pieces: under the 32-bit length, a multiple of 1 MiB. */
#define MAX_EXTENT 0xfff00000u

/* The protocol's error values (its own numbering, equal to Linux's on x86 but mapped
 * anyway). */
#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP 95u
#define NBD_ESHUTDOWN 108u

/* iovecs handed to one sendmsg/recvmsg: below IOV_MAX, and a partial transfer just loops. */
#define BATCH 64

struct vmrun_nbd {
    int fd;
    int broken;                 /* the stream is lost: every call fails with -EIO */
    uint64_t size;
    uint16_t flags;
    uint32_t min_block;
    uint32_t preferred_block;
    uint32_t max_payload;
    uint64_t next_cookie;
};

/* ---- byte streams over iovecs ----------------------------------------------------------- */

/* A read position in an iovec array. */
struct cursor {
    const struct iovec *iov;
    int count;
    int index;
    size_t skip;                /* bytes of iov[index] already used */
};

/* Up to BATCH iovecs for the next `want` bytes (or fewer if the array ends), without moving. */
static int cursor_batch(const struct cursor *cur, size_t want, struct iovec *out, int room)
{
    int n = 0;
    size_t skip = cur->skip;
    for (int i = cur->index; i < cur->count && want && n < room; i++, skip = 0) {
        size_t len = cur->iov[i].iov_len - skip;
        if (!len)
            continue;
        if (len > want)
            len = want;
        out[n].iov_base = (uint8_t *)cur->iov[i].iov_base + skip;
        out[n].iov_len = len;
        n++;
        want -= len;
    }
    return n;
}

static void cursor_advance(struct cursor *cur, size_t n)
{
    while (n && cur->index < cur->count) {
        size_t len = cur->iov[cur->index].iov_len - cur->skip;
        if (n < len) {
            cur->skip += n;
            return;
        }
        n -= len;
        cur->index++;
        cur->skip = 0;
    }
}

/* Send `len` bytes from the cursor, all of them: 0, or -EIO (the peer is gone). */
static int send_all(int fd, struct cursor *cur, size_t len)
{
    while (len) {
        struct iovec batch[BATCH];
        struct msghdr msg = {.msg_iov = batch};
        msg.msg_iovlen = (size_t)cursor_batch(cur, len, batch, BATCH);
        if (!msg.msg_iovlen)
            return -EIO; /* the caller's arrays are shorter than their own total: a bug */
        /* MSG_NOSIGNAL: a dead server is an EPIPE here, not a SIGPIPE that kills vmrun. */
        ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return -EIO;
        }
        cursor_advance(cur, (size_t)sent);
        len -= (size_t)sent;
    }
    return 0;
}

/* Receive exactly `len` bytes into the cursor: 0, or -EIO (error or EOF). */
static int recv_all(int fd, struct cursor *cur, size_t len)
{
    while (len) {
        struct iovec batch[BATCH];
        struct msghdr msg = {.msg_iov = batch};
        msg.msg_iovlen = (size_t)cursor_batch(cur, len, batch, BATCH);
        if (!msg.msg_iovlen)
            return -EIO;
        ssize_t got = recvmsg(fd, &msg, MSG_WAITALL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -EIO;
        }
        if (got == 0)
            return -EIO; /* the server hung up */
        cursor_advance(cur, (size_t)got);
        len -= (size_t)got;
    }
    return 0;
}

static int send_buf(int fd, const void *buf, size_t len)
{
    struct iovec one = {(void *)buf, len};
    struct cursor cur = {&one, 1, 0, 0};
    return send_all(fd, &cur, len);
}

static int recv_buf(int fd, void *buf, size_t len)
{
    struct iovec one = {buf, len};
    struct cursor cur = {&one, 1, 0, 0};
    return recv_all(fd, &cur, len);
}

static void put16(uint8_t *p, uint16_t v) { v = htobe16(v); memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { v = htobe32(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { v = htobe64(v); memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return be16toh(v); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return be32toh(v); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return be64toh(v); }

/* ---- connecting ------------------------------------------------------------------------- */

/* connect(2) on a blocking socket; interrupted by a signal, it goes on in the background and
 * is waited for (poll, then SO_ERROR). 0 or -errno. */
static int connect_unix(int fd, const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    memcpy(addr.sun_path, path, len + 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
        return 0;
    if (errno != EINTR)
        return -errno;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int ready = poll(&p, 1, -1);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            return -errno;
        int error = 0;
        socklen_t size = sizeof(error);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) < 0)
            return -errno;
        return -error;
    }
}

static int option_error(uint32_t type)
{
    switch (type) {
    case REP_ERR_UNKNOWN:
        return ENOENT; /* no such export */
    case REP_ERR_POLICY:
    case REP_ERR_TLS_REQD:
        return EACCES;
    case REP_ERR_UNSUP:
    case REP_ERR_PLATFORM:
        return EOPNOTSUPP;
    case REP_ERR_SHUTDOWN:
        return ESHUTDOWN;
    case REP_ERR_TOO_BIG:
        return E2BIG;
    case REP_ERR_INVALID:
    case REP_ERR_BLOCK_SIZE_REQD:
        return EINVAL;
    default:
        return EPROTO;
    }
}

/* One NBD_INFO_* payload of NBD_REP_INFO. */
static int take_info(struct vmrun_nbd *c, const uint8_t *data, uint32_t len, int *have_export)
{
    if (len < 2)
        return EPROTO;
    switch (get16(data)) {
    case INFO_EXPORT:
        if (len != 12)
            return EPROTO;
        c->size = get64(data + 2);
        c->flags = get16(data + 10);
        *have_export = 1;
        return 0;
    case INFO_BLOCK_SIZE:
        if (len != 14)
            return EPROTO;
        c->min_block = get32(data + 2);
        c->preferred_block = get32(data + 6);
        uint32_t maximum = get32(data + 10);
        if (maximum && maximum < c->max_payload)
            c->max_payload = maximum;
        return 0;
    default:
        return 0; /* a name or description: not needed */
    }
}

/* The handshake up to NBD_REP_ACK of NBD_OPT_GO: 0 or a positive errno. */
static int handshake(struct vmrun_nbd *c, const char *export_name)
{
    uint8_t hello[18];
    if (recv_buf(c->fd, hello, sizeof(hello)) < 0)
        return EIO;
    if (get64(hello) != NBDMAGIC || get64(hello + 8) != IHAVEOPT)
        return EPROTO; /* not NBD, or oldstyle */
    uint16_t server_flags = get16(hello + 16);
    if (!(server_flags & FLAG_FIXED_NEWSTYLE))
        return EPROTO;
    uint8_t client_flags[4];
    put32(client_flags, FLAG_C_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES ? FLAG_C_NO_ZEROES : 0));
    if (send_buf(c->fd, client_flags, sizeof(client_flags)) < 0)
        return EIO;

    /* NBD_OPT_GO with no information requests: the server sends NBD_INFO_EXPORT anyway.
     * Not asking for NBD_INFO_BLOCK_SIZE leaves the server free of alignment promises on
     * our side (QEMU enforces its minimum only on clients that asked). */
    size_t name_len = strlen(export_name);
    if (name_len > EXPORT_NAME_LIMIT)
        return ENAMETOOLONG;
    uint8_t head[20];
    put64(head, IHAVEOPT);
    put32(head + 8, OPT_GO);
    put32(head + 12, (uint32_t)(4 + name_len + 2));
    put32(head + 16, (uint32_t)name_len);
    uint8_t no_requests[2] = {0, 0};
    struct iovec option[3] = {
        {head, sizeof(head)}, {(void *)export_name, name_len}, {no_requests, 2}};
    struct cursor cur = {option, 3, 0, 0};
    if (send_all(c->fd, &cur, sizeof(head) + name_len + 2) < 0)
        return EIO;

    int have_export = 0;
    uint8_t *payload = malloc(OPTION_REPLY_LIMIT);
    if (!payload)
        return ENOMEM;
    int error = 0;
    for (;;) {
        uint8_t reply[20];
        if (recv_buf(c->fd, reply, sizeof(reply)) < 0) {
            error = EIO;
            break;
        }
        uint32_t type = get32(reply + 12), len = get32(reply + 16);
        if (get64(reply) != OPTION_REPLY_MAGIC || get32(reply + 8) != OPT_GO ||
            len > OPTION_REPLY_LIMIT) {
            error = EPROTO;
            break;
        }
        if (recv_buf(c->fd, payload, len) < 0) {
            error = EIO;
            break;
        }
        if (type & REP_FLAG_ERROR) {
            error = option_error(type);
            /* Ending the handshake as the protocol asks: the server then leaves no complaint
             * about a client that vanished in its log. Its acknowledgement is not awaited. */
            uint8_t abort_option[16];
            put64(abort_option, IHAVEOPT);
            put32(abort_option + 8, OPT_ABORT);
            put32(abort_option + 12, 0);
            (void)send_buf(c->fd, abort_option, sizeof(abort_option));
            break;
        }
        if (type == REP_INFO) {
            error = take_info(c, payload, len, &have_export);
            if (error)
                break;
            continue;
        }
        if (type == REP_ACK && have_export && (c->flags & VMRUN_NBD_FLAG_HAS_FLAGS))
            break; /* transmission begins */
        error = EPROTO;
        break;
    }
    free(payload);
    return error;
}

struct vmrun_nbd *vmrun_nbd_connect(const char *socket_path, const char *export_name,
                                    uint64_t *size, uint16_t *flags)
{
    struct vmrun_nbd *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->max_payload = VMRUN_NBD_MAX_PAYLOAD;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int error = c->fd < 0 ? errno : -connect_unix(c->fd, socket_path);
    if (!error)
        error = handshake(c, export_name);
    if (error) {
        if (c->fd >= 0)
            close(c->fd);
        free(c);
        errno = error;
        return NULL;
    }
    *size = c->size;
    *flags = c->flags;
    return c;
}

void vmrun_nbd_block_sizes(const struct vmrun_nbd *c, uint32_t *minimum, uint32_t *preferred,
                           uint32_t *max_payload)
{
    *minimum = c->min_block;
    *preferred = c->preferred_block;
    *max_payload = c->max_payload;
}

/* ---- transmission ------------------------------------------------------------------------ */

static int reply_error(uint32_t error)
{
    switch (error) {
    case NBD_EPERM:
        return -EPERM;
    case NBD_EIO:
        return -EIO;
    case NBD_ENOMEM:
        return -ENOMEM;
    case NBD_EINVAL:
        return -EINVAL;
    case NBD_ENOSPC:
        return -ENOSPC;
    case NBD_EOVERFLOW:
        return -EOVERFLOW;
    case NBD_ENOTSUP:
        return -EOPNOTSUPP;
    case NBD_ESHUTDOWN:
        return -ESHUTDOWN;
    default:
        return -EIO;
    }
}

static int broken(struct vmrun_nbd *c)
{
    c->broken = 1;
    return -EIO;
}

/* One request and its simple reply. A write's payload comes from `data` (`len` bytes), a
 * read's reply goes into it. 0 or -errno; a lost stream marks the connection broken. */
static int request(struct vmrun_nbd *c, uint16_t type, uint16_t cmd_flags, uint64_t offset,
                   uint32_t len, struct cursor *data)
{
    if (c->broken)
        return -EIO;
    uint64_t cookie = c->next_cookie++;
    uint8_t head[28];
    put32(head, REQUEST_MAGIC);
    put16(head + 4, cmd_flags);
    put16(head + 6, type);
    put64(head + 8, cookie);
    put64(head + 16, offset);
    put32(head + 24, len);
    if (send_buf(c->fd, head, sizeof(head)) < 0)
        return broken(c);
    if (type == CMD_WRITE && send_all(c->fd, data, len) < 0)
        return broken(c);

    uint8_t reply[16];
    if (recv_buf(c->fd, reply, sizeof(reply)) < 0)
        return broken(c);
    if (get32(reply) != SIMPLE_REPLY_MAGIC || get64(reply + 8) != cookie)
        return broken(c); /* out of step with the server: nothing after this can be trusted */
    uint32_t error = get32(reply + 4);
    if (error)
        return reply_error(error); /* a simple reply with an error carries no data */
    if (type == CMD_READ && recv_all(c->fd, data, len) < 0)
        return broken(c);
    return 0;
}

static int total_length(const struct iovec *iov, int iovcnt, uint64_t *total)
{
    if (iovcnt < 0 || (iovcnt && !iov))
        return -EINVAL;
    uint64_t sum = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > UINT64_MAX - sum)
            return -EINVAL;
        sum += iov[i].iov_len;
    }
    *total = sum;
    return 0;
}

static int in_range(const struct vmrun_nbd *c, uint64_t offset, uint64_t length)
{
    return offset <= c->size && length <= c->size - offset;
}

/* A read or write of the iovecs, in pieces of at most max_payload. */
static int transfer(struct vmrun_nbd *c, uint16_t type, uint16_t cmd_flags,
                    const struct iovec *iov, int iovcnt, uint64_t offset)
{
    if (c->broken)
        return -EIO;
    uint64_t left;
    int error = total_length(iov, iovcnt, &left);
    if (error)
        return error;
    if (!in_range(c, offset, left))
        return type == CMD_WRITE ? -ENOSPC : -EINVAL;
    struct cursor cur = {iov, iovcnt, 0, 0};
    while (left) {
        uint32_t piece = left < c->max_payload ? (uint32_t)left : c->max_payload;
        error = request(c, type, cmd_flags, offset, piece, &cur);
        if (error)
            return error;
        offset += piece;
        left -= piece;
    }
    return 0;
}

int vmrun_nbd_read(struct vmrun_nbd *c, const struct iovec *iov, int iovcnt, uint64_t offset)
{
    return transfer(c, CMD_READ, 0, iov, iovcnt, offset);
}

int vmrun_nbd_flush(struct vmrun_nbd *c)
{
    if (c->broken)
        return -EIO;
    if (!(c->flags & VMRUN_NBD_FLAG_SEND_FLUSH))
        return 0; /* the server has no write cache to flush */
    return request(c, CMD_FLUSH, 0, 0, 0, NULL);
}

int vmrun_nbd_write(struct vmrun_nbd *c, const struct iovec *iov, int iovcnt, uint64_t offset,
                    int fua)
{
    if (c->broken)
        return -EIO;
    if (c->flags & VMRUN_NBD_FLAG_READ_ONLY)
        return -EPERM;
    int native_fua = fua && (c->flags & VMRUN_NBD_FLAG_SEND_FUA);
    int error = transfer(c, CMD_WRITE, native_fua ? CMD_FLAG_FUA : 0, iov, iovcnt, offset);
    if (!error && fua && !native_fua)
        error = vmrun_nbd_flush(c);
    return error;
}

/* TRIM or WRITE_ZEROES over a range, in pieces of at most MAX_EXTENT. */
static int extent(struct vmrun_nbd *c, uint16_t type, uint16_t cmd_flags, uint16_t needs,
                  uint64_t offset, uint64_t length)
{
    if (c->broken)
        return -EIO;
    if (c->flags & VMRUN_NBD_FLAG_READ_ONLY)
        return -EPERM;
    if (!(c->flags & needs))
        return -EOPNOTSUPP;
    if (!in_range(c, offset, length))
        return type == CMD_WRITE_ZEROES ? -ENOSPC : -EINVAL;
    while (length) {
        uint32_t piece = length < MAX_EXTENT ? (uint32_t)length : MAX_EXTENT;
        int error = request(c, type, cmd_flags, offset, piece, NULL);
        if (error)
            return error;
        offset += piece;
        length -= piece;
    }
    return 0;
}

int vmrun_nbd_trim(struct vmrun_nbd *c, uint64_t offset, uint64_t length)
{
    return extent(c, CMD_TRIM, 0, VMRUN_NBD_FLAG_SEND_TRIM, offset, length);
}

int vmrun_nbd_write_zeroes(struct vmrun_nbd *c, uint64_t offset, uint64_t length, int may_trim)
{
    return extent(c, CMD_WRITE_ZEROES, may_trim ? 0 : CMD_FLAG_NO_HOLE,
                  VMRUN_NBD_FLAG_SEND_WRITE_ZEROES, offset, length);
}

void vmrun_nbd_close(struct vmrun_nbd *c)
{
    if (!c)
        return;
    if (!c->broken) {
        /* NBD_CMD_DISC has no reply: the server finishes what it has, then closes. */
        uint8_t head[28];
        put32(head, REQUEST_MAGIC);
        put16(head + 4, 0);
        put16(head + 6, CMD_DISC);
        put64(head + 8, c->next_cookie);
        put64(head + 16, 0);
        put32(head + 24, 0);
        (void)send_buf(c->fd, head, sizeof(head));
    }
    close(c->fd);
    free(c);
}
