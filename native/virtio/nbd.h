/* A synchronous NBD client over a unix socket, for disks that qemu-storage-daemon exports
 * (runner/devices/virtio/disk_export.py starts it).
 *
 * Read twice like virtqueue.h: by the compiler and, less its `#` lines, by cffi.
 *
 * The protocol is NBD's "fixed newstyle" handshake with NBD_OPT_GO, then simple replies only
 * (no structured replies are negotiated), one request in flight at a time. A connection
 * belongs to one thread at a time: the block device opens one per worker thread. The socket
 * is blocking and never times out: the server is vmrun's own child, and a server that dies
 * closes its end, which every call sees at once (EOF or EPIPE).
 *
 * Who owns what: the iovecs and their buffers are the caller's, used only during the call;
 * a read's data goes straight from the socket into them.
 */
#ifndef VMRUN_NBD_H
#define VMRUN_NBD_H

#include <stdint.h>
#include <sys/uio.h>

/* Transmission flags (the protocol's NBD_FLAG_*), as vmrun_nbd_connect reports them. */
enum vmrun_nbd_flag {
    VMRUN_NBD_FLAG_HAS_FLAGS = 1,
    VMRUN_NBD_FLAG_READ_ONLY = 2,
    VMRUN_NBD_FLAG_SEND_FLUSH = 4,
    VMRUN_NBD_FLAG_SEND_FUA = 8,
    VMRUN_NBD_FLAG_ROTATIONAL = 16,
    VMRUN_NBD_FLAG_SEND_TRIM = 32,
    VMRUN_NBD_FLAG_SEND_WRITE_ZEROES = 64,
    VMRUN_NBD_FLAG_CAN_MULTI_CONN = 256,
};

enum {
    /* The largest read or write payload sent in one request: the protocol's advice to
     * clients (2^25), lowered further when the server advertises a smaller maximum. */
    VMRUN_NBD_MAX_PAYLOAD = 33554432,
};

struct vmrun_nbd;

/* Connect to the unix socket `socket_path`, negotiate export `export_name` (NBD_OPT_GO);
 * on success *size (bytes) and *flags (transmission flags) are set. NULL + errno: the
 * socket's own errno (ENOENT, ECONNREFUSED ...), ENAMETOOLONG for a path that does not fit
 * a unix address, ENOENT for an export the server does not have, EACCES for one it refuses,
 * EPROTO for a server that does not speak the protocol as expected, EIO for one that hung
 * up during the handshake. */
struct vmrun_nbd *vmrun_nbd_connect(const char *socket_path, const char *export_name,
                                    uint64_t *size, uint16_t *flags);

/* Each returns 0 or a negative errno: the server's error (EIO, EPERM, EINVAL, ENOSPC,
 * ENOMEM, EOVERFLOW, EOPNOTSUPP, ESHUTDOWN), or -EIO for a broken connection, after which
 * every call fails at once with -EIO. Checked locally, without asking the server: a range
 * past the export's end (-EINVAL; -ENOSPC for writes), a write to a read-only export
 * (-EPERM), TRIM or WRITE_ZEROES that the export does not offer (-EOPNOTSUPP: the caller
 * falls back). FLUSH on an export without it is a no-op; FUA without the server's FUA is a
 * write then a flush. Reads and writes longer than the payload maximum, TRIM and
 * WRITE_ZEROES longer than 4 GiB less 1 MiB (the protocol's lengths are 32-bit; split points
 * stay aligned to 1 MiB, whole clusters) are split, in order; a split request that fails part-way may have done its first parts. */
int vmrun_nbd_read(struct vmrun_nbd *c, const struct iovec *iov, int iovcnt, uint64_t offset);
int vmrun_nbd_write(struct vmrun_nbd *c, const struct iovec *iov, int iovcnt, uint64_t offset,
                    int fua);
int vmrun_nbd_flush(struct vmrun_nbd *c);
int vmrun_nbd_trim(struct vmrun_nbd *c, uint64_t offset, uint64_t length);
/* `may_trim`: the server may free the range instead of writing zeroes (no NBD_CMD_FLAG_NO_HOLE). */
int vmrun_nbd_write_zeroes(struct vmrun_nbd *c, uint64_t offset, uint64_t length, int may_trim);

/* The server's block size constraints (NBD_INFO_BLOCK_SIZE), 0 where it sent none, and the
 * largest read/write payload this client sends in one request. vmrun does not ask for the
 * constraints, so the server must accept any alignment (QEMU's does, itself reading and
 * writing around unaligned ends); the minimum and preferred sizes are hints. */
void vmrun_nbd_block_sizes(const struct vmrun_nbd *c, uint32_t *minimum, uint32_t *preferred,
                           uint32_t *max_payload);

/* NBD_CMD_DISC, then close. Safe on NULL. */
void vmrun_nbd_close(struct vmrun_nbd *c);

#endif /* VMRUN_NBD_H */
