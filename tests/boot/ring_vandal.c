/* A hostile guest program: a driver of its own for the virtio-rng that writes garbage into
 * its queue.
 *
 * ring_vandal MMIO_START
 *
 * MMIO_START is the rng's virtio-mmio window (its guest driver unbound, so that /dev/mem
 * maps it). The rings and buffers are this program's own locked pages, one per structure,
 * found through /proc/self/pagemap (tests/boot/guest_virtio.h says why and how).
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest_virtio.h"

enum {
    QUEUE_SIZE = 16,
    BUFFER_LEN = 512,
    PATTERN = 0xa5,
};

#define RNG_DEVICE_ID 4u

enum { P_DESC, P_AVAIL, P_USED, P_BUFFER, P_TABLE, P_INNER_TABLE, PAGES };

static struct page pages[PAGES];

static const struct feature FEATURES[] = {
    {F_INDIRECT_DESC, "INDIRECT_DESC"},
    {F_VERSION_1, "VERSION_1"},
};

static struct desc *descs(void) { return pages[P_DESC].at; }
static struct avail *avail(void) { return pages[P_AVAIL].at; }
static struct used *used(void) { return pages[P_USED].at; }
static uint8_t *buffer(void) { return pages[P_BUFFER].at; }

/* ---- one round ----------------------------------------------------------------------- */

/* Empty rings and a patterned buffer, then the device reset, negotiated and started over
 * them: 0 when it took all of it. */
static int fresh_device(void)
{
    for (int i = 0; i < PAGES; i++)
        memset(pages[i].at, 0, PAGE);
    memset(buffer(), PATTERN, PAGE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return start_device(FEATURES, sizeof FEATURES / sizeof FEATURES[0], QUEUE_SIZE,
                        pages[P_DESC].gpa, pages[P_AVAIL].gpa, pages[P_USED].gpa);
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
           status, interrupt, used_idx(used()), changed);
    expect(status & S_NEEDS_RESET, "no DEVICE_NEEDS_RESET in %d ms", WAIT_MS);
    expect(interrupt & INT_CONFIG, "no configuration-change interrupt in %d ms", WAIT_MS);
    expect(used_idx(used()) == 0, "the device used %u chains", used_idx(used()));
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
        if (used_idx(used()) != 0 && (interrupt & INT_USED))
            break;
        sleep_ms(1);
    } while (now_ms() < deadline);
    uint16_t idx = used_idx(used());
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
    if (fresh_device() == 0) {
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
        offer(avail(), 0, 0, idx);
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
    unsigned long long start = strtoull(argv[1], NULL, 0);
    if (open_window("ring_vandal", start, RNG_DEVICE_ID, "rng") != 0)
        return 2;
    if (map_pages("ring_vandal", pages, PAGES) != 0)
        return 2;
    int failed = 0;
    for (size_t i = 0; i < sizeof ROUNDS / sizeof ROUNDS[0]; i++)
        failed |= round_(ROUNDS[i]) != 0;
    printf(failed ? "vandal: an expectation failed\n" : "vandal: every expectation held\n");
    fflush(stdout);
    return failed ? 1 : ALL_HELD;
}
