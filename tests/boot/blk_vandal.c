/* A hostile guest program: a driver of its own for a virtio-blk disk that sends it bad
 * requests, which must each get an error status while the device goes on serving.
 *
 * blk_vandal MMIO_BASE SECTORS
 *
 * MMIO_BASE is the disk's virtio-mmio window (its guest driver unbound, so that /dev/mem maps
 * it), SECTORS its capacity in 512-byte sectors. The rings, the request header, the data and
 * the status byte are this program's own locked pages, one per structure, found through
 * /proc/self/pagemap (tests/boot/guest_virtio.h says why and how).
 *
 * The host fills the disk before the run: byte i of sector s is (s * 31 + i) & 0xff (31 is
 * odd: every sector up to 255 differs, and from its neighbours at any byte offset).
 *
 * The device is reset, negotiated (VERSION_1 only) and started once; every request after
 * that goes on the same queue (16 entries), without a reset. A request is three descriptors:
 * the 16-byte header {le32 type; le32 reserved; le64 sector} (readable), the data (writable
 * for IN, readable for OUT) and the status byte (writable, pre-set to 0xff so that an
 * untouched one shows). Its answer is waited for, bounded: the used idx one further, the
 * used-buffer interrupt (acknowledged). Every answer must come with the device's Status still
 * exactly the running one (no DEVICE_NEEDS_RESET) and no configuration-change interrupt.
 * The rounds, in order:
 *   start               FEATURES_OK and DRIVER_OK taken; the config space's capacity (read
 *                       under one ConfigGeneration) is SECTORS
 *   good-read           IN sector 0, 512 bytes: status 0, used len 513, the host's pattern
 *   good-read-last      IN the last sector: the same
 *   beyond-end          IN sector = capacity: IOERR
 *   partly-beyond       IN the last sector with 1024 bytes: IOERR
 *   partly-beyond-write OUT the last sector with 1024 bytes: IOERR (the host checks the
 *                       disk's last sector is unchanged)
 *   odd-length          IN sector 0, 100 bytes: IOERR
 *   outside-ram         IN sector 0 into a data buffer 1 TiB up, beyond guest RAM: IOERR
 *   unknown-type        type 0x7f with a 512-byte writable buffer: UNSUPP
 *   good-write          OUT sector 3, 512 bytes of WRITE_LINE repeated: status 0, used len 1
 *   good-read-back      IN sector 3: status 0, used len 513, what good-write wrote
 * A bad request must come back with its status, used len 1 (the status byte only) and the
 * data buffer untouched; then, in the same round and with no reset, a good read of sector 1
 * must come back with the host's pattern.
 * Each round prints one line, "round NAME: ... ok" or "round NAME: ... FAILED (why)"; a bad
 * round's line holds "bad status 0xSS len N, then good status 0xSS len N".
 * Exit status: 42 when every expectation held, 1 when one did not, 2 when the program could
 * not start (no /dev/mem, no frame numbers, no virtio-blk at MMIO_BASE).
 * Built static by tests/boot/test_blk_vandal.py and carried in a user initramfs.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest_virtio.h"

enum {
    QUEUE_SIZE = 16,
    SECTOR = 512,
    HEADER_BYTES = 16,
    WRITE_SECTOR = 3,  /* good-write's */
    CHECK_SECTOR = 1,  /* read after each bad request */
    SENTINEL = 0xee,   /* the data page before a request: what "untouched" means */
    UNTOUCHED = 0xff,  /* the status byte before a request */
    T_IN = 0,
    T_OUT = 1,
    T_UNKNOWN = 0x7f,
    BLK_S_OK = 0,
    BLK_S_IOERR = 1,
    BLK_S_UNSUPP = 2,
    GENERATION_TRIES = 100,
};

#define BLK_DEVICE_ID 2u
#define WRITE_LINE "blk_vandal was here\n" /* good-write's data: this, repeated, cut at 512 */

enum { P_DESC, P_AVAIL, P_USED, P_HEADER, P_DATA, P_STATUS, PAGES };

static struct page pages[PAGES];

static const struct feature FEATURES[] = {{F_VERSION_1, "VERSION_1"}};

struct blk_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* What the device did with one request. */
struct answer {
    uint16_t moved;     /* how far the used idx went */
    uint32_t id, len;   /* the used element */
    uint8_t status;     /* the request's status byte */
    uint32_t device;    /* the Status register after it */
    uint32_t interrupt; /* InterruptStatus bits seen while waiting */
};

static uint64_t capacity; /* SECTORS, checked against the config space */
static uint16_t next_idx; /* the available idx of the next request */
static int stopped; /* no further request: setup refused, or one went unanswered (its ring
                    * entries are not ours to reuse) */

static struct desc *descs(void) { return pages[P_DESC].at; }
static struct avail *avail(void) { return pages[P_AVAIL].at; }
static struct used *used(void) { return pages[P_USED].at; }
static uint8_t *data(void) { return pages[P_DATA].at; }
static volatile uint8_t *status_byte(void) { return pages[P_STATUS].at; }

static uint8_t host_byte(uint64_t sector, unsigned i)
{
    return (uint8_t)(sector * 31 + i);
}

static uint8_t written_byte(unsigned i)
{
    return (uint8_t)WRITE_LINE[i % (sizeof WRITE_LINE - 1)];
}

/* The index of the first byte of data()[0, len) that is not what was expected, or -1. */
static long host_differs(uint64_t sector, unsigned len)
{
    for (unsigned i = 0; i < len; i++)
        if (data()[i] != host_byte(sector, i))
            return i;
    return -1;
}

static long written_differs(unsigned len)
{
    for (unsigned i = 0; i < len; i++)
        if (data()[i] != written_byte(i))
            return i;
    return -1;
}

static int changed_bytes(unsigned from, unsigned to)
{
    int changed = 0;
    for (unsigned i = from; i < to; i++)
        changed += data()[i] != SENTINEL;
    return changed;
}

/* Send one request (data: `len` bytes at `data_gpa`, which the device writes when
 * `device_writes`) and wait, bounded, for its answer. */
static void request(uint32_t type, uint64_t sector, uint64_t data_gpa, uint32_t len,
                    int device_writes, struct answer *answer)
{
    memset(answer, 0, sizeof *answer);
    struct blk_header *header = pages[P_HEADER].at;
    *header = (struct blk_header){.type = type, .sector = sector};
    *status_byte() = UNTOUCHED;
    descs()[0] = (struct desc){.addr = pages[P_HEADER].gpa, .len = HEADER_BYTES,
                               .flags = D_NEXT, .next = 1};
    descs()[1] = (struct desc){.addr = data_gpa, .len = len,
                               .flags = D_NEXT | (device_writes ? D_WRITE : 0), .next = 2};
    descs()[2] = (struct desc){.addr = pages[P_STATUS].gpa, .len = 1, .flags = D_WRITE};
    uint16_t before = used_idx(used());
    uint16_t slot = next_idx % QUEUE_SIZE;
    next_idx++;
    offer(avail(), slot, 0, next_idx);

    /* The device publishes the used idx first, then raises the interrupt: both waited for;
     * a device that breaks instead says so in Status at once. */
    uint32_t device = 0, interrupt = 0;
    long deadline = now_ms() + WAIT_MS;
    do {
        interrupt |= rd(INTERRUPT_STATUS);
        device = rd(STATUS);
        if ((used_idx(used()) != before && (interrupt & INT_USED)) || (device & S_NEEDS_RESET))
            break;
        sleep_ms(1);
    } while (now_ms() < deadline);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the used element after its idx */
    answer->moved = (uint16_t)(used_idx(used()) - before);
    answer->id = used()->ring[before % QUEUE_SIZE].id;
    answer->len = used()->ring[before % QUEUE_SIZE].len;
    answer->status = *status_byte();
    answer->device = rd(STATUS);
    answer->interrupt = interrupt | rd(INTERRUPT_STATUS);
    wr(INTERRUPT_ACK, answer->interrupt);
    if (answer->moved != 1)
        stopped = 1;
}

/* The expectations every answer shares: used once, with this status and used len, and the
 * device still running. */
static void expect_answer(const char *what, const struct answer *a, uint8_t status,
                          uint32_t len)
{
    printf("status 0x%02x len %u", a->status, a->len);
    expect(a->moved == 1, "%s: the used idx moved by %u (waited up to %d ms; Status 0x%x)",
           what, a->moved, WAIT_MS, a->device);
    expect(a->id == 0, "%s: used id %u, not 0", what, a->id);
    expect(a->status == status, "%s: status byte 0x%02x, not 0x%02x", what, a->status, status);
    expect(a->len == len, "%s: used len %u, not %u", what, a->len, len);
    expect(!(a->device & S_NEEDS_RESET), "%s: DEVICE_NEEDS_RESET (Status 0x%x)", what,
           a->device);
    expect(a->device == S_RUNNING, "%s: Status 0x%x, not 0x%x", what, a->device, S_RUNNING);
    expect(a->interrupt & INT_USED, "%s: no used-buffer interrupt (0x%x)", what, a->interrupt);
    expect(!(a->interrupt & INT_CONFIG), "%s: a configuration-change interrupt (0x%x)", what,
           a->interrupt);
}

/* IN `sector`, 512 bytes: status 0, the host's pattern, nothing written beyond. */
static void good_read(const char *what, uint64_t sector)
{
    struct answer a;
    memset(data(), SENTINEL, PAGE);
    request(T_IN, sector, pages[P_DATA].gpa, SECTOR, 1, &a);
    expect_answer(what, &a, BLK_S_OK, SECTOR + 1);
    long at = host_differs(sector, SECTOR);
    expect(at < 0, "%s: sector %llu differs from the host's pattern at byte %ld", what,
           (unsigned long long)sector, at);
    int beyond = changed_bytes(SECTOR, PAGE);
    expect(beyond == 0, "%s: %d bytes changed beyond the buffer", what, beyond);
}

/* A bad request: its `status`, nothing written into its data, and the device goes on (a good
 * read of CHECK_SECTOR, without a reset). */
static void bad(uint32_t type, uint64_t sector, uint64_t data_gpa, uint32_t len,
                int device_writes, uint8_t status)
{
    struct answer a;
    memset(data(), SENTINEL, PAGE);
    request(type, sector, data_gpa, len, device_writes, &a);
    printf("bad ");
    expect_answer("the bad request", &a, status, 1);
    int changed = changed_bytes(0, PAGE);
    expect(changed == 0, "the bad request: %d bytes of its data changed", changed);
    if (stopped)
        return;
    printf(", then good ");
    good_read("the good read after it", CHECK_SECTOR);
}

static void good_write(void)
{
    struct answer a;
    for (unsigned i = 0; i < PAGE; i++)
        data()[i] = written_byte(i);
    request(T_OUT, WRITE_SECTOR, pages[P_DATA].gpa, SECTOR, 0, &a);
    expect_answer("the write", &a, BLK_S_OK, 1);
}

static void good_read_back(void)
{
    struct answer a;
    memset(data(), SENTINEL, PAGE);
    request(T_IN, WRITE_SECTOR, pages[P_DATA].gpa, SECTOR, 1, &a);
    expect_answer("the read back", &a, BLK_S_OK, SECTOR + 1);
    long at = written_differs(SECTOR);
    expect(at < 0, "the read back: sector %d differs from what was written at byte %ld",
           WRITE_SECTOR, at);
}

/* The config space's capacity (le64 at offset 0), read under one ConfigGeneration. */
static uint64_t config_capacity(void)
{
    for (int i = 0; i < GENERATION_TRIES; i++) {
        uint32_t generation = rd(CONFIG_GENERATION);
        uint64_t low = rd(CONFIG), high = rd(CONFIG + 4);
        if (rd(CONFIG_GENERATION) == generation)
            return low | high << 32;
    }
    expect(0, "ConfigGeneration changed %d times in a row", GENERATION_TRIES);
    return 0;
}

static void start(void)
{
    for (int i = 0; i < PAGES; i++)
        memset(pages[i].at, 0, PAGE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (start_device(FEATURES, sizeof FEATURES / sizeof FEATURES[0], QUEUE_SIZE,
                     pages[P_DESC].gpa, pages[P_AVAIL].gpa, pages[P_USED].gpa) != 0) {
        stopped = 1;
        printf("setup refused");
        return;
    }
    uint64_t config = config_capacity();
    printf("capacity %llu sectors", (unsigned long long)config);
    expect(config == capacity, "the config space says %llu sectors, not %llu",
           (unsigned long long)config, (unsigned long long)capacity);
    if (why[0])
        stopped = 1; /* the rounds' sectors would not be where they are meant to be */
}

static int round_(const char *name)
{
    why[0] = 0;
    printf("round %s: ", name);
    uint64_t buffer = pages[P_DATA].gpa, last = capacity - 1;
    if (!strcmp(name, "start"))
        start();
    else if (stopped) {
        printf("skipped");
        expect(0, "an earlier round left the device unusable");
    }
    else if (!strcmp(name, "good-read"))
        good_read("the read", 0);
    else if (!strcmp(name, "good-read-last"))
        good_read("the read", last);
    else if (!strcmp(name, "beyond-end"))
        bad(T_IN, capacity, buffer, SECTOR, 1, BLK_S_IOERR);
    else if (!strcmp(name, "partly-beyond"))
        bad(T_IN, last, buffer, 2 * SECTOR, 1, BLK_S_IOERR);
    else if (!strcmp(name, "partly-beyond-write"))
        bad(T_OUT, last, buffer, 2 * SECTOR, 0, BLK_S_IOERR);
    else if (!strcmp(name, "odd-length"))
        bad(T_IN, 0, buffer, 100, 1, BLK_S_IOERR);
    else if (!strcmp(name, "outside-ram"))
        bad(T_IN, 0, OUTSIDE_RAM, SECTOR, 1, BLK_S_IOERR);
    else if (!strcmp(name, "unknown-type"))
        bad(T_UNKNOWN, 0, buffer, SECTOR, 1, BLK_S_UNSUPP);
    else if (!strcmp(name, "good-write"))
        good_write();
    else if (!strcmp(name, "good-read-back"))
        good_read_back();
    if (why[0])
        printf(": FAILED (%s)\n", why);
    else
        printf(": ok\n");
    fflush(stdout);
    return why[0] ? -1 : 0;
}

static const char *const ROUNDS[] = {
    "start", "good-read", "good-read-last", "beyond-end", "partly-beyond",
    "partly-beyond-write", "odd-length", "outside-ram", "unknown-type", "good-write",
    "good-read-back",
};

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: blk_vandal MMIO_BASE SECTORS\n");
        return 2;
    }
    unsigned long long base = strtoull(argv[1], NULL, 0);
    capacity = strtoull(argv[2], NULL, 0);
    if (capacity <= WRITE_SECTOR) {
        fprintf(stderr, "blk_vandal: a disk of %llu sectors is too small for the rounds\n",
                (unsigned long long)capacity);
        return 2;
    }
    if (open_window("blk_vandal", base, BLK_DEVICE_ID, "virtio-blk") != 0)
        return 2;
    if (map_pages("blk_vandal", pages, PAGES) != 0)
        return 2;
    int failed = 0;
    for (size_t i = 0; i < sizeof ROUNDS / sizeof ROUNDS[0]; i++)
        failed |= round_(ROUNDS[i]) != 0;
    wr(STATUS, 0); /* a reset: the device lets go of the rings */
    printf(failed ? "vandal: an expectation failed\n" : "vandal: every expectation held\n");
    fflush(stdout);
    return failed ? 1 : ALL_HELD;
}
