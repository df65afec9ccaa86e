/* The NBD kind of virtio-blk disk (blk_disk.h): sectors served by an NBD server, in vmrun
 * qemu-storage-daemon exporting a qcow2 image (runner/devices/virtio/disk_export.py). Each
 * worker thread's channel is a connection of its own (nbd.h: one thread per connection), so
 * requests run concurrently as they do on a file. */
#include "blk_disk.h"
#include "nbd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { ZEROES_BYTES = 1 << 20 }; /* written at a time where the server cannot zero a range */

struct nbd_disk {
    char *socket_path;
    char *export_name;
    uint16_t flags; /* the export's transmission flags, from the first connection */
};

struct nbd_channel {
    struct vmrun_nbd *connection;
    uint8_t *zeroes; /* allocated on first need */
};

static struct nbd_disk *nbd_of(struct vmrun_blk_disk *disk)
{
    return disk->state;
}

static int nbd_channel_open(struct vmrun_blk_disk *disk, void **channel)
{
    struct nbd_disk *nbd = nbd_of(disk);
    struct nbd_channel *ch = calloc(1, sizeof *ch);
    if (!ch)
        return -ENOMEM;
    uint64_t size;
    uint16_t flags;
    ch->connection = vmrun_nbd_connect(nbd->socket_path, nbd->export_name, &size, &flags);
    if (!ch->connection) {
        int error = errno ? -errno : -EIO;
        free(ch);
        return error;
    }
    *channel = ch;
    return 0;
}

static void nbd_channel_close(struct vmrun_blk_disk *disk, void *channel)
{
    (void)disk;
    struct nbd_channel *ch = channel;
    if (!ch)
        return;
    vmrun_nbd_close(ch->connection);
    free(ch->zeroes);
    free(ch);
}

static struct vmrun_nbd *connection(void *channel)
{
    return ((struct nbd_channel *)channel)->connection;
}

static int nbd_read(struct vmrun_blk_disk *disk, void *channel, const struct iovec *iov, int count,
                    uint64_t offset)
{
    (void)disk;
    return vmrun_nbd_read(connection(channel), iov, count, offset);
}

static int nbd_write(struct vmrun_blk_disk *disk, void *channel, const struct iovec *iov,
                     int count, uint64_t offset)
{
    (void)disk;
    return vmrun_nbd_write(connection(channel), iov, count, offset, 0);
}

/* The server syncs its image (qemu-storage-daemon: the qcow2 metadata and the file); data
 * only or all is the same request over NBD. */
static int nbd_flush(struct vmrun_blk_disk *disk, void *channel, int what)
{
    (void)disk;
    (void)what;
    return vmrun_nbd_flush(connection(channel));
}

static int nbd_discard(struct vmrun_blk_disk *disk, void *channel, uint64_t offset,
                       uint64_t length)
{
    (void)disk;
    int error = vmrun_nbd_trim(connection(channel), offset, length);
    return error == -EOPNOTSUPP ? 0 : error; /* a discard is a hint (blk_disk.h) */
}

static int nbd_write_zeroes(struct vmrun_blk_disk *disk, void *channel, uint64_t offset,
                            uint64_t length, int may_unmap)
{
    (void)disk;
    struct nbd_channel *ch = channel;
    int error = vmrun_nbd_write_zeroes(ch->connection, offset, length, may_unmap);
    if (error != -EOPNOTSUPP)
        return error;
    if (!ch->zeroes && !(ch->zeroes = calloc(1, ZEROES_BYTES)))
        return -ENOMEM;
    while (length) {
        size_t piece = length < ZEROES_BYTES ? (size_t)length : ZEROES_BYTES;
        struct iovec iov = {.iov_base = ch->zeroes, .iov_len = piece};
        if ((error = vmrun_nbd_write(ch->connection, &iov, 1, offset, 0)))
            return error;
        offset += piece;
        length -= piece;
    }
    return 0;
}

static void nbd_close(struct vmrun_blk_disk *disk)
{
    struct nbd_disk *nbd = nbd_of(disk);
    if (!nbd)
        return;
    free(nbd->socket_path);
    free(nbd->export_name);
    free(nbd);
}

static const struct vmrun_blk_disk_ops nbd_ops = {
    .kind = "nbd",
    .channel_open = nbd_channel_open,
    .channel_close = nbd_channel_close,
    .read = nbd_read,
    .write = nbd_write,
    .flush = nbd_flush,
    .discard = nbd_discard,
    .write_zeroes = nbd_write_zeroes,
    .close = nbd_close,
};

struct vmrun_blk_disk *vmrun_blk_disk_open_nbd(const char *socket_path, const char *export_name)
{
    struct vmrun_blk_disk *disk = calloc(1, sizeof *disk);
    struct nbd_disk *nbd = calloc(1, sizeof *nbd);
    if (!disk || !nbd)
        goto fail;
    nbd->socket_path = strdup(socket_path);
    nbd->export_name = strdup(export_name);
    if (!nbd->socket_path || !nbd->export_name)
        goto fail;
    /* A first connection learns the size and what the export offers; workers open their own. */
    uint64_t size;
    struct vmrun_nbd *probe = vmrun_nbd_connect(socket_path, export_name, &size, &nbd->flags);
    if (!probe)
        goto fail;
    /* Discards aligned to what the server prefers (a qcow2 cluster) free whole clusters. */
    uint32_t minimum, preferred, max_payload;
    vmrun_nbd_block_sizes(probe, &minimum, &preferred, &max_payload);
    vmrun_nbd_close(probe);
    *disk = (struct vmrun_blk_disk){
        .ops = &nbd_ops,
        .size = size / VMRUN_BLK_SECTOR * VMRUN_BLK_SECTOR,
        .block_size = VMRUN_BLK_SECTOR,
        .discard_alignment = preferred > VMRUN_BLK_SECTOR ? preferred / VMRUN_BLK_SECTOR : 1,
        .state = nbd,
    };
    return disk;
fail:;
    int error = errno ? errno : ENOMEM;
    if (nbd) {
        free(nbd->socket_path);
        free(nbd->export_name);
    }
    free(nbd);
    free(disk);
    errno = error;
    return NULL;
}
