/* The virtqueue engine: split virtqueues (virtio 1.2, section 2.7) for every device of vmrun.
 *
 * THE one place where a queue the guest wrote is read (DESIGN invariant 1, STYLE 6): ring
 * addresses, indices, descriptor addresses, lengths, chains (loops, out-of-range next,
 * zero-length buffers, overlong chains, wrong direction, readable after writable, indirect
 * tables within indirect tables) are checked here, each field read from guest memory once.
 * A request that breaks a rule marks the queue broken: every later call on it fails, and the
 * transport sets DEVICE_NEEDS_RESET. Nothing here crashes, loops without bound or touches
 * host memory outside the guest's regions, whatever the guest wrote (native/fuzz/ checks it).
 *
 * Read twice, like native/kvm/vmrun_kvm.h: by the C compiler and, less its `#` lines, by cffi
 * as its cdef. So: plain prototypes, structs and enums only.
 *
 * Threads: a queue is used by one thread at a time (its device's worker); the guest runs
 * concurrently, so the indices it writes are read with acquire loads and the device's
 * writes published with release stores (and a full fence where the rules need one).
 * Guest memory must outlive every queue that points into it (runner/kvm/memory.py).
 */
#ifndef VMRUN_VIRTQUEUE_H
#define VMRUN_VIRTQUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "vmrun_kvm.h" /* struct vmrun_guest_region, vmrun_guest_ptr */

enum {
    VMRUN_VIRTQ_MAX_SIZE = 32768, /* the largest queue the spec allows */
    VMRUN_VIRTQ_DESC_F_NEXT = 1,
    VMRUN_VIRTQ_DESC_F_WRITE = 2,
    VMRUN_VIRTQ_DESC_F_INDIRECT = 4,
    VMRUN_VIRTQ_AVAIL_F_NO_INTERRUPT = 1,
    VMRUN_VIRTQ_USED_F_NO_NOTIFY = 1,
    VMRUN_VIRTIO_F_INDIRECT_DESC = 28,
    VMRUN_VIRTIO_F_EVENT_IDX = 29,
    VMRUN_VIRTIO_F_VERSION_1 = 32,
    /* What a device accepts in a chain (`vmrun_virtq_pop`'s `directions`). */
    VMRUN_VIRTQ_READABLE = 1, /* buffers the device reads (the driver's requests) */
    VMRUN_VIRTQ_WRITABLE = 2, /* buffers the device writes (its answers) */
    /* Opt-in (virtio-blk): a chain whose only fault is buffers outside guest RAM is taken,
     * those buffers with base NULL, instead of breaking the queue; see vmrun_virtq_pop. */
    VMRUN_VIRTQ_KEEP_BAD_BUFFERS = 4,
};

/* Why a queue was found broken (negative results); VMRUN_VIRTQ_OK is 0. */
enum vmrun_virtq_error {
    VMRUN_VIRTQ_OK = 0,
    VMRUN_VIRTQ_E_NOT_READY = -1,      /* used before vmrun_virtq_setup succeeded */
    VMRUN_VIRTQ_E_SIZE = -2,           /* queue size zero, over the maximum or no power of 2 */
    VMRUN_VIRTQ_E_RING = -3,           /* a ring misaligned or not inside one region of RAM */
    VMRUN_VIRTQ_E_AVAIL_IDX = -4,      /* avail idx more than the queue size ahead */
    VMRUN_VIRTQ_E_HEAD = -5,           /* a chain's head index is not below the queue size */
    VMRUN_VIRTQ_E_NEXT = -6,           /* a next index is not below the table's size */
    VMRUN_VIRTQ_E_LOOP = -7,           /* more descriptors than the table holds: a loop */
    VMRUN_VIRTQ_E_BUFFER = -8,         /* a buffer not inside one region of guest RAM */
    VMRUN_VIRTQ_E_ZERO_LENGTH = -9,    /* a zero-length buffer */
    VMRUN_VIRTQ_E_OVERLONG = -10,      /* a chain's total length over 4 GiB - 1 */
    VMRUN_VIRTQ_E_DIRECTION = -11,     /* a buffer in a direction this queue does not take */
    VMRUN_VIRTQ_E_ORDER = -12,         /* a readable buffer after a writable one */
    VMRUN_VIRTQ_E_INDIRECT = -13,      /* indirect not negotiated, or with F_NEXT set */
    VMRUN_VIRTQ_E_INDIRECT_NESTED = -14, /* an indirect table within an indirect table */
    VMRUN_VIRTQ_E_INDIRECT_TABLE = -15,  /* a table of no entries, not 16-byte sized, too big */
    VMRUN_VIRTQ_E_SEGMENTS = -16,      /* more buffers than the caller's iovec array holds */
    VMRUN_VIRTQ_E_USED_HEAD = -17,     /* the device returned a head it was not given */
    VMRUN_VIRTQ_E_BROKEN = -18,        /* the queue was broken before this call */
};

/* One buffer of a chain: host address and length, inside one region of guest RAM (base NULL:
 * outside RAM, only under VMRUN_VIRTQ_KEEP_BAD_BUFFERS; never touch it). */
struct vmrun_iovec {
    uint8_t *base;
    uint32_t len;
};

/* A chain taken from the available ring. The caller owns `iov` (room for `capacity`
 * buffers); the engine fills the readable buffers first, then the writable ones. */
struct vmrun_virtq_chain {
    uint16_t head;
    uint32_t readable;          /* iov[0 .. readable) are readable */
    uint32_t writable;          /* iov[readable .. readable + writable) are writable */
    uint64_t readable_bytes;
    uint64_t writable_bytes;
    uint32_t capacity;
    struct vmrun_iovec *iov;
    uint32_t outside;           /* buffers with base NULL (outside RAM): 0 unless
                                   VMRUN_VIRTQ_KEEP_BAD_BUFFERS was asked for */
};

/* A split virtqueue. The transport fills the first group from the driver's registers, then
 * calls vmrun_virtq_setup; the rest is the engine's. */
struct vmrun_virtq {
    uint16_t size;
    uint64_t desc_addr;
    uint64_t avail_addr;
    uint64_t used_addr;
    uint64_t features;          /* the negotiated feature bits */
    const struct vmrun_guest_region *regions;
    size_t region_count;

    /* The engine's state: read it, never write it. */
    int32_t error;              /* 0, or the vmrun_virtq_error that broke the queue */
    uint16_t next_avail;        /* the next available ring slot to take */
    uint16_t next_used;         /* the next used ring slot to fill */
    uint16_t signalled_used;    /* next_used at the last interrupt (EVENT_IDX) */
    uint8_t signalled_valid;
    uint8_t notify_enabled;     /* the driver was asked for notifications */
    uint8_t ready;
    uint8_t *desc;              /* host addresses of the three rings, set by setup */
    uint8_t *avail;
    uint8_t *used;
    uint64_t *in_flight;        /* per head: 0, or 1 << 32 | its writable bytes while taken */
};

/* Check the rings (size, alignment, each inside one region of RAM) and start the queue at
 * index 0. `in_flight` is the caller's array of `size` entries, zeroed here, owned by the
 * caller as long as the queue is used. Returns 0 or a vmrun_virtq_error (the queue is then
 * broken). */
int vmrun_virtq_setup(struct vmrun_virtq *q, uint64_t *in_flight);

/* Take the next available chain into `chain`. Returns 1 when one was taken, 0 when the ring is
 * empty, or a vmrun_virtq_error: the queue is broken (the chain is then not taken, and the
 * caller sets DEVICE_NEEDS_RESET). `directions` is VMRUN_VIRTQ_READABLE, _WRITABLE or both:
 * what this queue's device takes; with VMRUN_VIRTQ_KEEP_BAD_BUFFERS added, a buffer that is
 * not inside one region of RAM (and only that: every other rule still breaks the queue, and
 * an indirect table outside RAM too, since the chain cannot be read) is taken with base NULL
 * and its length, counted in chain->outside: the device answers such a request with an error
 * of its own and the queue goes on. Byte totals count those buffers too. */
int vmrun_virtq_pop(struct vmrun_virtq *q, struct vmrun_virtq_chain *chain, unsigned directions);

/* Return chain `head` to the driver with `written` bytes written into its writable buffers
 * (cut to the chain's writable_bytes: a device's miscount never tells the driver to read
 * beyond its buffers). Returns 0, or
 * VMRUN_VIRTQ_E_USED_HEAD for a head that was not taken (a device bug: the queue stays as it
 * was) or another vmrun_virtq_error on a queue that is not ready or broken. */
int vmrun_virtq_push(struct vmrun_virtq *q, uint16_t head, uint32_t written);

/* After one or more pushes: 1 when the driver asked to be interrupted for them (its
 * used_event with EVENT_IDX, else the NO_INTERRUPT flag), else 0; a broken queue gives 0. */
int vmrun_virtq_should_interrupt(struct vmrun_virtq *q);

/* Ask the driver for notifications (1) or not (0): the avail_event index with EVENT_IDX, the
 * NO_NOTIFY flag without. Enabling returns 1 when chains arrived meanwhile (take them before
 * waiting), else 0; a broken queue gives 0. */
int vmrun_virtq_notify(struct vmrun_virtq *q, int enable);

/* Chains waiting in the available ring (0 on a broken queue; a broken idx breaks it). */
int vmrun_virtq_pending(struct vmrun_virtq *q);

/* The virtio-mmio InterruptStatus register, shared by the transport (Python, on the vCPU's
 * MMIO exit) and the workers: every access is atomic, so an acknowledgement never loses a
 * bit a worker sets at the same time. */
enum {
    VMRUN_VIRTIO_INT_USED = 1,   /* used buffer notification */
    VMRUN_VIRTIO_INT_CONFIG = 2, /* configuration change (or DEVICE_NEEDS_RESET) */
};
uint32_t vmrun_virtio_interrupt_status(const uint32_t *status);
void vmrun_virtio_interrupt_ack(uint32_t *status, uint32_t bits);
/* Set `bit` and signal the device's interrupt eventfd (an irqfd, or the split irqchip's). */
void vmrun_virtio_interrupt_raise(uint32_t *status, uint32_t bit, int irq_fd);

/* The error's words, for a message; "unknown" for a value that is none. */
const char *vmrun_virtq_strerror(int error);

#endif /* VMRUN_VIRTQUEUE_H */
