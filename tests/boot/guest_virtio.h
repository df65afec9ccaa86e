/* What the hostile-guest programs that drive a virtio-mmio device themselves share
 * (ring_vandal.c, blk_vandal.c): the window mapped through /dev/mem, its registers, locked
 * pages with their guest physical addresses, the round's first failed expectation, a reset,
 * feature negotiation and queue 0's set-up, and bounded waits.
 *
 * Included by the program's source (gcc finds it next to the source; tests/boot/
 * guest_program.py builds one source file); each function is static inline so that a program
 * using only some of them still builds with -Wall -Wextra -Werror.
 *
 * Guest RAM is out of /dev/mem's reach (STRICT_DEVMEM), so rings and buffers are the
 * program's own pages: anonymous, locked, one page per structure (nothing assumes two pages
 * are physically contiguous), their guest physical addresses read from /proc/self/pagemap
 * (root sees the frame numbers). The window itself maps only once its guest driver is
 * unbound (the kernel no longer holds its resource).
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum {
    PAGE = 4096,
    ALL_HELD = 42,     /* the exit status when every expectation held */
    WAIT_MS = 30000, /* for the device's answer: generous, the guest may be nested twice */

    /* virtio-mmio version 2 registers (runner/devices/virtio/mmio.py, virtio 1.2 4.2.2). */
    MAGIC_VALUE = 0x000,
    VERSION = 0x004,
    DEVICE_ID = 0x008,
    DEVICE_FEATURES = 0x010,
    DEVICE_FEATURES_SEL = 0x014,
    DRIVER_FEATURES = 0x020,
    DRIVER_FEATURES_SEL = 0x024,
    QUEUE_SEL = 0x030,
    QUEUE_NUM_MAX = 0x034,
    QUEUE_NUM = 0x038,
    QUEUE_READY = 0x044,
    QUEUE_NOTIFY = 0x050,
    INTERRUPT_STATUS = 0x060,
    INTERRUPT_ACK = 0x064,
    STATUS = 0x070,
    QUEUE_DESC_LOW = 0x080,
    QUEUE_DESC_HIGH = 0x084,
    QUEUE_DRIVER_LOW = 0x090,
    QUEUE_DRIVER_HIGH = 0x094,
    QUEUE_DEVICE_LOW = 0x0a0,
    QUEUE_DEVICE_HIGH = 0x0a4,
    CONFIG_GENERATION = 0x0fc,
    CONFIG = 0x100,

    S_ACKNOWLEDGE = 1,
    S_DRIVER = 2,
    S_DRIVER_OK = 4,
    S_FEATURES_OK = 8,
    S_NEEDS_RESET = 64,
    S_RUNNING = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    INT_USED = 1,
    INT_CONFIG = 2,

    F_INDIRECT_DESC = 28,
    F_VERSION_1 = 32,

    D_NEXT = 1,
    D_WRITE = 2,
    D_INDIRECT = 4,
};

#define VIRTIO_MAGIC 0x74726976u /* "virt" */
#define OUTSIDE_RAM 0x10000000000ull /* 1 TiB: far beyond any test VM's RAM */

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};

struct used {
    uint16_t flags;
    uint16_t idx;
    struct {
        uint32_t id;
        uint32_t len;
    } ring[];
};

/* One page, and its guest physical address. */
struct page {
    void *at;
    uint64_t gpa;
};

/* A feature the program needs, by bit number and name (for the failure message). */
struct feature {
    unsigned bit;
    const char *name;
};

static volatile uint32_t *regs; /* the device's window */

static inline uint32_t rd(unsigned offset)
{
    return regs[offset / 4];
}

static inline void wr(unsigned offset, uint32_t value)
{
    regs[offset / 4] = value;
}

static inline void sleep_ms(long ms)
{
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static inline long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* Map the window at `base` and check it is a virtio-mmio version 2 `what` (`device_id`):
 * 0, or -1 said on stderr as `program`. */
static inline int open_window(const char *program, unsigned long long base, uint32_t device_id,
                              const char *what)
{
    int mem = open("/dev/mem", O_RDWR | O_SYNC);
    if (mem < 0) {
        fprintf(stderr, "%s: /dev/mem: %s\n", program, strerror(errno));
        return -1;
    }
    regs = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mem, (off_t)base);
    if (regs == MAP_FAILED) {
        fprintf(stderr, "%s: mmap /dev/mem: %s\n", program, strerror(errno));
        return -1;
    }
    uint32_t magic = rd(MAGIC_VALUE), version = rd(VERSION), device = rd(DEVICE_ID);
    if (magic != VIRTIO_MAGIC || version != 2 || device != device_id) {
        fprintf(stderr, "%s: no virtio-mmio v2 %s at %#llx (0x%x %u %u)\n", program, what,
                base, magic, version, device);
        return -1;
    }
    return 0;
}

/* The guest physical address of the page at `at` (locked: it stays where it is). */
static inline int physical(int pagemap, void *at, uint64_t *gpa)
{
    uint64_t entry;
    off_t offset = (off_t)((uintptr_t)at / PAGE * sizeof entry);
    if (pread(pagemap, &entry, sizeof entry, offset) != (ssize_t)sizeof entry)
        return -1;
    uint64_t pfn = entry & ((1ull << 55) - 1);
    if (!(entry >> 63) || pfn == 0) /* not present, or frame numbers hidden (not root) */
        return -1;
    *gpa = pfn * PAGE;
    return 0;
}

/* `count` locked, zeroed pages with their guest physical addresses: 0, or -1 said on stderr. */
static inline int map_pages(const char *program, struct page *pages, int count)
{
    /* Locked pages may still be moved by compaction unless the kernel is told not to. */
    int knob = open("/proc/sys/vm/compact_unevictable_allowed", O_WRONLY);
    if (knob >= 0) {
        (void)!write(knob, "0", 1);
        close(knob);
    }
    uint8_t *area = mmap(NULL, (size_t)count * PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (area == MAP_FAILED || mlock(area, (size_t)count * PAGE) != 0) {
        fprintf(stderr, "%s: mmap/mlock: %s\n", program, strerror(errno));
        return -1;
    }
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (pagemap < 0) {
        fprintf(stderr, "%s: /proc/self/pagemap: %s\n", program, strerror(errno));
        return -1;
    }
    for (int i = 0; i < count; i++) {
        pages[i].at = area + (size_t)i * PAGE;
        memset(pages[i].at, 0, PAGE); /* touched: present */
        if (physical(pagemap, pages[i].at, &pages[i].gpa) != 0) {
            fprintf(stderr, "%s: no frame number for page %d (not root?)\n", program, i);
            close(pagemap);
            return -1;
        }
    }
    close(pagemap);
    return 0;
}

/* ---- expectations of one round ------------------------------------------------------- */

static char why[256]; /* the first expectation that failed in this round, empty if none */

__attribute__((format(printf, 2, 3))) static inline void expect(int held, const char *format,
                                                                ...)
{
    if (held || why[0])
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(why, sizeof why, format, args);
    va_end(args);
}

static inline void reset(void)
{
    wr(STATUS, 0);
    uint32_t status = rd(STATUS);
    expect(status == 0, "status 0x%x after a reset", status);
    uint32_t interrupt = rd(INTERRUPT_STATUS);
    expect(interrupt == 0, "interrupt status 0x%x after a reset", interrupt);
}

static inline void set_address(unsigned low, uint64_t gpa)
{
    wr(low, (uint32_t)gpa);
    wr(low + 4, (uint32_t)(gpa >> 32));
}

/* Reset, negotiate exactly the `wanted` features (each must be offered), set up queue 0 with
 * `size` entries over the rings at the given addresses and set DRIVER_OK: 0 when the device
 * took all of it (and `why` says what it refused otherwise). */
static inline int start_device(const struct feature *wanted, int count, uint16_t size,
                               uint64_t desc_gpa, uint64_t avail_gpa, uint64_t used_gpa)
{
    reset();
    wr(STATUS, S_ACKNOWLEDGE);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);
    uint32_t offered[2], driver[2] = {0, 0};
    for (unsigned word = 0; word < 2; word++) {
        wr(DEVICE_FEATURES_SEL, word);
        offered[word] = rd(DEVICE_FEATURES);
    }
    for (int i = 0; i < count; i++) {
        unsigned word = wanted[i].bit / 32, bit = wanted[i].bit % 32;
        expect((offered[word] >> bit) & 1, "%s not offered (0x%08x)", wanted[i].name,
               offered[word]);
        driver[word] |= 1u << bit;
    }
    for (unsigned word = 0; word < 2; word++) {
        wr(DRIVER_FEATURES_SEL, word);
        wr(DRIVER_FEATURES, driver[word]);
    }
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    uint32_t status = rd(STATUS);
    expect(status & S_FEATURES_OK, "FEATURES_OK refused (status 0x%x)", status);

    wr(QUEUE_SEL, 0);
    uint32_t max = rd(QUEUE_NUM_MAX);
    expect(max >= size, "QueueNumMax %u", max);
    expect(rd(QUEUE_READY) == 0, "queue 0 ready before it was set up");
    wr(QUEUE_NUM, size);
    set_address(QUEUE_DESC_LOW, desc_gpa);
    set_address(QUEUE_DRIVER_LOW, avail_gpa);
    set_address(QUEUE_DEVICE_LOW, used_gpa);
    wr(QUEUE_READY, 1);
    expect(rd(QUEUE_READY) == 1, "queue 0 not ready after QueueReady 1");
    wr(STATUS, S_RUNNING);
    status = rd(STATUS);
    expect(status == S_RUNNING, "status 0x%x after DRIVER_OK, before any garbage", status);
    return why[0] ? -1 : 0;
}

/* Offer the chain at `head` in available ring entry `slot`, publish `idx` as the available
 * idx and notify queue 0. */
static inline void offer(struct avail *avail, uint16_t slot, uint16_t head, uint16_t idx)
{
    avail->ring[slot] = head;
    __atomic_store_n(&avail->idx, idx, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the ring before the notification */
    wr(QUEUE_NOTIFY, 0);
}

static inline uint16_t used_idx(struct used *used)
{
    return __atomic_load_n(&used->idx, __ATOMIC_ACQUIRE);
}

#endif
