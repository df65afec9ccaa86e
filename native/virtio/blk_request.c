/* One virtio-blk request (virtio 1.2, 5.2.6): parsed completely, then executed on the disk.
 *
 * A chain is: a 16-byte header the device reads { le32 type; le32 reserved; le64 sector; },
 * the data (read by the device for OUT, DISCARD and WRITE_ZEROES; written for IN and GET_ID),
 * and the status byte, the last byte of the chain's last writable buffer. The driver may split
 * any of these over buffers as it likes, so everything here is counted in bytes of the
 * chain's readable and writable parts, never in descriptors.
 *
 * What is checked here (the engine has checked that every buffer lies in guest RAM, or marked
 * it outside RAM): the header's length, the layout for the type, data a multiple of 512,
 * every byte of the range inside the disk, the bounds the config space announces, a write to
 * a read-only disk. Any of these answers IOERR (UNSUPP for an unknown type or flag) with
 * nothing done on the disk, and the device goes on.
 */
#include "blk_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

enum {
    HEADER_BYTES = 16,
    SEGMENT_BYTES = 16, /* struct virtio_blk_discard_write_zeroes */
    /* Data moved per disk call, and discard/zeroes bytes per call: a stop is answered within
     * one piece, however large the request. */
    IO_PIECE = 1 << 20,
    RANGE_PIECE = 16 << 20,
};

struct segment {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

/* A run of bytes of the chain: [skip, skip + length) of buffers iov[first .. first + count). */
struct span {
    const struct vmrun_iovec *iov;
    uint32_t count;
    uint64_t skip;
    uint64_t length;
};

/* The iovecs of `length` bytes of `span` from byte `offset` of it; their count, or -1 when
 * more than `max` would be needed or one is larger than `max_len`. */
static int slice(const struct span *span, uint64_t offset, uint64_t length, struct iovec *out,
                 int max, uint64_t max_len)
{
    uint64_t skip = span->skip + offset;
    int n = 0;
    for (uint32_t i = 0; i < span->count && length; i++) {
        if (skip >= span->iov[i].len) {
            skip -= span->iov[i].len;
            continue;
        }
        uint64_t part = span->iov[i].len - skip;
        if (part > length)
            part = length;
        if (n == max || part > max_len)
            return -1;
        out[n].iov_base = span->iov[i].base + skip;
        out[n].iov_len = (size_t)part;
        n++;
        length -= part;
        skip = 0;
    }
    return n;
}

/* Copy `length` bytes of `span` (from its start) out of guest memory into `to`: one fetch. */
static void gather(const struct span *span, uint8_t *to, uint64_t length)
{
    struct iovec iov[VMRUN_BLK_CHAIN_CAPACITY];
    int n = slice(span, 0, length, iov, VMRUN_BLK_CHAIN_CAPACITY, UINT64_MAX);
    for (int i = 0; i < n; i++) {
        memcpy(to, iov[i].iov_base, iov[i].iov_len);
        to += iov[i].iov_len;
    }
}

static void scatter(const struct span *span, const uint8_t *from, uint64_t length)
{
    struct iovec iov[VMRUN_BLK_CHAIN_CAPACITY];
    int n = slice(span, 0, length, iov, VMRUN_BLK_CHAIN_CAPACITY, UINT64_MAX);
    for (int i = 0; i < n; i++) {
        memcpy(iov[i].iov_base, from, iov[i].iov_len);
        from += iov[i].iov_len;
    }
}

static int stopping(struct blk_device *device)
{
    return __atomic_load_n(&device->stopping, __ATOMIC_RELAXED);
}

/* Every byte of [sector, sector + sectors) inside the disk (no overflow for any u64). */
static int inside(const struct blk_device *device, uint64_t sector, uint64_t sectors)
{
    uint64_t capacity = device->disk->size / VMRUN_BLK_SECTOR;
    return sector <= capacity && sectors <= capacity - sector;
}

/* Data in or out: its buffers no more or larger than announced, then IO_PIECE at a time.
 * A status, or -1 for abandoned. */
static int transfer(struct blk_device *device, void *channel, const struct span *data,
                    uint64_t sector, int writing)
{
    if (data->length % VMRUN_BLK_SECTOR ||
        !inside(device, sector, data->length / VMRUN_BLK_SECTOR))
        return VMRUN_BLK_S_IOERR;
    struct iovec iov[VMRUN_BLK_CHAIN_CAPACITY];
    if (slice(data, 0, data->length, iov, VMRUN_BLK_SEG_MAX, VMRUN_BLK_SIZE_MAX) < 0)
        return VMRUN_BLK_S_IOERR;
    struct vmrun_blk_disk *disk = device->disk;
    uint64_t offset = sector * VMRUN_BLK_SECTOR;
    for (uint64_t done = 0; done < data->length; done += IO_PIECE) {
        if (stopping(device))
            return -1;
        uint64_t piece = data->length - done < IO_PIECE ? data->length - done : IO_PIECE;
        int n = slice(data, done, piece, iov, VMRUN_BLK_CHAIN_CAPACITY, UINT64_MAX);
        int error = writing ? disk->ops->write(disk, channel, iov, n, offset + done)
                            : disk->ops->read(disk, channel, iov, n, offset + done);
        if (error)
            return VMRUN_BLK_S_IOERR;
    }
    return VMRUN_BLK_S_OK;
}

static int flush(struct blk_device *device, void *channel)
{
    if (device->flush == VMRUN_BLK_FLUSH_NOTHING)
        return VMRUN_BLK_S_OK;
    struct vmrun_blk_disk *disk = device->disk;
    if (disk->ops->flush(disk, channel, device->flush))
        return VMRUN_BLK_S_IOERR;
    __atomic_fetch_add(&disk->syncs, 1, __ATOMIC_RELAXED);
    return VMRUN_BLK_S_OK;
}

/* DISCARD or WRITE_ZEROES: every segment read once and checked, then each range done
 * RANGE_PIECE at a time. A status, or -1 for abandoned. */
static int ranges(struct blk_device *device, void *channel, const struct span *data, int type)
{
    int zeroes = type == VMRUN_BLK_T_WRITE_ZEROES;
    uint32_t max_seg = zeroes ? VMRUN_BLK_MAX_WRITE_ZEROES_SEG : VMRUN_BLK_MAX_DISCARD_SEG;
    uint32_t max_sectors = zeroes ? VMRUN_BLK_MAX_WRITE_ZEROES_SECTORS
                                  : VMRUN_BLK_MAX_DISCARD_SECTORS;
    if (data->length == 0 || data->length % SEGMENT_BYTES ||
        data->length / SEGMENT_BYTES > max_seg)
        return VMRUN_BLK_S_IOERR;
    uint8_t raw[VMRUN_BLK_MAX_DISCARD_SEG > VMRUN_BLK_MAX_WRITE_ZEROES_SEG
                    ? VMRUN_BLK_MAX_DISCARD_SEG * SEGMENT_BYTES
                    : VMRUN_BLK_MAX_WRITE_ZEROES_SEG * SEGMENT_BYTES];
    gather(data, raw, data->length);
    uint32_t count = (uint32_t)(data->length / SEGMENT_BYTES);
    struct segment segments[VMRUN_BLK_MAX_DISCARD_SEG > VMRUN_BLK_MAX_WRITE_ZEROES_SEG
                                ? VMRUN_BLK_MAX_DISCARD_SEG
                                : VMRUN_BLK_MAX_WRITE_ZEROES_SEG];
    uint32_t known = zeroes ? VMRUN_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
    for (uint32_t i = 0; i < count; i++) {
        struct segment *s = &segments[i];
        memcpy(&s->sector, raw + i * SEGMENT_BYTES, 8);
        memcpy(&s->num_sectors, raw + i * SEGMENT_BYTES + 8, 4);
        memcpy(&s->flags, raw + i * SEGMENT_BYTES + 12, 4);
        /* 5.2.6.2: an unknown flag, or unmap on a discard, is UNSUPP. */
        if (s->flags & ~known)
            return VMRUN_BLK_S_UNSUPP;
        if (s->num_sectors > max_sectors || !inside(device, s->sector, s->num_sectors))
            return VMRUN_BLK_S_IOERR;
    }
    struct vmrun_blk_disk *disk = device->disk;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t offset = segments[i].sector * VMRUN_BLK_SECTOR;
        uint64_t length = (uint64_t)segments[i].num_sectors * VMRUN_BLK_SECTOR;
        int unmap = segments[i].flags & VMRUN_BLK_WRITE_ZEROES_FLAG_UNMAP;
        for (uint64_t done = 0; done < length; done += RANGE_PIECE) {
            if (stopping(device))
                return -1;
            uint64_t piece = length - done < RANGE_PIECE ? length - done : RANGE_PIECE;
            int error = zeroes ? disk->ops->write_zeroes(disk, channel, offset + done, piece,
                                                         unmap)
                               : disk->ops->discard(disk, channel, offset + done, piece);
            if (error)
                return VMRUN_BLK_S_IOERR;
        }
    }
    return VMRUN_BLK_S_OK;
}

/* GET_ID: the id, NUL-padded, in as much of the 20 bytes as the buffers hold. */
static uint32_t get_id(struct blk_device *device, const struct span *data)
{
    uint64_t length = data->length < VMRUN_BLK_ID_BYTES ? data->length : VMRUN_BLK_ID_BYTES;
    scatter(data, device->id, length);
    return (uint32_t)length;
}

void blk_execute(struct blk_device *device, void *channel, int channel_error,
                 struct blk_request *request)
{
    const struct vmrun_virtq_chain *chain = &request->chain;
    request->written = 0;
    request->abandoned = 0;
    uint32_t buffers = chain->readable + chain->writable;
    if (chain->writable == 0 || !chain->iov[buffers - 1].base)
        return; /* no status byte in RAM to answer in: returned with nothing written */
    const struct vmrun_iovec *last = &chain->iov[buffers - 1];
    uint8_t *status = last->base + last->len - 1;
    struct span readable = {chain->iov, chain->readable, 0, chain->readable_bytes};
    struct span writable = {chain->iov + chain->readable, chain->writable, 0,
                            chain->writable_bytes - 1};
    uint32_t written = 0;
    int result = VMRUN_BLK_S_IOERR;

    if (chain->outside || channel_error || chain->readable_bytes < HEADER_BYTES)
        goto answer;
    uint8_t header[HEADER_BYTES];
    gather(&readable, header, HEADER_BYTES);
    uint32_t type;
    uint64_t sector;
    memcpy(&type, header, 4);
    memcpy(&sector, header + 8, 8);
    struct span in = readable; /* the data the device reads: after the header */
    in.skip = HEADER_BYTES;
    in.length -= HEADER_BYTES;
    int reads_nothing = in.length == 0, writes_nothing = writable.length == 0;

    switch (type) {
    case VMRUN_BLK_T_IN:
        if (reads_nothing)
            result = transfer(device, channel, &writable, sector, 0);
        if (result == VMRUN_BLK_S_OK)
            written = (uint32_t)writable.length;
        break;
    case VMRUN_BLK_T_OUT:
        if (writes_nothing && !device->read_only)
            result = transfer(device, channel, &in, sector, 1);
        break;
    case VMRUN_BLK_T_FLUSH:
        if (reads_nothing && writes_nothing)
            result = flush(device, channel);
        break;
    case VMRUN_BLK_T_GET_ID:
        if (reads_nothing) {
            written = get_id(device, &writable);
            result = VMRUN_BLK_S_OK;
        }
        break;
    case VMRUN_BLK_T_DISCARD:
    case VMRUN_BLK_T_WRITE_ZEROES:
        if (writes_nothing && !device->read_only)
            result = ranges(device, channel, &in, (int)type);
        break;
    default:
        result = VMRUN_BLK_S_UNSUPP;
        break;
    }
    if (result < 0) {
        request->abandoned = 1;
        return;
    }
answer:
    *status = (uint8_t)result;
    request->written = written + 1;
}
