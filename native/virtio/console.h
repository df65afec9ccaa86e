/* virtio-console's data path: a native worker thread per device (virtio 1.2, 5.3).
 *
 * Read twice like virtqueue.h: by the compiler and, less its `#` lines, by cffi.
 *
 * Queues: without MULTIPORT, port 0's receiveq (0) and transmitq (1). With MULTIPORT and N
 * ports: port 0's (0, 1), the control receiveq (2) and transmitq (3), then port k >= 1 at
 * 2 + 2k and 3 + 2k.
 *
 * The worker waits on every queue's notify eventfd, the ports' host fds, a stop eventfd and
 * a wake-up eventfd (vmrun_console_resize). Host -> guest: a port's input fd is read into a
 * 4 KiB staging buffer, only while the guest has the port open and there is room, then
 * copied into the guest's receive chains (a chain is taken only once there are bytes for
 * it: an empty used buffer would read as EOF). Guest -> host: each transmit chain is
 * written to the port's output fd in order and returned only once all of it is written, so
 * a host reader that falls behind holds the guest back. The multiport control protocol
 * keeps, per port, flags of what remains to be sent: whatever the guest sends, and however
 * often, the state stays bounded. It never takes the GIL; a queue the guest broke raises
 * the configuration-change interrupt once (the transport sets DEVICE_NEEDS_RESET) and the
 * worker then waits only for its stop.
 *
 * fds: the caller's, kept open until vmrun_console_stop returns. They should never block:
 * regular files (whose writes complete), sockets (used with MSG_DONTWAIT) or descriptions
 * of their own opened O_NONBLOCK (runner/devices/virtio/console.py makes them). A pipe or
 * device whose description blocks (shared, when it cannot be opened anew) is read only when
 * poll says so and written only when poll says there is room, PIPE_BUF bytes at a time:
 * a pipe or a virtio port then never holds the worker up; a terminal could, which the stop
 * bounds all the same (vmrun_console_stop).
 */
#ifndef VMRUN_CONSOLE_H
#define VMRUN_CONSOLE_H

#include <stdint.h>

#include "virtqueue.h"

enum {
    VMRUN_CONSOLE_F_SIZE = 0,      /* feature bits */
    VMRUN_CONSOLE_F_MULTIPORT = 1,
    VMRUN_CONSOLE_MAX_PORTS = 32,  /* ports of one device */
    VMRUN_CONSOLE_NAME_MAX = 255,  /* bytes of a port's name */
    VMRUN_CONSOLE_STAGING = 4096,  /* input bytes held per port */
    VMRUN_CONSOLE_SEGMENTS = 1024, /* buffers of one chain (more breaks the queue) */
    VMRUN_CONSOLE_DRAIN_MS = 2000, /* the longest a draining stop waits for host readers */
};

/* The control messages (struct virtio_console_control's event). */
enum {
    VMRUN_CONSOLE_DEVICE_READY = 0,
    VMRUN_CONSOLE_DEVICE_ADD = 1,
    VMRUN_CONSOLE_DEVICE_REMOVE = 2,
    VMRUN_CONSOLE_PORT_READY = 3,
    VMRUN_CONSOLE_CONSOLE_PORT = 4,
    VMRUN_CONSOLE_RESIZE = 5,
    VMRUN_CONSOLE_PORT_OPEN = 6,
    VMRUN_CONSOLE_PORT_NAME = 7,
};

/* One port, as the host gives it. The worker copies it; `name` is needed only during
 * vmrun_console_start. */
struct vmrun_console_port {
    const char *name;   /* name_len bytes, no NUL needed; NULL or empty: no name */
    uint32_t name_len;
    int input_fd;       /* host -> guest, or -1 */
    int output_fd;      /* guest -> host, or -1: the guest's output is dropped */
    uint8_t console;    /* multiport: sent CONSOLE_PORT (the guest makes it an hvc) */
    uint8_t has_size;
    uint16_t rows;
    uint16_t cols;
};

struct vmrun_console;

/* Start the worker on `queue_count` queues (set up, owned by the caller, kept alive until
 * stop), each with its notify eventfd, for `port_count` ports; `multiport` says which queue
 * layout. Returns NULL with errno set: EINVAL for counts that do not fit the layout,
 * or the thread's error. */
struct vmrun_console *vmrun_console_start(struct vmrun_virtq *const *queues,
                                          uint32_t queue_count, const int *notify_fds,
                                          int irq_fd, uint32_t *interrupt_status,
                                          const struct vmrun_console_port *ports,
                                          uint32_t port_count, int multiport);

/* Port `port`'s terminal is now rows x cols: with MULTIPORT, a RESIZE message for it is
 * queued (a console port, once the guest said it is ready). Without MULTIPORT nothing
 * happens here: the size is in the configuration space, the caller's. Callable from any
 * thread while the worker lives. */
void vmrun_console_resize(struct vmrun_console *console, uint32_t port, uint16_t rows,
                          uint16_t cols);

/* Stop the worker, wait for it and free `console`. With `drain`, first write out what the
 * guest already queued on its transmit queues (the VM ended: its last writes must not be
 * lost), for at most VMRUN_CONSOLE_DRAIN_MS. A worker stuck in a write (a shared terminal
 * that nobody reads) is cancelled a second after that. Safe on NULL. */
void vmrun_console_stop(struct vmrun_console *console, int drain);

/* Bytes written to the host's output fds, and given to the guest, so far. */
uint64_t vmrun_console_bytes_out(const struct vmrun_console *console);
uint64_t vmrun_console_bytes_in(const struct vmrun_console *console);

#endif /* VMRUN_CONSOLE_H */
