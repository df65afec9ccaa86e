/* A hostile guest program: noise on every I/O port and MMIO page that exits to vmrun.
 *
 * port_hammer ROUNDS MMIO_START MMIO_PAGES
 *
 * Each round prints "round N", then writes a pseudo-random value to and reads back: every
 * port below 0x1000 (where the PC's devices are) 8-bit wide, those below 0x400 and PCI's
 * configuration ports also 16- and 32-bit wide, every 256th port above (unclaimed: one path
 * in vmrun, and each access is a VM exit, about a millisecond under nested emulation); the
 * i8042's command port every command but the reset pulse; each 32-bit word of the MMIO
 * pages. Then "survived", and exit status 7. Ports the guest needs to report back are left
 * alone (see SKIPPED).
 * Built static by tests/boot/test_hostile_guest.py and carried in a user initramfs.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <unistd.h>

/* [first, last]: in-kernel PIC, PIT, speaker port and ELCR (the guest's timer and
 * interrupts), the i8042's command port (0xfe there resets), the exit port (a 32-bit write
 * there ends the VM with a status), and COM1 (the workload's stdout). */
static const unsigned SKIPPED[][2] = {
    {0x20, 0x21}, {0x40, 0x43}, {0x61, 0x61}, {0x64, 0x64}, {0xa0, 0xa1},
    {0xf4, 0xf7}, {0x3f8, 0x3ff}, {0x4d0, 0x4d1},
};
static const unsigned char I8042_COMMANDS[] = {0x20, 0x60, 0xaa, 0xab, 0xad, 0xae, 0xd0, 0xd1, 0xd4};

static uint32_t state = 0x9e3779b9u;

static uint32_t noise(void)
{
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

static int skipped(unsigned first, unsigned width)
{
    unsigned last = first + width - 1;
    for (size_t i = 0; i < sizeof(SKIPPED) / sizeof(SKIPPED[0]); i++)
        if (first <= SKIPPED[i][1] && last >= SKIPPED[i][0])
            return 1;
    return last > 0xffff;
}

static void hammer_ports(void)
{
    for (unsigned port = 0; port <= 0xffff; port += port < 0x1000 ? 1 : 0x100) {
        if (skipped(port, 1))
            continue;
        outb((unsigned char)noise(), port);
        (void)inb(port);
        if (port >= 0x400 && (port < 0xcf8 || port > 0xcff))
            continue;
        if (!skipped(port, 2)) {
            outw((unsigned short)noise(), port);
            (void)inw(port);
        }
        if (!skipped(port, 4)) {
            outl(noise(), port);
            (void)inl(port);
        }
    }
    for (size_t i = 0; i < sizeof(I8042_COMMANDS); i++) {
        outb(I8042_COMMANDS[i], 0x64);
        (void)inb(0x64);
        (void)inb(0x60);
    }
}

static void hammer_mmio(volatile uint32_t *page, size_t words)
{
    for (size_t i = 0; i < words; i++) {
        page[i] = noise();
        (void)page[i];
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: port_hammer ROUNDS MMIO_START MMIO_PAGES\n");
        return 2;
    }
    int rounds = atoi(argv[1]);
    off_t start = (off_t)strtoull(argv[2], NULL, 0);
    size_t size = (size_t)atoi(argv[3]) * 4096;
    if (iopl(3) != 0) {
        perror("iopl");
        return 2;
    }
    int mem = open("/dev/mem", O_RDWR | O_SYNC);
    if (mem < 0) {
        perror("/dev/mem");
        return 2;
    }
    void *mmio = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mem, start);
    if (mmio == MAP_FAILED) {
        perror("mmap /dev/mem");
        return 2;
    }
    for (int round = 1; round <= rounds; round++) {
        printf("round %d\n", round);
        fflush(stdout);
        hammer_ports();
        hammer_mmio(mmio, size / 4);
    }
    printf("survived\n");
    fflush(stdout);
    return 7;
}
