/* virtio-console's worker, shared between its files: not read by cffi (console.h is the
 * interface). See console.h for what the device does.
 *
 * console.c          the worker: its thread and poll loop, start, stop (with its drain),
 *                    resize, the counters, and the interrupts
 * console_port.c     a port's data path: guest -> host output with back-pressure, host ->
 *                    guest input through the staging buffer, the port's fds as given
 * console_control.c  the multiport control protocol: messages in, messages out, and the
 *                    per-port flags of what remains to be sent
 *
 * The functions below are the worker's own: hidden from the compiled module's exports, and
 * declared nowhere else.
 */
#ifndef VMRUN_CONSOLE_INTERNAL_H
#define VMRUN_CONSOLE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "console.h"
#include "virtqueue.h"

enum {
    /* What remains to be told to the guest about a port (multiport), sent lowest bit first:
     * a port exists before it is a console, and it is a console before it can be resized. */
    SEND_ADD = 1,
    SEND_CONSOLE = 2,
    SEND_NAME = 4,
    SEND_RESIZE = 8,
    SEND_OPEN = 16,
    MAX_QUEUES = 2 * (VMRUN_CONSOLE_MAX_PORTS + 1),
};

static const uint64_t HAS_SIZE = (uint64_t)1 << 32; /* in port.size, beside rows << 16 | cols */

struct port {
    int in_fd, out_fd;
    uint8_t in_socket, out_socket, console;
    uint8_t in_careful, out_careful; /* a blocking description: poll before every use */
    uint8_t in_ready;    /* worth a read: poll said so, or the last read filled the buffer */
    uint8_t in_eof;      /* no more input: end of file, or a read error that stands for it */
    uint8_t eof_told;
    uint8_t out_failed;  /* a write failed (EPIPE ...): the guest's output is dropped */
    uint8_t out_blocked; /* the fd is full: waiting for POLLOUT */
    uint8_t tx_busy;     /* `tx` is taken from the transmit queue and not all written */
    uint8_t guest_open;  /* the guest has the port open: only then does input go to it */
    uint8_t host_open;   /* what PORT_OPEN tells the guest */
    uint8_t ready;       /* the guest sent PORT_READY */
    uint32_t pending;    /* SEND_* (atomic: vmrun_console_resize adds SEND_RESIZE) */
    uint64_t size;       /* HAS_SIZE | rows << 16 | cols, or 0 (atomic) */
    uint32_t tx_seg, tx_off; /* how far `tx` is written */
    struct vmrun_virtq_chain tx;
    uint32_t staged, staged_off;
    uint32_t name_len;
    char name[VMRUN_CONSOLE_NAME_MAX];
    uint8_t staging[VMRUN_CONSOLE_STAGING];
    struct vmrun_iovec tx_iov[VMRUN_CONSOLE_SEGMENTS];
};

struct vmrun_console {
    struct vmrun_virtq *q[MAX_QUEUES];
    int notify_fd[MAX_QUEUES];
    uint8_t pushed[MAX_QUEUES]; /* returned chains since the last interrupt check */
    uint32_t queue_count, port_count;
    int multiport, irq_fd, stop_fd, wake_fd, draining, broken;
    uint32_t *interrupt_status;
    uint64_t bytes_out, bytes_in;
    struct port *ports;
    struct vmrun_iovec scratch[VMRUN_CONSOLE_SEGMENTS]; /* for chains handled at once */
    pthread_t thread;
};

#pragma GCC visibility push(hidden)

/* console.c: return a chain; -1 only when the queue is broken. */
int vmrun_console_give_back(struct vmrun_console *c, uint32_t queue, uint16_t head,
                            uint32_t written);

/* console_port.c */

/* Copy the host's description of each port into c->ports: -1 for a name that does not fit. */
int vmrun_console_set_up_ports(struct vmrun_console *c, const struct vmrun_console_port *ports);
/* Write out the port's transmit queue: -1 when the guest broke the queue. */
int vmrun_console_transmit(struct vmrun_console *c, uint32_t index);
/* Give the port's input to the guest: -1 when the guest broke the queue. */
int vmrun_console_receive(struct vmrun_console *c, uint32_t index);

/* console_control.c: the control transmitq read, and the control receiveq given what each
 * port has pending. -1 when the guest broke the queue. */
int vmrun_console_control_in(struct vmrun_console *c);
int vmrun_console_control_out(struct vmrun_console *c);

#pragma GCC visibility pop

#endif /* VMRUN_CONSOLE_INTERNAL_H */
