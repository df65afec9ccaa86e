/* I/O ports through which vmrun's guest init talks to the VMM.
 *
 * Port I/O works from the first instruction of the guest, before any virtio device is
 * probed, and costs one VM exit; the VMM needs no device model for these ports, only a
 * match in its PIO exit handler. The init gains access with ioperm(2) (it runs as root)
 * and drops it in the workload's process before execve, so only the init writes here.
 *
 * Keep in step with native/init/README.md and the VMM's PIO handler.
 */
#ifndef VMRUN_INIT_PORTS_H
#define VMRUN_INIT_PORTS_H

/* Exit port: one 32-bit OUT (outl) of EXIT_MAGIC | status, status 0..255, written once,
 * just before the init powers the guest off. The magic in bits 8..15 tells a real report
 * (including status 0) apart from stray writes; the VMM ignores any other value, and any
 * access that is not 4 bytes wide. 0xf4 is QEMU's isa-debug-exit default port, free on
 * the vmrun machine (no device of the PC platform decodes it). */
#define EXIT_PORT 0x00f4
#define EXIT_PORT_WIDTH 4    /* bytes: ioperm(EXIT_PORT, EXIT_PORT_WIDTH, 1) */
#define EXIT_MAGIC 0x5600u   /* value written: EXIT_MAGIC | (status & 0xff) */
#define EXIT_MAGIC_MASK 0xff00u

/* Debug port: one 8-bit OUT (outb) per boot milestone, for the boot-time benchmark
 * (the VMM stamps each with its clock). 0x80 is the PC's POST-code port; under KVM the
 * guest kernel's io_delay is a no-op (kvm_io_delay), so the kernel itself does not write
 * here, but a VMM should still ignore values outside the milestones below. */
#define DEBUG_PORT 0x0080

enum milestone {
    MILESTONE_INIT_STARTED = 1,     /* first thing the init does */
    MILESTONE_MOUNTS_DONE = 2,      /* /proc, /sys, /dev, /run, /tmp, /dev/pts, /dev/shm */
    MILESTONE_MODULES_LOADED = 3,   /* every `module` line tried (after the config is read) */
    MILESTONE_ROOT_MOUNTED = 4,     /* console taken; root mounted, switched into (or initramfs) */
    MILESTONE_WORKLOAD_STARTED = 5, /* fork done; the child is about to execve */
    MILESTONE_WORKLOAD_EXITED = 6,  /* the workload was reaped */
};

#endif
