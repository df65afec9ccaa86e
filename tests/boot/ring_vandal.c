/* A hostile guest program: a driver of its own for the virtio-rng that writes garbage into
 * its queue.
 *
 * ring_vandal MMIO_START
 *
 * MMIO_START is the rng's virtio-mmio window (its guest driver unbound, so that /dev/mem
 * maps it). Guest RAM is out of /dev/mem's reach (STRICT_DEVMEM), so the rings and buffers
 * are this program's own pages: anonymous, locked, one page per structure (nothing assumes
 * two pages are physically contiguous), their guest physical addresses read from
 * /proc/self/pagemap (root sees the frame numbers).
 *
 * Each round resets the device, negotiates VERSION_1 and INDIRECT_DESC, sets up queue 0 with
 * 16 entries and empty rings, sets DRIVER_OK (the device must take the rings), and only then
 * writes the round's chain and notifies:
 *   good              one writable buffer: the device fills it (used len, bytes changed)
 *   loop              a chain whose next points back to its head
 *   outside-ram       a chain whose second buffer lies 1 TiB up, far beyond guest RAM
 *   avail-ahead       an available idx 0x8000 entries ahead of the device
 *   readable          a device-readable buffer on the rng's queue of writable buffers
 *   nested-indirect   an indirect table whose entry is an indirect table
 *   good-again        after all that and a reset, one writable buffer again: filled
 *   good-indirect     a writable buffer through one indirect table: filled
 * A bad round expects DEVICE_NEEDS_RESET in Status and the configuration-change bit in
 * InterruptStatus (waited for, bounded), nothing in the used ring and the buffer untouched.
 * Each round prints one line, "round NAME: ... ok" or "round NAME: ... FAILED (why)".
 * Exit status: 42 when every expectation held, 1 when one did not, 2 when the program could
 * not start (no /dev/mem, no frame numbers, no rng at MMIO_START).
 * Built static by tests/boot/test_ring_vandal.py and carried in a user initramfs.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum {
    PAGE = 4096,
    QUEUE_SIZE = 16,
    BUFFER_LEN = 512,
    PATTERN = 0xa5,
    ALL_HELD = 42,
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

    S_ACKNOWLEDGE = 1,
    S_DRIVER = 2,
    S_DRIVER_OK = 4,
    S_FEATURES_OK = 8,
    S_NEEDS_RESET = 64,
    INT_USED = 1,
    INT_CONFIG = 2,

    F_INDIRECT_DESC = 28, /* bit 28: in the low word */
    F_VERSION_1_HIGH = 0, /* bit 32: bit 0 of the high word */

    D_NEXT = 1,
    D_WRITE = 2,
    D_INDIRECT = 4,
};

#define VIRTIO_MAGIC 0x74726976u /* "virt" */
#define RNG_DEVICE_ID 4u
#define OUTSIDE_RAM 0x10000000000ull /* 1 TiB */

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[QUEUE_SIZE];
};

struct used {
    uint16_t flags;
    uint16_t idx;
    struct {
        uint32_t id;
        uint32_t len;
    } ring[QUEUE_SIZE];
};

/* One page each, and its guest physical address. */
struct page {
    void *at;
    uint64_t gpa;
};

enum { P_DESC, P_AVAIL, P_USED, P_BUFFER, P_TABLE, P_INNER_TABLE, PAGES };

static volatile uint32_t *regs;
static struct page pages[PAGES];

static uint32_t rd(unsigned offset)
{
    return regs[offset / 4];
}

static void wr(unsigned offset, uint32_t value)
{
    regs[offset / 4] = value;
}

static struct desc *descs(void) { return pages[P_DESC].at; }
static struct avail *avail(void) { return pages[P_AVAIL].at; }
static struct used *used(void) { return pages[P_USED].at; }
static uint8_t *buffer(void) { return pages[P_BUFFER].at; }

static uint16_t used_idx(void)
{
    return __atomic_load_n(&used()->idx, __ATOMIC_ACQUIRE);
}

static void sleep_ms(long ms)
{
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* The guest physical address of the page at `at` (locked: it stays where it is). */
static int physical(int pagemap, void *at, uint64_t *gpa)
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

static int map_pages(void)
{
    /* Locked pages may still be moved by compaction unless the kernel is told not to. */
    int knob = open("/proc/sys/vm/compact_unevictable_allowed", O_WRONLY);
    if (knob >= 0) {
        (void)!write(knob, "0", 1);
        close(knob);
    }
    uint8_t *area = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (area == MAP_FAILED || mlock(area, PAGES * PAGE) != 0) {
        perror("ring_vandal: mmap/mlock");
        return -1;
    }
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (pagemap < 0) {
        perror("ring_vandal: /proc/self/pagemap");
        return -1;
    }
    for (int i = 0; i < PAGES; i++) {
        pages[i].at = area + (size_t)i * PAGE;
        memset(pages[i].at, 0, PAGE); /* touched: present */
        if (physical(pagemap, pages[i].at, &pages[i].gpa) != 0) {
            fprintf(stderr, "ring_vandal: no frame number for page %d (not root?)\n", i);
            close(pagemap);
            return -1;
        }
    }
    close(pagemap);
    return 0;
}

/* ---- one round ----------------------------------------------------------------------- */

static char why[256]; /* the first expectation that failed in this round, empty if none */

static void expect(int held, const char *format, ...)
{
    if (held || why[0])
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(why, sizeof why, format, args);
    va_end(args);
}

static void reset(void)
{
    wr(STATUS, 0);
    uint32_t status = rd(STATUS);
    expect(status == 0, "status 0x%x after a reset", status);
    uint32_t interrupt = rd(INTERRUPT_STATUS);
    expect(interrupt == 0, "interrupt status 0x%x after a reset", interrupt);
}

static void set_address(unsigned low, uint64_t gpa)
{
    wr(low, (uint32_t)gpa);
    wr(low + 4, (uint32_t)(gpa >> 32));
}

/* Reset, negotiate, set up queue 0 over empty rings and start the device: 0 when it took
 * all of it (and `why` says what it refused otherwise). */
static int start_device(void)
{
    for (int i = 0; i < PAGES; i++)
        memset(pages[i].at, 0, PAGE);
    memset(buffer(), PATTERN, PAGE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);

    reset();
    wr(STATUS, S_ACKNOWLEDGE);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(DEVICE_FEATURES_SEL, 0);
    uint32_t low = rd(DEVICE_FEATURES);
    wr(DEVICE_FEATURES_SEL, 1);
    uint32_t high = rd(DEVICE_FEATURES);
    expect((low >> F_INDIRECT_DESC) & 1, "INDIRECT_DESC not offered (0x%08x)", low);
    expect((high >> F_VERSION_1_HIGH) & 1, "VERSION_1 not offered (0x%08x)", high);
    wr(DRIVER_FEATURES_SEL, 0);
    wr(DRIVER_FEATURES, 1u << F_INDIRECT_DESC);
    wr(DRIVER_FEATURES_SEL, 1);
    wr(DRIVER_FEATURES, 1u << F_VERSION_1_HIGH);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    uint32_t status = rd(STATUS);
    expect(status & S_FEATURES_OK, "FEATURES_OK refused (status 0x%x)", status);

    wr(QUEUE_SEL, 0);
    uint32_t max = rd(QUEUE_NUM_MAX);
    expect(max >= QUEUE_SIZE, "QueueNumMax %u", max);
    expect(rd(QUEUE_READY) == 0, "queue 0 ready before it was set up");
    wr(QUEUE_NUM, QUEUE_SIZE);
    set_address(QUEUE_DESC_LOW, pages[P_DESC].gpa);
    set_address(QUEUE_DRIVER_LOW, pages[P_AVAIL].gpa);
    set_address(QUEUE_DEVICE_LOW, pages[P_USED].gpa);
    wr(QUEUE_READY, 1);
    expect(rd(QUEUE_READY) == 1, "queue 0 not ready after QueueReady 1");
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    status = rd(STATUS);
    uint32_t want = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    expect(status == want, "status 0x%x after DRIVER_OK, before any garbage", status);
    return why[0] ? -1 : 0;
}

/* Offer the chain at `head` (or, for avail-ahead, an idx far ahead) and notify. */
static void offer(uint16_t head, uint16_t idx)
{
    avail()->ring[0] = head;
    __atomic_store_n(&avail()->idx, idx, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the ring before the notification */
    wr(QUEUE_NOTIFY, 0);
}

static int changed_bytes(size_t from, size_t to)
{
    int changed = 0;
    for (size_t i = from; i < to; i++)
        changed += buffer()[i] != PATTERN;
    return changed;
}

/* A bad round: the device says it needs a reset, and gave nothing back. */
static void expect_broken(void)
{
    uint32_t status = 0, interrupt = 0;
    long deadline = now_ms() + WAIT_MS;
    do {
        status |= rd(STATUS);
        interrupt |= rd(INTERRUPT_STATUS);
        if ((status & S_NEEDS_RESET) && (interrupt & INT_CONFIG))
            break;
        sleep_ms(1);
    } while (now_ms() < deadline);
    int changed = changed_bytes(0, PAGE);
    printf("status 0x%02x interrupt 0x%x used idx %u changed bytes %d: ",
           status, interrupt, used_idx(), changed);
    expect(status & S_NEEDS_RESET, "no DEVICE_NEEDS_RESET in %d ms", WAIT_MS);
    expect(interrupt & INT_CONFIG, "no configuration-change interrupt in %d ms", WAIT_MS);
    expect(used_idx() == 0, "the device used %u chains", used_idx());
    expect(changed == 0, "the device wrote %d bytes into a refused buffer", changed);
}

/* A good round: the device filled the buffer of the chain at head 0 and says so. */
static void expect_filled(void)
{
    /* The worker publishes the used idx first, then raises the interrupt: both waited for. */
    uint32_t interrupt = 0;
    long deadline = now_ms() + WAIT_MS;
    do {
        interrupt |= rd(INTERRUPT_STATUS);
        if (used_idx() != 0 && (interrupt & INT_USED))
            break;
        sleep_ms(1);
    } while (now_ms() < deadline);
    uint16_t idx = used_idx();
    uint32_t id = used()->ring[0].id, len = used()->ring[0].len;
    uint32_t status = rd(STATUS);
    int inside = changed_bytes(0, BUFFER_LEN), beyond = changed_bytes(BUFFER_LEN, PAGE);
    printf("status 0x%02x interrupt 0x%x used idx %u id %u len %u changed bytes "
           "%d + %d: ", status, interrupt, idx, id, len, inside, beyond);
    expect(idx == 1, "used idx %u, not 1, after %d ms", idx, WAIT_MS);
    expect(id == 0 && len == BUFFER_LEN, "used element {%u, %u}, not {0, %d}", id, len,
           BUFFER_LEN);
    /* Random bytes each equal the pattern with odds 1/256: 512 of them, a few at most. */
    expect(inside > BUFFER_LEN * 9 / 10, "only %d of %d bytes changed", inside, BUFFER_LEN);
    expect(beyond == 0, "%d bytes changed beyond the buffer", beyond);
    expect(!(status & S_NEEDS_RESET), "DEVICE_NEEDS_RESET on a good chain");
    expect(interrupt & INT_USED, "no used-buffer interrupt in %d ms", WAIT_MS);
    wr(INTERRUPT_ACK, interrupt);
}

static struct desc writable(uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    return (struct desc){.addr = addr, .len = len, .flags = D_WRITE | flags, .next = next};
}

static int round_(const char *name)
{
    why[0] = 0;
    uint64_t buf = pages[P_BUFFER].gpa;
    struct desc *table = pages[P_TABLE].at, *inner = pages[P_INNER_TABLE].at;
    if (start_device() == 0) {
        int good = 1;
        uint16_t idx = 1;
        if (!strcmp(name, "good") || !strcmp(name, "good-again")) {
            descs()[0] = writable(buf, BUFFER_LEN, 0, 0);
        } else if (!strcmp(name, "loop")) {
            descs()[0] = writable(buf, BUFFER_LEN / 2, D_NEXT, 1);
            descs()[1] = writable(buf + BUFFER_LEN / 2, BUFFER_LEN / 2, D_NEXT, 0);
            good = 0;
        } else if (!strcmp(name, "outside-ram")) {
            descs()[0] = writable(buf, BUFFER_LEN, D_NEXT, 1);
            descs()[1] = writable(OUTSIDE_RAM, BUFFER_LEN, 0, 0);
            good = 0;
        } else if (!strcmp(name, "avail-ahead")) {
            descs()[0] = writable(buf, BUFFER_LEN, 0, 0);
            idx = 0x8000;
            good = 0;
        } else if (!strcmp(name, "readable")) {
            descs()[0] = (struct desc){.addr = buf, .len = BUFFER_LEN};
            good = 0;
        } else if (!strcmp(name, "nested-indirect")) {
            descs()[0] = (struct desc){.addr = pages[P_TABLE].gpa, .len = sizeof *table,
                                       .flags = D_INDIRECT};
            table[0] = (struct desc){.addr = pages[P_INNER_TABLE].gpa, .len = sizeof *inner,
                                     .flags = D_INDIRECT};
            inner[0] = writable(buf, BUFFER_LEN, 0, 0);
            good = 0;
        } else if (!strcmp(name, "good-indirect")) {
            descs()[0] = (struct desc){.addr = pages[P_TABLE].gpa, .len = sizeof *table,
                                       .flags = D_INDIRECT};
            table[0] = writable(buf, BUFFER_LEN, 0, 0);
        }
        offer(0, idx);
        printf("round %s: ", name);
        if (good)
            expect_filled();
        else
            expect_broken();
    } else {
        printf("round %s: setup refused: ", name);
    }
    reset();
    if (why[0])
        printf("FAILED (%s)\n", why);
    else
        printf("ok\n");
    fflush(stdout);
    return why[0] ? -1 : 0;
}

static const char *const ROUNDS[] = {
    "good", "loop", "outside-ram", "avail-ahead", "readable", "nested-indirect",
    "good-again", "good-indirect",
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ring_vandal MMIO_START\n");
        return 2;
    }
    off_t start = (off_t)strtoull(argv[1], NULL, 0);
    int mem = open("/dev/mem", O_RDWR | O_SYNC);
    if (mem < 0) {
        perror("ring_vandal: /dev/mem");
        return 2;
    }
    regs = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mem, start);
    if (regs == MAP_FAILED) {
        perror("ring_vandal: mmap /dev/mem");
        return 2;
    }
    uint32_t magic = rd(MAGIC_VALUE), version = rd(VERSION), device = rd(DEVICE_ID);
    if (magic != VIRTIO_MAGIC || version != 2 || device != RNG_DEVICE_ID) {
        fprintf(stderr, "ring_vandal: no virtio-mmio v2 rng at %#llx (0x%x %u %u)\n",
                (unsigned long long)start, magic, version, device);
        return 2;
    }
    if (map_pages() != 0)
        return 2;
    int failed = 0;
    for (size_t i = 0; i < sizeof ROUNDS / sizeof ROUNDS[0]; i++)
        failed |= round_(ROUNDS[i]) != 0;
    printf(failed ? "vandal: an expectation failed\n" : "vandal: every expectation held\n");
    fflush(stdout);
    return failed ? 1 : ALL_HELD;
}
