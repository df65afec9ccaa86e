/* libFuzzer harness for the virtqueue engine (native/virtio/virtqueue.c).
 *
 * Why: the engine is THE place where what a hostile guest wrote into a queue is checked
 * (DESIGN invariant 1). This drives it the way a device and a guest would, from the fuzzer's
 * bytes, and aborts (a finding) when a contract of virtqueue.h breaks:
 *   - no host access outside guest RAM, the caller's iovec array or in_flight (ASan: every
 *     region, iovec array and in_flight array is a malloc of exactly its size, or for the
 *     4 GiB region an mmap between PROT_NONE guard pages);
 *   - a popped chain: head < size and not already taken, readable then writable counts within
 *     the capacity, each buffer non-empty and inside one region, byte totals equal to its
 *     buffers' sums and at most UINT32_MAX; the same chain (or the same refusal) as a
 *     reference walk written here from the rules in virtqueue.h;
 *   - results and `error` are values of enum vmrun_virtq_error; a broken queue stays broken
 *     with the same error until set up again, and every call on it fails (pop and push with
 *     E_BROKEN, the others with 0) without touching guest memory;
 *   - in_flight[head] is 1 << 32 | the chain's writable bytes while it is taken, else 0;
 *   - push, pending, notify and should_interrupt give what the ring says (the used element with
 *     the written count cut to the chain's writable bytes, the used idx, avail_event, EVENT_IDX's
 *     need_event rule, NO_INTERRUPT), and the engine
 *     writes guest memory only inside the used ring, only in calls that succeed (compared
 *     with a copy of each malloc'd region);
 *   - bounded work per call: no loop whatever the guest wrote (-timeout catches one).
 * Guest writes happen between calls (the guest is another thread; the engine reads each field
 * once, so a change between calls is what a race can show it).
 *
 * By hand, from the project root (tests/native/test_virtqueue_fuzz.py does the same):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -Inative/kvm -Inative/virtio native/fuzz/virtqueue_fuzz.c \
 *       native/virtio/virtqueue.c native/kvm/vmrun_kvm.c -o /tmp/vq_fuzz
 *   cp -r native/fuzz/corpus/virtqueue /tmp/vq_corpus     # the repo's corpus stays as it is
 *   /tmp/vq_fuzz -max_total_time=60 -timeout=10 -rss_limit_mb=1024 /tmp/vq_corpus
 *   /tmp/vq_fuzz crash-<sha1>                             # replay one input; VQ_TRACE=1 traces
 * Seeds: native/fuzz/make_corpus.py writes native/fuzz/corpus/virtqueue/ in this format.
 *
 * Input (little-endian; bytes past the end read as 0):
 *   u8 regions: 1 + n % 3, then per region: u8 kind (bits 0-1: 0 or 1 a small region, 2 one
 *      at the top of the 64-bit address space, 3 one of 4 GiB + (size % 17) pages; bits 4-7:
 *      pages of gap before it), u16 size (small and top: size + 1 bytes). Small and 4 GiB
 *      regions are placed upwards from guest address 0, page-aligned; a second top or 4 GiB
 *      region is a small one.
 *   u8 fill length, then that many bytes repeated over each region's first 64 KiB.
 *   queue: u8 size (bit 7: a raw u16 follows; else 1 << (n % 16)), gpa desc, gpa avail,
 *      gpa used, u8 features (bit 0 INDIRECT_DESC, 1 EVENT_IDX, 2 VERSION_1, 3 all other bits),
 *      u8 directions (1 + (n & 127) % 3, plus VMRUN_VIRTQ_KEEP_BAD_BUFFERS when bit 7 is
 *      set), u16 capacity (bit 15: 65536, more than any chain; else n % 1025).
 *   gpa: u8 sel; sel & 3 == 3: a raw u64; else region (sel & 3) % regions, offset u16 (sel & 8:
 *      u32), rounded down to 16 if sel & 4, from the region's end if sel & 16.
 *   len: u8 sel; by sel & 3: u8 (times 16 if sel & 4), u16, u32, and UINT32_MAX - u16 or, if
 *      sel & 4, the room from the last gpa read to its region's end plus an s8.
 *   then up to MAX_OPS operations, u8 op % OP_COUNT and its operands (see `enum op`), until
 *      WORK_BUDGET descriptors were walked.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "virtqueue.h"
#include "vmrun_kvm.h"

enum {
    MAX_REGIONS = 3,
    PAGE = 4096,
    HUGE_EXTRA_PAGES = 16,
    FILL_SPAN = 65536,
    MAX_OPS = 1024,
    CYCLE_BUDGET = 70000, /* more than 65536: every index wraps once */
    WORK_BUDGET = 1 << 21, /* descriptors walked an input: keeps each under a second */
    CAPACITY_MODULUS = 1025, /* capacities 0-1024 (queue.py's is 1024) */
    BIG_CAPACITY = 65536,    /* or more than any chain can have */
    DESC_SIZE = 16,
};

#define HUGE_BASE_SIZE (UINT64_C(1) << 32)
#define HUGE_MAP_SIZE (HUGE_BASE_SIZE + (uint64_t)(HUGE_EXTRA_PAGES + 2) * PAGE)

enum op {
    OP_POP,          /* pop */
    OP_PUSH_TAKEN,   /* u8 k, u32 w: push the (k % 64)-th taken head with, by k >> 6, w % (its
                        writable bytes + 1), writable bytes + (int8_t)w, or w written */
    OP_PUSH_ANY,     /* u16 head, u32 written: push whatever head (a device bug) */
    OP_INTERRUPT,    /* should_interrupt */
    OP_NOTIFY,       /* u8 enable (bit 0) */
    OP_PENDING,      /* pending */
    OP_RESET,        /* setup again, as after a device reset */
    G_AVAIL_IDX,     /* u8 mode: bit 0 a raw u16 follows, else idx += mode >> 1 */
    G_RING,          /* u16 slot (masked by size - 1 for a valid size), u16 value */
    G_DESC,          /* u8 where (bit 0: gpa, else u16 index in the table), gpa addr, len,
                        u16 flags, u16 next */
    G_ADD,           /* u16 head: ring[idx % size] = head, idx++ (the driver adds a chain) */
    G_FLAGS,         /* u8 which % 4 (avail flags, used_event, used flags, avail_event), u16 */
    G_BYTES,         /* gpa, u8 n % 33, n bytes */
    OP_CYCLE,        /* u16 head, u16 n: n times (within CYCLE_BUDGET an input) the driver adds
                        `head`, then pop, push of what was popped, should_interrupt: the u16
                        indices wrap; guest-memory writes are checked once, after */
    OP_COUNT,
};

/* ---- input ------------------------------------------------------------------------------ */

struct input {
    const uint8_t *p;
    size_t left;
};

static uint8_t in8(struct input *in)
{
    if (!in->left)
        return 0;
    in->left--;
    return *in->p++;
}

static uint16_t in16(struct input *in)
{
    uint16_t lo = in8(in);
    return (uint16_t)(lo | in8(in) << 8);
}

static uint32_t in32(struct input *in)
{
    uint32_t lo = in16(in);
    return lo | (uint32_t)in16(in) << 16;
}

static uint64_t in64(struct input *in)
{
    uint64_t lo = in32(in);
    return lo | (uint64_t)in32(in) << 32;
}

/* ---- findings ---------------------------------------------------------------------------- */

static int trace;

static void finding(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void finding(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("virtqueue_fuzz: CONTRACT BROKEN: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void note(const char *fmt, ...)
{
    if (!trace)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- synthetic guest memory -------------------------------------------------------------- */

static struct vmrun_guest_region regions[MAX_REGIONS];
static uint8_t *shadow[MAX_REGIONS]; /* last known contents; NULL for the 4 GiB region */
static uint8_t *allocated[MAX_REGIONS]; /* what to free */
static size_t region_count;
static uint8_t *huge_map; /* one 4 GiB + guard pages mapping, reused by every input */
static int huge_used;

static uint64_t align_up(uint64_t value, uint64_t to)
{
    return (value + to - 1) / to * to;
}

static uint8_t *huge_region(uint64_t size)
{
    if (!huge_map) {
        void *map = mmap(NULL, HUGE_MAP_SIZE, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (map == MAP_FAILED) {
            perror("virtqueue_fuzz: mmap of the 4 GiB region");
            exit(2);
        }
        huge_map = map;
    }
    /* The region ends at the trailing guard page; everything before it is PROT_NONE. */
    uint8_t *end = huge_map + HUGE_MAP_SIZE - PAGE;
    uint8_t *host = end - size;
    if (mprotect(huge_map, HUGE_MAP_SIZE, PROT_NONE) ||
        mprotect(host, size, PROT_READ | PROT_WRITE)) {
        perror("virtqueue_fuzz: mprotect");
        exit(2);
    }
    huge_used = 1;
    return host;
}

static void free_regions(void)
{
    for (size_t i = 0; i < region_count; i++) {
        free(allocated[i]);
        free(shadow[i]);
        allocated[i] = shadow[i] = NULL;
    }
    region_count = 0;
    if (huge_used) {
        /* Back to zero pages for the next input. */
        madvise(huge_map, HUGE_MAP_SIZE, MADV_DONTNEED);
        mprotect(huge_map, HUGE_MAP_SIZE, PROT_NONE);
        huge_used = 0;
    }
}

static void make_regions(struct input *in)
{
    size_t count = 1 + in8(in) % MAX_REGIONS;
    uint64_t next = 0;
    int have_top = 0, have_huge = 0;
    for (size_t i = 0; i < count; i++) {
        uint8_t kind = in8(in);
        uint16_t size16 = in16(in);
        uint64_t gap = (uint64_t)(kind >> 4) * PAGE;
        struct vmrun_guest_region *r = &regions[i];
        if ((kind & 3) == 3 && !have_huge) {
            have_huge = 1;
            r->size = HUGE_BASE_SIZE + (uint64_t)(size16 % (HUGE_EXTRA_PAGES + 1)) * PAGE;
            r->host = huge_region(r->size);
            r->guest_addr = next + gap;
            next = align_up(r->guest_addr + r->size, PAGE);
        } else if ((kind & 3) == 2 && !have_top) {
            have_top = 1;
            r->size = (uint64_t)size16 + 1;
            r->host = allocated[i] = malloc(r->size);
            /* Ends within 15 bytes of 2**64; 16-aligned like its host copy. */
            r->guest_addr = 0 - align_up(r->size, 16);
        } else {
            r->size = (uint64_t)size16 + 1;
            r->host = allocated[i] = malloc(r->size);
            r->guest_addr = next + gap;
            next = align_up(r->guest_addr + r->size, PAGE);
        }
        if (!r->host)
            abort();
        if (allocated[i])
            memset(r->host, 0, r->size);
        region_count = i + 1;
    }
    uint8_t fill = in8(in);
    uint8_t pattern[256];
    for (unsigned i = 0; i < fill; i++)
        pattern[i] = in8(in);
    for (size_t i = 0; i < region_count && fill; i++) {
        uint64_t span = regions[i].size < FILL_SPAN ? regions[i].size : FILL_SPAN;
        uint8_t *host = regions[i].host;
        memcpy(host, pattern, span < fill ? span : fill);
        for (uint64_t done = fill; done < span; done *= 2) /* the pattern, doubling */
            memcpy(host + done, host, span - done < done ? span - done : done);
    }
    for (size_t i = 0; i < region_count; i++) {
        if (!allocated[i])
            continue;
        shadow[i] = malloc(regions[i].size);
        if (!shadow[i])
            abort();
        memcpy(shadow[i], regions[i].host, regions[i].size);
    }
}

/* The harness's own view of guest memory, written independently of vmrun_guest_ptr: the host
 * address of [gpa, gpa + len) when all of it is in one region, else NULL. */
static uint8_t *model_range(uint64_t gpa, uint64_t len)
{
    for (size_t i = 0; i < region_count; i++) {
        const struct vmrun_guest_region *r = &regions[i];
        if (gpa >= r->guest_addr && gpa - r->guest_addr < r->size &&
            len <= r->size - (gpa - r->guest_addr))
            return r->host + (gpa - r->guest_addr);
    }
    return NULL;
}

/* The region whose allocation holds host bytes [p, p + len), or -1. */
static int region_of_host(const uint8_t *p, uint64_t len)
{
    uintptr_t start = (uintptr_t)p;
    for (size_t i = 0; i < region_count; i++) {
        uintptr_t lo = (uintptr_t)regions[i].host;
        if (start >= lo && start - lo < regions[i].size && len <= regions[i].size - (start - lo))
            return (int)i;
    }
    return -1;
}

/* The guest writes: byte by byte, whatever lies outside RAM is dropped. */
static void guest_write(uint64_t gpa, const void *data, size_t len)
{
    const uint8_t *bytes = data;
    for (size_t i = 0; i < len; i++) {
        uint64_t at = gpa + i;
        for (size_t r = 0; r < region_count; r++) {
            if (at >= regions[r].guest_addr && at - regions[r].guest_addr < regions[r].size) {
                uint64_t off = at - regions[r].guest_addr;
                regions[r].host[off] = bytes[i];
                if (shadow[r])
                    shadow[r][off] = bytes[i];
                break;
            }
        }
    }
}

static void guest_write16(uint64_t gpa, uint16_t value)
{
    guest_write(gpa, &value, 2);
}

/* A u16 of the guest's, or `otherwise` where it is not all in RAM. */
static uint16_t guest_read16(uint64_t gpa, uint16_t otherwise)
{
    const uint8_t *p = model_range(gpa, 2);
    uint16_t value = otherwise;
    if (p)
        memcpy(&value, p, 2);
    return value;
}

static uint32_t guest_read32(uint64_t gpa)
{
    const uint8_t *p = model_range(gpa, 4);
    uint32_t value = 0;
    if (p)
        memcpy(&value, p, 4);
    return value;
}

/* Bytes from the address in_gpa last read to its region's end (0 outside RAM). */
static uint64_t last_room;

static uint64_t decode_gpa(struct input *in)
{
    uint8_t sel = in8(in);
    if ((sel & 3) == 3)
        return in64(in);
    const struct vmrun_guest_region *r = &regions[(sel & 3) % region_count];
    uint64_t offset = (sel & 8) ? in32(in) : in16(in);
    if (sel & 4)
        offset &= ~(uint64_t)15;
    return (sel & 16) ? r->guest_addr + r->size - offset : r->guest_addr + offset;
}

static uint64_t in_gpa(struct input *in)
{
    uint64_t gpa = decode_gpa(in);
    last_room = 0;
    for (size_t i = 0; i < region_count; i++) {
        if (gpa >= regions[i].guest_addr && gpa - regions[i].guest_addr < regions[i].size)
            last_room = regions[i].size - (gpa - regions[i].guest_addr);
    }
    return gpa;
}

static uint32_t in_len(struct input *in)
{
    uint8_t sel = in8(in);
    switch (sel & 3) {
    case 0: return (sel & 4) ? (uint32_t)in8(in) * DESC_SIZE : in8(in);
    case 1: return in16(in);
    case 2: return in32(in);
    default: return (sel & 4) ? (uint32_t)(last_room + (int8_t)in8(in)) : UINT32_MAX - in16(in);
    }
}

/* ---- the queue and the harness's model of it --------------------------------------------- */

struct expected_buffer {
    const uint8_t *base;
    uint32_t len;
    int writable;
};

static struct {
    int ready;               /* the last setup succeeded */
    int32_t error;           /* the error that broke it, once broken */
    uint16_t next_avail;
    uint16_t next_used;
    int notify_enabled;
    int signalled_valid;
    uint16_t signalled_used;
    uint32_t taken_count;
    uint16_t taken_list[VMRUN_VIRTQ_MAX_SIZE];
    uint8_t taken[65536];
    uint32_t writable_bytes[65536];
} model;

static struct vmrun_virtq q;
static uint64_t *in_flight;
static struct vmrun_iovec *iov;
static uint32_t capacity;
static unsigned directions;
static struct expected_buffer expected[BIG_CAPACITY];
static uint32_t work; /* descriptors the reference walk read for this input */

static int has_feature(unsigned bit)
{
    return (q.features >> bit) & 1;
}

static uint64_t used_ring_bytes(void)
{
    return 6 + 8 * (uint64_t)q.size;
}

static int valid_size(void)
{
    return q.size && q.size <= VMRUN_VIRTQ_MAX_SIZE && !(q.size & (q.size - 1));
}

static uint64_t used_event_gpa(void)
{
    return q.avail_addr + 4 + 2 * (uint64_t)q.size;
}

static uint64_t avail_event_gpa(void)
{
    return q.used_addr + 4 + 8 * (uint64_t)q.size;
}

static void forget_taken(void)
{
    for (uint32_t i = 0; i < model.taken_count; i++)
        model.taken[model.taken_list[i]] = 0;
    model.taken_count = 0;
}

static void take(uint16_t head, uint32_t writable_bytes)
{
    model.taken[head] = 1;
    model.writable_bytes[head] = writable_bytes;
    model.taken_list[model.taken_count++] = head;
}

static void give_back(uint16_t head)
{
    model.taken[head] = 0;
    for (uint32_t i = 0; i < model.taken_count; i++) {
        if (model.taken_list[i] == head) {
            model.taken_list[i] = model.taken_list[--model.taken_count];
            return;
        }
    }
    finding("model: head %u not in the taken list", head);
}

static int known_error(int value)
{
    return value <= VMRUN_VIRTQ_OK && value >= VMRUN_VIRTQ_E_BROKEN &&
           strcmp(vmrun_virtq_strerror(value), "unknown") != 0;
}

/* What breaks a queue: not NOT_READY, USED_HEAD or BROKEN, which only report. */
static int breaking_error(int value)
{
    return value < 0 && known_error(value) && value != VMRUN_VIRTQ_E_NOT_READY &&
           value != VMRUN_VIRTQ_E_USED_HEAD && value != VMRUN_VIRTQ_E_BROKEN;
}

/* Each call's state before it: usable as the model has it. */
static int model_usable(void)
{
    return model.ready && !model.error;
}

static void break_model(int error)
{
    if (!breaking_error(error))
        finding("queue broken with %d (%s), which is no reason to break one", error,
                vmrun_virtq_strerror(error));
    model.error = error;
}

/* Invariants that hold after every call. */
static void check_state(const char *call)
{
    if (q.error != 0 && !breaking_error(q.error))
        finding("after %s: q.error is %d, not a reason a queue breaks for", call, q.error);
    if (model.error && q.error != model.error)
        finding("after %s: a queue broken with %d now has error %d", call, model.error, q.error);
    if (!model.error && q.error)
        finding("after %s: the queue broke with %d (%s) where nothing broke it", call, q.error,
                vmrun_virtq_strerror(q.error));
    if (model.ready != q.ready)
        finding("after %s: ready is %u, expected %d", call, q.ready, model.ready);
    if (model.ready && q.next_avail != model.next_avail)
        finding("after %s: next_avail %u, expected %u", call, q.next_avail, model.next_avail);
    if (model.ready && q.next_used != model.next_used)
        finding("after %s: next_used %u, expected %u", call, q.next_used, model.next_used);
}

static int writes_deferred; /* within OP_CYCLE */

/* The engine writes guest memory only inside the used ring, and only when `may_write`. */
static void check_writes(const char *call, int may_write)
{
    if (writes_deferred)
        return;
    uint64_t lo = q.used_addr, bytes = used_ring_bytes();
    for (size_t r = 0; r < region_count; r++) {
        if (!shadow[r] || !memcmp(shadow[r], regions[r].host, regions[r].size))
            continue;
        for (uint64_t block = 0; block < regions[r].size; block += 256) {
            uint64_t end = block + 256 < regions[r].size ? block + 256 : regions[r].size;
            if (!memcmp(shadow[r] + block, regions[r].host + block, end - block))
                continue;
            for (uint64_t off = block; off < end; off++) {
                uint64_t gpa = regions[r].guest_addr + off;
                if (shadow[r][off] != regions[r].host[off] && (!may_write || gpa - lo >= bytes))
                    finding("%s wrote guest byte %#llx (%s the used ring at %#llx)", call,
                            (unsigned long long)gpa,
                            may_write ? "outside" : "and may not write:",
                            (unsigned long long)lo);
            }
        }
        memcpy(shadow[r], regions[r].host, regions[r].size);
    }
}

static int expected_setup(void)
{
    if (!valid_size())
        return VMRUN_VIRTQ_E_SIZE;
    if (q.desc_addr % 16 || q.avail_addr % 2 || q.used_addr % 4)
        return VMRUN_VIRTQ_E_RING;
    if (!model_range(q.desc_addr, (uint64_t)DESC_SIZE * q.size) ||
        !model_range(q.avail_addr, 6 + 2 * (uint64_t)q.size) ||
        !model_range(q.used_addr, used_ring_bytes()))
        return VMRUN_VIRTQ_E_RING;
    return VMRUN_VIRTQ_OK;
}

static void do_setup(void)
{
    int want = expected_setup();
    int got = vmrun_virtq_setup(&q, in_flight);
    note("setup size %u desc %#llx avail %#llx used %#llx -> %d", q.size,
         (unsigned long long)q.desc_addr, (unsigned long long)q.avail_addr,
         (unsigned long long)q.used_addr, got);
    if (got != want)
        finding("setup returned %d, expected %d", got, want);
    forget_taken();
    model.error = 0;
    model.ready = got == VMRUN_VIRTQ_OK;
    if (!model.ready)
        break_model(got);
    model.next_avail = model.next_used = 0;
    model.notify_enabled = 1;
    model.signalled_valid = 0;
    model.signalled_used = 0;
    if (model.ready && q.error)
        finding("setup succeeded with q.error %d", q.error);
    if (!model.ready && (q.ready || q.error != got))
        finding("a failed setup left ready %u error %d", q.ready, q.error);
    check_state("setup");
    check_writes("setup", 0);
}

/* An error as a bit of a set of errors. */
static uint32_t error_bit(int error)
{
    return UINT32_C(1) << -error;
}

/* The reference walk, from the rules in virtqueue.h: 0 and the buffers in `expected` for a
 * chain the engine must take; else the errors it may refuse the chain with, as error_bit()s:
 * every rule that the first bad step breaks (which of them it names is the engine's choice). */
static uint32_t reference_walk(uint16_t head, uint32_t *count)
{
    uint64_t table = q.desc_addr;
    uint32_t table_size = q.size, index = head, seen = 0;
    int indirect = 0, writable_seen = 0;
    uint64_t total = 0;
    *count = 0;
    for (;;) {
        if (seen == table_size)
            return error_bit(VMRUN_VIRTQ_E_LOOP); /* more descriptors than the table holds */
        seen++;
        work++;
        const uint8_t *raw = model_range(table + (uint64_t)index * DESC_SIZE, DESC_SIZE);
        if (!raw)
            finding("model: descriptor %u of a checked table is outside RAM", index);
        uint64_t addr;
        uint32_t len;
        uint16_t flags, next;
        memcpy(&addr, raw, 8);
        memcpy(&len, raw + 8, 4);
        memcpy(&flags, raw + 12, 2);
        memcpy(&next, raw + 14, 2);
        uint32_t bad = 0;
        if (flags & VMRUN_VIRTQ_DESC_F_INDIRECT) {
            if (indirect)
                bad |= error_bit(VMRUN_VIRTQ_E_INDIRECT_NESTED);
            /* Last in its chain, after zero or more direct descriptors (2.7.5.3.2). */
            if (!has_feature(VMRUN_VIRTIO_F_INDIRECT_DESC) || (flags & VMRUN_VIRTQ_DESC_F_NEXT))
                bad |= error_bit(VMRUN_VIRTQ_E_INDIRECT);
            if (len == 0 || len % DESC_SIZE || len / DESC_SIZE > VMRUN_VIRTQ_MAX_SIZE)
                bad |= error_bit(VMRUN_VIRTQ_E_INDIRECT_TABLE);
            if (!model_range(addr, len))
                bad |= error_bit(VMRUN_VIRTQ_E_BUFFER);
            if (bad)
                return bad;
            table = addr;
            table_size = len / DESC_SIZE;
            index = 0;
            seen = 0;
            indirect = 1;
            continue;
        }
        int writable = (flags & VMRUN_VIRTQ_DESC_F_WRITE) != 0;
        const uint8_t *host = model_range(addr, len);
        if (len == 0)
            bad |= error_bit(VMRUN_VIRTQ_E_ZERO_LENGTH);
        /* Under KEEP_BAD_BUFFERS a buffer outside RAM is taken, with base NULL. */
        if (!host && !(directions & VMRUN_VIRTQ_KEEP_BAD_BUFFERS))
            bad |= error_bit(VMRUN_VIRTQ_E_BUFFER);
        if (!(directions & (writable ? VMRUN_VIRTQ_WRITABLE : VMRUN_VIRTQ_READABLE)))
            bad |= error_bit(VMRUN_VIRTQ_E_DIRECTION);
        if (writable_seen && !writable)
            bad |= error_bit(VMRUN_VIRTQ_E_ORDER);
        if (*count >= capacity)
            bad |= error_bit(VMRUN_VIRTQ_E_SEGMENTS);
        if (total + len > UINT32_MAX)
            bad |= error_bit(VMRUN_VIRTQ_E_OVERLONG);
        if (bad)
            return bad;
        total += len;
        expected[*count].base = host;
        expected[*count].len = len;
        expected[*count].writable = writable;
        (*count)++;
        writable_seen |= writable;
        if (!(flags & VMRUN_VIRTQ_DESC_F_NEXT))
            return 0;
        if (next >= table_size)
            return error_bit(VMRUN_VIRTQ_E_NEXT);
        index = next;
    }
}

/* The contracts of a popped chain that need no model. */
static void check_chain(const struct vmrun_virtq_chain *chain)
{
    if (chain->head >= q.size)
        finding("pop: head %u, queue size %u", chain->head, q.size);
    if (chain->iov != iov || chain->capacity != capacity)
        finding("pop: changed the caller's iov or capacity");
    uint64_t count = (uint64_t)chain->readable + chain->writable;
    if (count > capacity)
        finding("pop: %llu buffers, capacity %u", (unsigned long long)count, capacity);
    if (count == 0)
        finding("pop: a chain of no buffers");
    uint64_t sums[2] = {0, 0};
    uint32_t outside = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (iov[i].len == 0)
            finding("pop: buffer %llu has length 0", (unsigned long long)i);
        if (!iov[i].base && (directions & VMRUN_VIRTQ_KEEP_BAD_BUFFERS)) {
            outside++; /* outside RAM, kept without an address */
        } else if (region_of_host(iov[i].base, iov[i].len) < 0)
            finding("pop: buffer %llu (%p, %u bytes) is not inside one region",
                    (unsigned long long)i, (void *)iov[i].base, iov[i].len);
        sums[i >= chain->readable] += iov[i].len;
    }
    if (chain->outside != outside)
        finding("pop: chain->outside is %u, %u buffers have no address", chain->outside, outside);
    if (sums[0] != chain->readable_bytes || sums[1] != chain->writable_bytes)
        finding("pop: byte totals %llu/%llu, buffers sum to %llu/%llu",
                (unsigned long long)chain->readable_bytes,
                (unsigned long long)chain->writable_bytes, (unsigned long long)sums[0],
                (unsigned long long)sums[1]);
    if (chain->readable_bytes + chain->writable_bytes > UINT32_MAX)
        finding("pop: a chain of %llu bytes",
                (unsigned long long)(chain->readable_bytes + chain->writable_bytes));
    if (chain->readable && !(directions & VMRUN_VIRTQ_READABLE))
        finding("pop: readable buffers on a queue that takes none");
    if (chain->writable && !(directions & VMRUN_VIRTQ_WRITABLE))
        finding("pop: writable buffers on a queue that takes none");
}

/* -1: the ring is broken (idx too far ahead); else the chains waiting. */
static int model_waiting(void)
{
    uint16_t idx = guest_read16(q.avail_addr + 2, 0);
    uint16_t waiting = (uint16_t)(idx - model.next_avail);
    return waiting > q.size ? -1 : waiting;
}

static void do_pop(void)
{
    int usable = model_usable();
    /* What pop must return: `want`, or when that is negative any error in `errors`. */
    int want = usable ? 1 : (model.ready ? VMRUN_VIRTQ_E_BROKEN : VMRUN_VIRTQ_E_NOT_READY);
    uint16_t head = 0;
    uint32_t count = 0;
    if (usable) {
        int waiting = model_waiting();
        if (waiting < 0) {
            want = VMRUN_VIRTQ_E_AVAIL_IDX;
        } else if (waiting == 0) {
            want = 0;
        } else {
            head = guest_read16(q.avail_addr + 4 + 2 * (uint64_t)(model.next_avail & (q.size - 1)),
                                0);
            if (head >= q.size || model.taken[head])
                want = VMRUN_VIRTQ_E_HEAD;
        }
    }
    uint32_t errors = want < 0 ? error_bit(want) : 0;
    if (want == 1) {
        errors = reference_walk(head, &count);
        if (errors)
            want = -1000; /* one of `errors` */
    }
    struct vmrun_virtq_chain chain = {.capacity = capacity, .iov = iov};
    int got = vmrun_virtq_pop(&q, &chain, directions);
    note("pop -> %d (head %u, %u+%u buffers)", got, chain.head, chain.readable, chain.writable);
    if (got != 1 && got != 0 && !known_error(got))
        finding("pop returned %d, no vmrun_virtq_error", got);
    if (!usable && got >= 0)
        finding("pop on a %s queue returned %d", model.ready ? "broken" : "not ready", got);
    if (got == 1)
        check_chain(&chain);
    if (want < 0 ? got >= 0 || !(errors & error_bit(got)) : got != want)
        finding("pop returned %d (%s), expected %d (negative: an error of set %#x)", got,
                vmrun_virtq_strerror(got), want, errors);
    if (got == 1) {
        if (chain.head != head)
            finding("pop: head %u, the ring has %u", chain.head, head);
        if (chain.readable + chain.writable != count)
            finding("pop: %u buffers, expected %u", chain.readable + chain.writable, count);
        for (uint32_t i = 0; i < count; i++) {
            int writable = i >= chain.readable;
            if (iov[i].base != expected[i].base || iov[i].len != expected[i].len ||
                writable != expected[i].writable)
                finding("pop: buffer %u is %p+%u (%s), expected %p+%u (%s)", i,
                        (void *)iov[i].base, iov[i].len, writable ? "w" : "r",
                        (void *)expected[i].base, expected[i].len,
                        expected[i].writable ? "w" : "r");
        }
        if (in_flight[head] != (UINT64_C(1) << 32 | chain.writable_bytes))
            finding("pop: in_flight[%u] is %#llx, not 1 << 32 | %llu", head,
                    (unsigned long long)in_flight[head],
                    (unsigned long long)chain.writable_bytes);
        take(head, (uint32_t)chain.writable_bytes);
        model.next_avail++;
        if (model.notify_enabled && has_feature(VMRUN_VIRTIO_F_EVENT_IDX) &&
            guest_read16(avail_event_gpa(), 0) != model.next_avail)
            finding("pop: avail_event %u, next_avail %u", guest_read16(avail_event_gpa(), 0),
                    model.next_avail);
    } else if (usable && got < 0) {
        break_model(got);
    }
    check_state("pop");
    check_writes("pop", got == 1);
}

static void do_push(uint16_t head, uint32_t written)
{
    int want = VMRUN_VIRTQ_OK;
    if (!model.ready)
        want = VMRUN_VIRTQ_E_NOT_READY;
    else if (model.error)
        want = VMRUN_VIRTQ_E_BROKEN;
    else if (head >= q.size || !model.taken[head])
        want = VMRUN_VIRTQ_E_USED_HEAD;
    int got = vmrun_virtq_push(&q, head, written);
    note("push %u (%u written) -> %d", head, written, got);
    if (!known_error(got))
        finding("push returned %d, no vmrun_virtq_error", got);
    if (got != want)
        finding("push of head %u returned %d (%s), expected %d", head, got,
                vmrun_virtq_strerror(got), want);
    if (got == VMRUN_VIRTQ_OK) {
        uint64_t elem = q.used_addr + 4 + 8 * (uint64_t)(model.next_used & (q.size - 1));
        /* The count is cut to the chain's writable bytes. */
        if (written > model.writable_bytes[head])
            written = model.writable_bytes[head];
        give_back(head);
        model.next_used++;
        if (in_flight[head])
            finding("push: in_flight[%u] is still %#llx", head,
                    (unsigned long long)in_flight[head]);
        if (guest_read16(q.used_addr + 2, 0) != model.next_used)
            finding("push: used idx %u, expected %u", guest_read16(q.used_addr + 2, 0),
                    model.next_used);
        if (guest_read32(elem) != head || guest_read32(elem + 4) != written)
            finding("push: used element {%u, %u}, expected {%u, %u}", guest_read32(elem),
                    guest_read32(elem + 4), head, written);
    }
    check_state("push");
    check_writes("push", got == VMRUN_VIRTQ_OK);
}

static void do_interrupt(void)
{
    int usable = model_usable();
    int want = 0;
    if (usable && !has_feature(VMRUN_VIRTIO_F_EVENT_IDX)) {
        want = !(guest_read16(q.avail_addr, 0) & VMRUN_VIRTQ_AVAIL_F_NO_INTERRUPT);
    } else if (usable) {
        /* The driver's vring_need_event: interrupt when used_event is in [old, now). The
         * first call has no `old` yet: it interrupts. */
        uint16_t old = model.signalled_used, now = model.next_used;
        uint16_t event = guest_read16(used_event_gpa(), 0);
        want = !model.signalled_valid || (uint16_t)(now - event - 1) < (uint16_t)(now - old);
        model.signalled_valid = 1;
        model.signalled_used = now;
    }
    int got = vmrun_virtq_should_interrupt(&q);
    note("should_interrupt -> %d", got);
    if (got != want)
        finding("should_interrupt returned %d, expected %d", got, want);
    check_state("should_interrupt");
    check_writes("should_interrupt", 0);
}

static void do_notify(int enable)
{
    int usable = model_usable();
    int got = vmrun_virtq_notify(&q, enable);
    note("notify %d -> %d", enable, got);
    int want = 0;
    if (usable) {
        model.notify_enabled = enable;
        if (has_feature(VMRUN_VIRTIO_F_EVENT_IDX)) {
            if (enable && guest_read16(avail_event_gpa(), 0) != model.next_avail)
                finding("notify: avail_event %u, next_avail %u",
                        guest_read16(avail_event_gpa(), 0), model.next_avail);
        } else if (guest_read16(q.used_addr, 0) != (enable ? 0 : VMRUN_VIRTQ_USED_F_NO_NOTIFY)) {
            finding("notify %d: used flags %#x", enable, guest_read16(q.used_addr, 0));
        }
        if (enable) {
            /* Read after the call: the engine's own write may have moved the avail idx, where
             * the guest laid the rings over each other. */
            int waiting = model_waiting();
            if (waiting < 0)
                break_model(VMRUN_VIRTQ_E_AVAIL_IDX);
            want = waiting > 0;
        }
    }
    if (got != want)
        finding("notify %d returned %d, expected %d", enable, got, want);
    check_state("notify");
    check_writes("notify", usable);
}

static void do_pending(void)
{
    int want = 0;
    if (model_usable()) {
        int waiting = model_waiting();
        if (waiting < 0)
            break_model(VMRUN_VIRTQ_E_AVAIL_IDX);
        else
            want = waiting;
    }
    int got = vmrun_virtq_pending(&q);
    note("pending -> %d", got);
    if (got != want)
        finding("pending returned %d, expected %d", got, want);
    check_state("pending");
    check_writes("pending", 0);
}

/* ---- one input --------------------------------------------------------------------------- */

static uint16_t ring_mask(void)
{
    return valid_size() ? (uint16_t)(q.size - 1) : 0xFFFF;
}

/* The driver makes chain `head` available: into the ring at its idx, then idx + 1. */
static void guest_add(uint16_t head)
{
    uint16_t idx = guest_read16(q.avail_addr + 2, 0);
    note("guest: add head %u at avail idx %u", head, idx);
    guest_write16(q.avail_addr + 4 + 2 * (uint64_t)(idx & ring_mask()), head);
    guest_write16(q.avail_addr + 2, (uint16_t)(idx + 1));
}

static void guest_op(struct input *in, int op)
{
    uint16_t mask = ring_mask();
    switch (op) {
    case G_AVAIL_IDX: {
        uint8_t mode = in8(in);
        uint16_t idx = (mode & 1) ? in16(in)
                                  : (uint16_t)(guest_read16(q.avail_addr + 2, 0) + (mode >> 1));
        note("guest: avail idx = %u", idx);
        guest_write16(q.avail_addr + 2, idx);
        break;
    }
    case G_RING: {
        uint16_t slot = in16(in) & mask, value = in16(in);
        note("guest: ring[%u] = %u", slot, value);
        guest_write16(q.avail_addr + 4 + 2 * (uint64_t)slot, value);
        break;
    }
    case G_DESC: {
        uint8_t where = in8(in);
        uint64_t at = (where & 1) ? in_gpa(in)
                                  : q.desc_addr + DESC_SIZE * (uint64_t)(in16(in) & mask);
        uint8_t raw[DESC_SIZE];
        uint64_t addr = in_gpa(in);
        uint32_t len = in_len(in);
        uint16_t flags = in16(in), next = in16(in);
        memcpy(raw, &addr, 8);
        memcpy(raw + 8, &len, 4);
        memcpy(raw + 12, &flags, 2);
        memcpy(raw + 14, &next, 2);
        note("guest: desc at %#llx = {%#llx, %u, %#x, %u}", (unsigned long long)at,
             (unsigned long long)addr, len, flags, next);
        guest_write(at, raw, sizeof raw);
        break;
    }
    case G_ADD:
        guest_add(in16(in));
        break;
    case G_FLAGS: {
        uint8_t which = in8(in) % 4;
        uint16_t value = in16(in);
        uint64_t at[4] = {q.avail_addr, used_event_gpa(), q.used_addr, avail_event_gpa()};
        note("guest: field %u = %u", which, value);
        guest_write16(at[which], value);
        break;
    }
    case G_BYTES: {
        uint64_t at = in_gpa(in);
        uint8_t n = in8(in) % 33, bytes[32];
        for (uint8_t i = 0; i < n; i++)
            bytes[i] = in8(in);
        note("guest: %u bytes at %#llx", n, (unsigned long long)at);
        guest_write(at, bytes, n);
        break;
    }
    }
}

static void run(struct input *in)
{
    make_regions(in);

    memset(&q, 0, sizeof q);
    uint8_t size_sel = in8(in);
    q.size = (size_sel & 0x80) ? in16(in) : (uint16_t)(1u << (size_sel % 16));
    q.desc_addr = in_gpa(in);
    q.avail_addr = in_gpa(in);
    q.used_addr = in_gpa(in);
    uint8_t features = in8(in);
    q.features = (features & 8) ? ~((UINT64_C(1) << VMRUN_VIRTIO_F_INDIRECT_DESC) |
                                    (UINT64_C(1) << VMRUN_VIRTIO_F_EVENT_IDX) |
                                    (UINT64_C(1) << VMRUN_VIRTIO_F_VERSION_1))
                                : 0;
    q.features |= (uint64_t)(features & 1) << VMRUN_VIRTIO_F_INDIRECT_DESC;
    q.features |= (uint64_t)((features >> 1) & 1) << VMRUN_VIRTIO_F_EVENT_IDX;
    q.features |= (uint64_t)((features >> 2) & 1) << VMRUN_VIRTIO_F_VERSION_1;
    q.regions = regions;
    q.region_count = region_count;
    uint8_t directions_sel = in8(in);
    directions = 1 + (directions_sel & 0x7F) % 3;
    if (directions_sel & 0x80)
        directions |= VMRUN_VIRTQ_KEEP_BAD_BUFFERS;
    uint16_t capacity_sel = in16(in);
    capacity = (capacity_sel & 0x8000) ? BIG_CAPACITY : capacity_sel % CAPACITY_MODULUS;

    /* Exactly as large as the engine may use: ASan reports a byte more. */
    in_flight = malloc(q.size * sizeof *in_flight);
    iov = malloc(capacity * sizeof *iov);
    if ((q.size && !in_flight) || (capacity && !iov))
        abort();
    do_setup();

    uint32_t cycles_left = CYCLE_BUDGET;
    work = 0;
    for (int ops = 0; ops < MAX_OPS && in->left && work < WORK_BUDGET; ops++) {
        int op = in8(in) % OP_COUNT;
        switch (op) {
        case OP_POP:
            do_pop();
            break;
        case OP_PUSH_TAKEN: {
            uint8_t k = in8(in);
            uint32_t w = in32(in);
            if (model.taken_count) {
                uint16_t head = model.taken_list[(k & 0x3F) % model.taken_count];
                uint32_t bytes = model.writable_bytes[head];
                if (k >> 6 == 0)
                    w = (uint32_t)(w % ((uint64_t)bytes + 1));
                else if (k >> 6 == 1)
                    w = bytes + (uint32_t)(int8_t)w; /* around the end: cut or not */
                do_push(head, w);
            }
            break;
        }
        case OP_PUSH_ANY: {
            uint16_t head = in16(in);
            do_push(head, in32(in));
            break;
        }
        case OP_INTERRUPT:
            do_interrupt();
            break;
        case OP_NOTIFY:
            do_notify(in8(in) & 1);
            break;
        case OP_PENDING:
            do_pending();
            break;
        case OP_RESET:
            do_setup();
            break;
        case OP_CYCLE: {
            uint16_t head = in16(in);
            uint32_t n = in16(in);
            n = n < cycles_left ? n : cycles_left;
            cycles_left -= n;
            writes_deferred = 1;
            for (uint32_t i = 0; i < n && model_usable() && work < WORK_BUDGET; i++) {
                guest_add(head);
                uint32_t taken = model.taken_count;
                do_pop();
                if (model.taken_count > taken)
                    do_push(model.taken_list[model.taken_count - 1], 0);
                do_interrupt();
            }
            writes_deferred = 0;
            check_writes("a cycle of pops and pushes", 1);
            break;
        }
        default:
            guest_op(in, op);
            break;
        }
    }

    free(in_flight);
    free(iov);
    in_flight = NULL;
    iov = NULL;
    forget_taken();
    free_regions();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int initialized;
    if (!initialized) {
        trace = getenv("VQ_TRACE") != NULL;
        initialized = 1;
        if (strcmp(vmrun_virtq_strerror(1), "unknown") ||
            strcmp(vmrun_virtq_strerror(VMRUN_VIRTQ_E_BROKEN - 1), "unknown") ||
            !strcmp(vmrun_virtq_strerror(VMRUN_VIRTQ_OK), "unknown"))
            finding("vmrun_virtq_strerror names a value outside enum vmrun_virtq_error");
    }
    struct input in = {data, size};
    run(&in);
    return 0;
}
