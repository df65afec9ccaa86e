/* The FILE kind of virtio-blk disk (blk_disk.h): a host regular file or block device, through
 * a descriptor that Python opened (O_DIRECT or not), locked and keeps.
 *
 * I/O goes straight between the file and guest RAM (preadv/pwritev on the engine's buffers).
 * Under O_DIRECT, a request whose guest buffers miss the alignment the kernel needs (address
 * or length) goes through this thread's bounce buffer instead, BOUNCE_BYTES at a time: the
 * memory a request can make vmrun allocate is bounded, whatever the guest sends.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* statx, fallocate's flags */
#endif
#include "blk_disk.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    BOUNCE_BYTES = 256 * 1024, /* per thread; a multiple of any offset alignment up to it */
    ZEROES_BYTES = 64 * 1024,  /* the zero buffer of the write-zeroes fallback */
    DEFAULT_MEM_ALIGN = 4096,
    DEFAULT_OFFSET_ALIGN = 512,
};

struct file_disk {
    int fd;
    int block_device;
    int direct;
    uint32_t mem_align;    /* direct I/O: guest buffers' address alignment */
    uint32_t offset_align; /* direct I/O: offsets' and lengths' alignment */
};

struct file_channel {
    uint8_t *bounce; /* BOUNCE_BYTES (rounded up to offset_align), allocated at first need */
    size_t bounce_size;
    uint8_t *zeroes; /* ZEROES_BYTES of zeroes, allocated at first need */
};

static struct file_disk *file_of(struct vmrun_blk_disk *disk)
{
    return disk->state;
}

static int channel_open(struct vmrun_blk_disk *disk, void **channel)
{
    (void)disk;
    *channel = calloc(1, sizeof(struct file_channel));
    return *channel ? 0 : -ENOMEM;
}

static void channel_close(struct vmrun_blk_disk *disk, void *channel)
{
    (void)disk;
    struct file_channel *ch = channel;
    if (!ch)
        return;
    free(ch->bounce);
    free(ch->zeroes);
    free(ch);
}

/* An aligned buffer of `size` bytes (posix_memalign: O_DIRECT needs the alignment). */
static uint8_t *aligned_buffer(const struct file_disk *file, size_t size)
{
    void *buffer = NULL;
    size_t align = file->mem_align > sizeof(void *) ? file->mem_align : sizeof(void *);
    if (posix_memalign(&buffer, align, size))
        return NULL;
    return buffer;
}

static size_t total_bytes(const struct iovec *iov, int count)
{
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += iov[i].iov_len;
    return total;
}

/* preadv/pwritev until every byte moved: short transfers resumed, EINTR retried; a read that
 * meets the end of the file (it shrank under the VM) is an error. */
static int transfer(int fd, const struct iovec *given, int count, uint64_t offset, int writing)
{
    struct iovec iov[VMRUN_BLK_CHAIN_CAPACITY];
    if (count > VMRUN_BLK_CHAIN_CAPACITY)
        return -EINVAL;
    memcpy(iov, given, (size_t)count * sizeof *iov);
    struct iovec *at = iov;
    while (count > 0) {
        ssize_t done = writing ? pwritev(fd, at, count, (off_t)offset)
                               : preadv(fd, at, count, (off_t)offset);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (done == 0)
            return -EIO;
        offset += (uint64_t)done;
        while (count > 0 && (size_t)done >= at->iov_len) {
            done -= (ssize_t)at->iov_len;
            at++;
            count--;
        }
        if (count > 0) {
            at->iov_base = (uint8_t *)at->iov_base + done;
            at->iov_len -= (size_t)done;
        }
    }
    return 0;
}

static int whole(int fd, uint8_t *buffer, size_t length, uint64_t offset, int writing)
{
    struct iovec iov = {.iov_base = buffer, .iov_len = length};
    return transfer(fd, &iov, 1, offset, writing);
}

/* Copy `length` bytes between `buffer` and the iovecs from byte `skip` of them on. */
static void copy_iov(const struct iovec *iov, int count, size_t skip, uint8_t *buffer,
                     size_t length, int to_iov)
{
    for (int i = 0; i < count && length; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        size_t part = iov[i].iov_len - skip;
        if (part > length)
            part = length;
        uint8_t *guest = (uint8_t *)iov[i].iov_base + skip;
        if (to_iov)
            memcpy(guest, buffer, part);
        else
            memcpy(buffer, guest, part);
        buffer += part;
        length -= part;
        skip = 0;
    }
}

static int aligned(const struct file_disk *file, const struct iovec *iov, int count)
{
    for (int i = 0; i < count; i++) {
        if ((uintptr_t)iov[i].iov_base % file->mem_align || iov[i].iov_len % file->offset_align)
            return 0;
    }
    return 1;
}

/* Unaligned guest buffers under O_DIRECT: through the bounce buffer, a piece at a time. */
static int bounce(struct file_disk *file, struct file_channel *ch, const struct iovec *iov,
                  int count, uint64_t offset, int writing)
{
    if (!ch->bounce) {
        size_t size = BOUNCE_BYTES;
        size = (size + file->offset_align - 1) / file->offset_align * file->offset_align;
        ch->bounce = aligned_buffer(file, size);
        if (!ch->bounce)
            return -ENOMEM;
        ch->bounce_size = size;
    }
    size_t total = total_bytes(iov, count);
    for (size_t done = 0; done < total;) {
        size_t piece = total - done < ch->bounce_size ? total - done : ch->bounce_size;
        if (writing)
            copy_iov(iov, count, done, ch->bounce, piece, 0);
        int error = whole(file->fd, ch->bounce, piece, offset + done, writing);
        if (error)
            return error;
        if (!writing)
            copy_iov(iov, count, done, ch->bounce, piece, 1);
        done += piece;
    }
    return 0;
}

static int file_io(struct vmrun_blk_disk *disk, void *channel, const struct iovec *iov,
                   int count, uint64_t offset, int writing)
{
    struct file_disk *file = file_of(disk);
    if (file->direct && !aligned(file, iov, count))
        return bounce(file, channel, iov, count, offset, writing);
    return transfer(file->fd, iov, count, offset, writing);
}

static int file_read(struct vmrun_blk_disk *disk, void *channel, const struct iovec *iov,
                     int count, uint64_t offset)
{
    return file_io(disk, channel, iov, count, offset, 0);
}

static int file_write(struct vmrun_blk_disk *disk, void *channel, const struct iovec *iov,
                      int count, uint64_t offset)
{
    return file_io(disk, channel, iov, count, offset, 1);
}

static int file_flush(struct vmrun_blk_disk *disk, void *channel, int what)
{
    (void)channel;
    int fd = file_of(disk)->fd;
    int result = what == VMRUN_BLK_FLUSH_ALL ? fsync(fd) : fdatasync(fd);
    return result ? -errno : 0;
}

/* fallocate, EINTR retried: 0 or -errno. */
static int allocate(int fd, int mode, uint64_t offset, uint64_t length)
{
    while (fallocate(fd, mode, (off_t)offset, (off_t)length)) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* BLKDISCARD / BLKZEROOUT on a range: 0 or -errno. */
static int range_ioctl(int fd, unsigned long request, uint64_t offset, uint64_t length)
{
    uint64_t range[2] = {offset, length};
    while (ioctl(fd, request, range)) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* The file system or device cannot do this operation (a fallback follows). */
static int refused(int error)
{
    return error == -EOPNOTSUPP || error == -ENOTTY || error == -ENOSYS || error == -EINVAL;
}

static int file_discard(struct vmrun_blk_disk *disk, void *channel, uint64_t offset,
                        uint64_t length)
{
    (void)channel;
    struct file_disk *file = file_of(disk);
    int error = file->block_device
                    ? range_ioctl(file->fd, BLKDISCARD, offset, length)
                    : allocate(file->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                               length);
    /* A discard is a hint (5.2.6.2: the device MAY deallocate): a host that cannot is fine. */
    return refused(error) ? 0 : error;
}

static int write_zero_bytes(struct file_disk *file, struct file_channel *ch, uint64_t offset,
                            uint64_t length)
{
    if (!ch->zeroes) {
        ch->zeroes = aligned_buffer(file, ZEROES_BYTES);
        if (!ch->zeroes)
            return -ENOMEM;
        memset(ch->zeroes, 0, ZEROES_BYTES);
    }
    while (length) {
        size_t piece = length < ZEROES_BYTES ? (size_t)length : ZEROES_BYTES;
        int error = whole(file->fd, ch->zeroes, piece, offset, 1);
        if (error)
            return error;
        offset += piece;
        length -= piece;
    }
    return 0;
}

static int file_write_zeroes(struct vmrun_blk_disk *disk, void *channel, uint64_t offset,
                             uint64_t length, int may_unmap)
{
    struct file_disk *file = file_of(disk);
    int error;
    if (file->block_device) {
        /* BLKZEROOUT: the device's own way (WRITE ZEROES, or the kernel writes zeroes). */
        error = range_ioctl(file->fd, BLKZEROOUT, offset, length);
    } else {
        error = -EOPNOTSUPP;
        if (may_unmap) /* a hole reads back as zeroes and frees the space */
            error = allocate(file->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                             length);
        if (refused(error))
            error = allocate(file->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset,
                             length);
    }
    if (refused(error))
        error = write_zero_bytes(file, channel, offset, length);
    return error;
}

static void file_close(struct vmrun_blk_disk *disk)
{
    free(disk->state);
}

static const struct vmrun_blk_disk_ops file_ops = {
    .kind = "file",
    .channel_open = channel_open,
    .channel_close = channel_close,
    .read = file_read,
    .write = file_write,
    .flush = file_flush,
    .discard = file_discard,
    .write_zeroes = file_write_zeroes,
    .close = file_close,
};

/* The alignments O_DIRECT needs on `fd`: 0, or -errno when direct I/O is impossible. */
static int direct_alignment(struct file_disk *file)
{
    struct statx stx;
    if (statx(file->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN)) {
        if (stx.stx_dio_offset_align == 0)
            return -EINVAL; /* the kernel says: no direct I/O on this file */
        file->mem_align = stx.stx_dio_mem_align ? stx.stx_dio_mem_align : 1;
        file->offset_align = stx.stx_dio_offset_align;
        return 0;
    }
    int sector_size = 0;
    if (file->block_device && ioctl(file->fd, BLKSSZGET, &sector_size) == 0 && sector_size > 0) {
        file->mem_align = file->offset_align = (uint32_t)sector_size;
        return 0;
    }
    file->mem_align = DEFAULT_MEM_ALIGN;
    file->offset_align = DEFAULT_OFFSET_ALIGN;
    return 0;
}

struct vmrun_blk_disk *vmrun_blk_disk_open_file(int fd, unsigned flags)
{
    struct stat st;
    if (fstat(fd, &st))
        return NULL;
    struct file_disk *file = calloc(1, sizeof *file);
    struct vmrun_blk_disk *disk = calloc(1, sizeof *disk);
    if (!file || !disk)
        goto fail_errno;
    file->fd = fd;
    file->block_device = S_ISBLK(st.st_mode);
    file->direct = (flags & VMRUN_BLK_DISK_DIRECT) != 0;
    file->mem_align = file->offset_align = 1;
    if (!file->block_device && !S_ISREG(st.st_mode)) {
        errno = EINVAL;
        goto fail_errno;
    }
    uint64_t size = (uint64_t)st.st_size;
    uint32_t discard_bytes = st.st_blksize > 0 ? (uint32_t)st.st_blksize : VMRUN_BLK_SECTOR;
    if (file->block_device) {
        if (ioctl(fd, BLKGETSIZE64, &size))
            goto fail_errno;
        unsigned int physical = 0;
        discard_bytes = ioctl(fd, BLKPBSZGET, &physical) == 0 && physical ? physical
                                                                          : VMRUN_BLK_SECTOR;
    }
    uint32_t block_size = VMRUN_BLK_SECTOR;
    if (file->direct) {
        int error = direct_alignment(file);
        if (error) {
            errno = -error;
            goto fail_errno;
        }
        if (file->offset_align > block_size)
            block_size = file->offset_align;
    }
    if (block_size % VMRUN_BLK_SECTOR || block_size > 65536) {
        errno = EINVAL; /* an alignment no guest block size can meet */
        goto fail_errno;
    }
    *disk = (struct vmrun_blk_disk){
        .ops = &file_ops,
        .size = size / block_size * block_size, /* a partial last block is not offered */
        .block_size = block_size,
        .discard_alignment = discard_bytes >= VMRUN_BLK_SECTOR ? discard_bytes / VMRUN_BLK_SECTOR
                                                               : 1,
        .state = file,
    };
    return disk;

fail_errno: {
    int saved = errno;
    free(file);
    free(disk);
    errno = saved;
    return NULL;
}
}
