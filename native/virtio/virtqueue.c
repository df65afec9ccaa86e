/* The virtqueue engine: see virtqueue.h for the rules it enforces and who calls it.
 *
 * Layout of a split virtqueue of `size` entries (virtio 1.2, 2.7), little-endian:
 *   descriptor table  16 * size bytes, 16-aligned: { u64 addr; u32 len; u16 flags; u16 next; }
 *   available ring    6 + 2 * size, 2-aligned:     { u16 flags; u16 idx; u16 ring[size];
 *                                                    u16 used_event; }
 *   used ring         6 + 8 * size, 4-aligned:     { u16 flags; u16 idx;
 *                                                    { u32 id; u32 len; } ring[size];
 *                                                    u16 avail_event; }
 * The host is little-endian x86_64 (the only architecture vmrun builds for), so fields are
 * read as they lie.
 */
#include "virtqueue.h"

#include <string.h>
#include <unistd.h>

enum {
    DESC_SIZE = 16,
    RING_HEADER = 4, /* flags and idx of both rings */
    USED_ELEM = 8,
    MAX_INDIRECT = VMRUN_VIRTQ_MAX_SIZE, /* entries in one indirect table */
};

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* The guest writes its rings while we read them: each field is fetched once, into a local.
 * The compiler barrier keeps the compiler from reading the guest's copy again instead. */
static struct desc read_desc(const uint8_t *table, uint32_t index)
{
    struct desc d;
    memcpy(&d, table + (size_t)index * DESC_SIZE, sizeof d);
    __asm__ volatile("" ::: "memory");
    return d;
}

static uint16_t load16(const uint8_t *p, int order)
{
    return __atomic_load_n((const uint16_t *)p, order);
}

static void store16(uint8_t *p, uint16_t value, int order)
{
    __atomic_store_n((uint16_t *)p, value, order);
}

static int has_feature(const struct vmrun_virtq *q, unsigned bit)
{
    return (q->features >> bit) & 1;
}

static int broken(struct vmrun_virtq *q, int error)
{
    q->error = error;
    return error;
}

static int usable(const struct vmrun_virtq *q)
{
    if (!q->ready)
        return VMRUN_VIRTQ_E_NOT_READY;
    if (q->error)
        return VMRUN_VIRTQ_E_BROKEN;
    return VMRUN_VIRTQ_OK;
}

static uint8_t *avail_ring_slot(const struct vmrun_virtq *q, uint16_t index)
{
    return q->avail + RING_HEADER + 2 * (size_t)(index & (q->size - 1));
}

static uint8_t *used_event(const struct vmrun_virtq *q)
{
    return q->avail + RING_HEADER + 2 * (size_t)q->size;
}

static uint8_t *avail_event(const struct vmrun_virtq *q)
{
    return q->used + RING_HEADER + USED_ELEM * (size_t)q->size;
}

int vmrun_virtq_setup(struct vmrun_virtq *q, uint64_t *in_flight)
{
    q->ready = 0;
    q->error = 0;
    uint32_t size = q->size;
    if (size == 0 || size > VMRUN_VIRTQ_MAX_SIZE || (size & (size - 1)))
        return broken(q, VMRUN_VIRTQ_E_SIZE);
    if (q->desc_addr % 16 || q->avail_addr % 2 || q->used_addr % 4)
        return broken(q, VMRUN_VIRTQ_E_RING);
    q->desc = vmrun_guest_ptr(q->regions, q->region_count, q->desc_addr, DESC_SIZE * size);
    q->avail = vmrun_guest_ptr(q->regions, q->region_count, q->avail_addr, 6 + 2 * size);
    q->used = vmrun_guest_ptr(q->regions, q->region_count, q->used_addr, 6 + USED_ELEM * size);
    if (!q->desc || !q->avail || !q->used)
        return broken(q, VMRUN_VIRTQ_E_RING);
    /* Host pointers must keep the guest address's alignment for the atomic accesses below:
     * regions are page-aligned on both sides (runner/kvm/memory.py), so they do. */
    q->in_flight = in_flight;
    memset(in_flight, 0, size * sizeof *in_flight);
    q->next_avail = 0;
    q->next_used = 0;
    q->signalled_used = 0;
    q->signalled_valid = 0;
    q->notify_enabled = 1;
    q->ready = 1;
    return VMRUN_VIRTQ_OK;
}

/* The chains waiting, or a negative error when the driver's idx is impossible. */
static int available(struct vmrun_virtq *q)
{
    uint16_t idx = load16(q->avail + 2, __ATOMIC_ACQUIRE);
    uint16_t waiting = (uint16_t)(idx - q->next_avail);
    if (waiting > q->size)
        return broken(q, VMRUN_VIRTQ_E_AVAIL_IDX);
    return waiting;
}

static int add_buffer(struct vmrun_virtq *q, struct vmrun_virtq_chain *chain,
                      const struct desc *d, unsigned directions)
{
    if (d->len == 0)
        return VMRUN_VIRTQ_E_ZERO_LENGTH;
    uint8_t *host = vmrun_guest_ptr(q->regions, q->region_count, d->addr, d->len);
    if (!host && !(directions & VMRUN_VIRTQ_KEEP_BAD_BUFFERS))
        return VMRUN_VIRTQ_E_BUFFER;
    int writable = (d->flags & VMRUN_VIRTQ_DESC_F_WRITE) != 0;
    if (!(directions & (writable ? VMRUN_VIRTQ_WRITABLE : VMRUN_VIRTQ_READABLE)))
        return VMRUN_VIRTQ_E_DIRECTION;
    if (!writable && chain->writable)
        return VMRUN_VIRTQ_E_ORDER;
    uint32_t count = chain->readable + chain->writable;
    if (count >= chain->capacity)
        return VMRUN_VIRTQ_E_SEGMENTS;
    /* Each total is under 2**32 before this add and len is a u32: no overflow in u64. */
    if (chain->readable_bytes + chain->writable_bytes + d->len > UINT32_MAX)
        return VMRUN_VIRTQ_E_OVERLONG;
    chain->iov[count].base = host; /* NULL: outside RAM, kept on the caller's request */
    chain->iov[count].len = d->len;
    if (!host)
        chain->outside++;
    if (writable) {
        chain->writable++;
        chain->writable_bytes += d->len;
    } else {
        chain->readable++;
        chain->readable_bytes += d->len;
    }
    return VMRUN_VIRTQ_OK;
}

/* Follow the chain from `head`: every descriptor read once; at most one indirect table, as
 * the chain's last descriptor (after zero or more direct ones, which 2.7.5.3.2 says a device
 * must take); at most as many descriptors as the table being walked holds (which ends any
 * loop): `size` direct ones, then the indirect table's entries. */
static int walk(struct vmrun_virtq *q, struct vmrun_virtq_chain *chain, uint16_t head,
                unsigned directions)
{
    const uint8_t *table = q->desc;
    uint32_t table_size = q->size;
    uint32_t index = head;
    uint32_t seen = 0;
    int indirect = 0;

    chain->head = head;
    chain->readable = chain->writable = 0;
    chain->readable_bytes = chain->writable_bytes = 0;
    chain->outside = 0;
    for (;;) {
        if (++seen > table_size)
            return VMRUN_VIRTQ_E_LOOP;
        struct desc d = read_desc(table, index);
        if (d.flags & VMRUN_VIRTQ_DESC_F_INDIRECT) {
            if (indirect)
                return VMRUN_VIRTQ_E_INDIRECT_NESTED;
            if (!has_feature(q, VMRUN_VIRTIO_F_INDIRECT_DESC) ||
                (d.flags & VMRUN_VIRTQ_DESC_F_NEXT))
                return VMRUN_VIRTQ_E_INDIRECT;
            if (d.len == 0 || d.len % DESC_SIZE || d.len / DESC_SIZE > MAX_INDIRECT)
                return VMRUN_VIRTQ_E_INDIRECT_TABLE;
            table = vmrun_guest_ptr(q->regions, q->region_count, d.addr, d.len);
            if (!table)
                return VMRUN_VIRTQ_E_BUFFER;
            table_size = d.len / DESC_SIZE;
            index = 0;
            seen = 0;
            indirect = 1;
            continue;
        }
        int error = add_buffer(q, chain, &d, directions);
        if (error)
            return error;
        if (!(d.flags & VMRUN_VIRTQ_DESC_F_NEXT))
            return VMRUN_VIRTQ_OK;
        if (d.next >= table_size)
            return VMRUN_VIRTQ_E_NEXT;
        index = d.next;
    }
}

int vmrun_virtq_pop(struct vmrun_virtq *q, struct vmrun_virtq_chain *chain, unsigned directions)
{
    int error = usable(q);
    if (error)
        return error;
    int waiting = available(q);
    if (waiting <= 0)
        return waiting;
    uint16_t head = load16(avail_ring_slot(q, q->next_avail), __ATOMIC_RELAXED);
    if (head >= q->size || q->in_flight[head])
        return broken(q, VMRUN_VIRTQ_E_HEAD);
    error = walk(q, chain, head, directions);
    if (error)
        return broken(q, error);
    q->in_flight[head] = (uint64_t)1 << 32 | chain->writable_bytes;
    q->next_avail++;
    if (q->notify_enabled && has_feature(q, VMRUN_VIRTIO_F_EVENT_IDX))
        store16(avail_event(q), q->next_avail, __ATOMIC_RELEASE);
    return 1;
}

int vmrun_virtq_push(struct vmrun_virtq *q, uint16_t head, uint32_t written)
{
    int error = usable(q);
    if (error)
        return error;
    if (head >= q->size || !q->in_flight[head])
        return VMRUN_VIRTQ_E_USED_HEAD;
    uint32_t writable = (uint32_t)q->in_flight[head];
    if (written > writable)
        written = writable;
    uint8_t *elem = q->used + RING_HEADER + USED_ELEM * (size_t)(q->next_used & (q->size - 1));
    uint32_t id = head;
    memcpy(elem, &id, 4);
    memcpy(elem + 4, &written, 4);
    q->in_flight[head] = 0;
    q->next_used++;
    /* The element before the index: the driver reads them in the other order. */
    store16(q->used + 2, q->next_used, __ATOMIC_RELEASE);
    return VMRUN_VIRTQ_OK;
}

int vmrun_virtq_should_interrupt(struct vmrun_virtq *q)
{
    if (usable(q))
        return 0;
    /* The used idx must be visible before the driver's wishes are read (2.7.10). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!has_feature(q, VMRUN_VIRTIO_F_EVENT_IDX)) {
        uint16_t flags = load16(q->avail, __ATOMIC_RELAXED);
        return !(flags & VMRUN_VIRTQ_AVAIL_F_NO_INTERRUPT);
    }
    uint16_t old = q->signalled_used;
    uint16_t now = q->next_used;
    int valid = q->signalled_valid;
    q->signalled_used = now;
    q->signalled_valid = 1;
    if (!valid)
        return 1; /* no interrupt sent yet: the driver's used_event says nothing so far */
    uint16_t event = load16(used_event(q), __ATOMIC_RELAXED);
    /* Interrupt when used_event lies in [old, now): the driver's vring_need_event. */
    return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

int vmrun_virtq_notify(struct vmrun_virtq *q, int enable)
{
    if (usable(q))
        return 0;
    q->notify_enabled = enable != 0;
    if (has_feature(q, VMRUN_VIRTIO_F_EVENT_IDX)) {
        if (enable)
            store16(avail_event(q), q->next_avail, __ATOMIC_RELAXED);
    } else {
        store16(q->used, enable ? 0 : VMRUN_VIRTQ_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
    }
    if (!enable)
        return 0;
    /* The wish must be visible before the ring is looked at again, or a chain that the driver
     * added without notifying (it still saw the old wish) would wait forever. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return available(q) > 0;
}

int vmrun_virtq_pending(struct vmrun_virtq *q)
{
    if (usable(q))
        return 0;
    int waiting = available(q);
    return waiting > 0 ? waiting : 0;
}

uint32_t vmrun_virtio_interrupt_status(const uint32_t *status)
{
    return __atomic_load_n(status, __ATOMIC_SEQ_CST);
}

void vmrun_virtio_interrupt_ack(uint32_t *status, uint32_t bits)
{
    __atomic_fetch_and(status, ~bits, __ATOMIC_SEQ_CST);
}

void vmrun_virtio_interrupt_raise(uint32_t *status, uint32_t bit, int irq_fd)
{
    __atomic_fetch_or(status, bit, __ATOMIC_SEQ_CST);
    uint64_t one = 1;
    /* An eventfd write fails only when its counter would overflow: the interrupt is then
     * pending anyway. */
    (void)!write(irq_fd, &one, sizeof one);
}

const char *vmrun_virtq_strerror(int error)
{
    switch (error) {
    case VMRUN_VIRTQ_OK: return "no error";
    case VMRUN_VIRTQ_E_NOT_READY: return "the queue is not set up";
    case VMRUN_VIRTQ_E_SIZE: return "the queue size is zero, over 32768 or not a power of 2";
    case VMRUN_VIRTQ_E_RING: return "a ring is misaligned or not inside guest RAM";
    case VMRUN_VIRTQ_E_AVAIL_IDX: return "the available index moved more than the queue size";
    case VMRUN_VIRTQ_E_HEAD: return "a chain's head is out of range or already in use";
    case VMRUN_VIRTQ_E_NEXT: return "a descriptor's next index is out of range";
    case VMRUN_VIRTQ_E_LOOP: return "a descriptor chain loops";
    case VMRUN_VIRTQ_E_BUFFER: return "a buffer is not inside guest RAM";
    case VMRUN_VIRTQ_E_ZERO_LENGTH: return "a buffer has length zero";
    case VMRUN_VIRTQ_E_OVERLONG: return "a chain is longer than 4 GiB";
    case VMRUN_VIRTQ_E_DIRECTION: return "a buffer goes in a direction this queue does not take";
    case VMRUN_VIRTQ_E_ORDER: return "a device-readable buffer follows a device-writable one";
    case VMRUN_VIRTQ_E_INDIRECT: return "an indirect descriptor where none is allowed";
    case VMRUN_VIRTQ_E_INDIRECT_NESTED: return "an indirect table inside an indirect table";
    case VMRUN_VIRTQ_E_INDIRECT_TABLE: return "an indirect table's length is wrong";
    case VMRUN_VIRTQ_E_SEGMENTS: return "a chain has more buffers than the device takes";
    case VMRUN_VIRTQ_E_USED_HEAD: return "the device returned a chain it was not given";
    case VMRUN_VIRTQ_E_BROKEN: return "the queue is broken";
    default: return "unknown";
    }
}
