"""virtio-console (virtio 1.2, 5.3): the guest's hvc consoles and /dev/vport* ports, each
joined to host fds.

Without MULTIPORT the device has one port, the console hvc0, and its terminal size lives in
the configuration space (F_SIZE; a resize bumps the generation and raises the
configuration-change interrupt). With MULTIPORT the ports are announced, named, made
consoles, opened and resized by control messages. The data path and the control protocol
are the native worker in native/virtio/console.c.

The worker must never block on an fd, and must not change the flags of a file description
that vmrun shares with other processes (O_NONBLOCK on the user's terminal or pipe would
reach their shell). So each port gets descriptors of its own, made here and closed by
`close`: a regular file or a socket is dup'd (a file's writes complete; a socket is used
with MSG_DONTWAIT), a pipe, FIFO, terminal or other character device is opened anew through
/proc/self/fd with O_NONBLOCK, a description of the worker's alone. One that cannot be
opened twice (a virtio port, when vmrun itself runs in a VM; a pty master, which would make
a new pty) is dup'd: the worker polls it before every read and write (console.h). The
caller keeps its fds.

Lifetime: the transport's `reset` (a guest reset, or the transport closing) stops the worker
and drops what the guest queued; `drain`, which the machine calls once the vCPUs stopped and
before the transport closes, first writes out what the guest already queued (its last
write() returned as soon as the buffer was queued), for at most about 2 s; `close` drains
if that was not done, and closes the private fds.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
from collections.abc import Sequence

import attrs

from runner.kvm.native import Cdata, ffi, lib
from runner.virtio.queue import Virtqueue

DEVICE_ID = 3
QUEUE_SIZE = 256  # a port's queues: Linux keeps its receive queue full of 4 KiB pages
CONTROL_QUEUE_SIZE = 64
F_SIZE = 1 << lib.VMRUN_CONSOLE_F_SIZE
F_MULTIPORT = 1 << lib.VMRUN_CONSOLE_F_MULTIPORT
MAX_PORTS = lib.VMRUN_CONSOLE_MAX_PORTS
NAME_MAX = lib.VMRUN_CONSOLE_NAME_MAX  # bytes of UTF-8
# struct virtio_console_config: le16 cols, le16 rows, le32 max_nr_ports, le32 emerg_wr
# (EMERG_WRITE is not offered: its field is only written, and ignored).
CONFIG = struct.Struct("<HHII")
U16_MAX = 0xFFFF
PTMX = (5, 2)  # /dev/ptmx: opened anew, it makes a new pseudo-terminal


@attrs.frozen
class ConsolePort:
    """A port as the host gives it: input (host -> guest) and output (guest -> host) fds,
    either None; `console` makes it an hvc (multiport; the single port always is);
    `size` is its terminal's (rows, cols)."""

    name: str = ""
    input_fd: int | None = None
    output_fd: int | None = None
    console: bool = False
    size: tuple[int, int] | None = None


def _private_fd(fd: int, writing: bool) -> int | None:
    """The worker's own descriptor for `fd`; None for a pipe that nobody reads any more."""
    st = os.fstat(fd)
    ptmx = stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == PTMX
    if (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)) and not ptmx:
        access = os.O_WRONLY if writing else os.O_RDONLY
        flags = access | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            return os.open(f"/proc/self/fd/{fd}", flags)
        except OSError as exc:
            if writing and exc.errno == errno.ENXIO:
                return None  # its output would only fail with EPIPE
            # Not to be opened twice (a virtio port: EBUSY; a terminal of another user:
            # EACCES): shared, blocking, which the worker polls before each read and write.
    return os.dup(fd)


def _check(ports: Sequence[ConsolePort], multiport: bool) -> None:
    if not multiport and len(ports) != 1:
        raise ValueError(f"a console without MULTIPORT has one port, not {len(ports)}")
    if not 1 <= len(ports) <= MAX_PORTS:
        raise ValueError(f"a console has 1 to {MAX_PORTS} ports, not {len(ports)}")
    for port in ports:
        name = port.name.encode()
        if len(name) > NAME_MAX or b"\0" in name:
            raise ValueError(f"console port name {port.name!r}: NUL or over {NAME_MAX} bytes")
        if port.size is not None:
            _check_size(*port.size)


def _check_size(rows: int, cols: int) -> None:
    if not (0 <= rows <= U16_MAX and 0 <= cols <= U16_MAX):
        raise ValueError(f"terminal size {rows}x{cols} out of range")


class VirtioConsole:
    """A virtio-console device with `ports` (exactly one without `multiport`)."""

    device_id = DEVICE_ID

    def __init__(self, ports: Sequence[ConsolePort], multiport: bool) -> None:
        self._ports = tuple(ports)
        _check(self._ports, multiport)
        self._multiport = multiport
        self.features = (F_SIZE if self._ports[0].size is not None else 0) | (
            F_MULTIPORT if multiport else 0
        )
        count = len(self._ports)
        if multiport:
            port_queues = [(QUEUE_SIZE, QUEUE_SIZE)] * count
            sizes = [*port_queues[0], CONTROL_QUEUE_SIZE, CONTROL_QUEUE_SIZE]
            self.queue_sizes = tuple(sizes + [size for pair in port_queues[1:] for size in pair])
        else:
            self.queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)
        # The worker's lifetime against resize, which may come from another thread, or from a
        # signal handler (SIGWINCH) on the thread that holds the lock: reentrant.
        self._lock = threading.RLock()
        self._sizes = [port.size for port in self._ports]
        self._state = (0, self._config_bytes())  # (generation, config): replaced as one
        self._worker: Cdata | None = None
        self._line: tuple[Cdata, int] | None = None  # (InterruptStatus, irq fd) while active
        self._closed = False
        self._owned: list[int] = []  # the private fds, closed by `close`
        try:
            self._fds = [
                (self._own(port.input_fd, False), self._own(port.output_fd, True))
                for port in self._ports
            ]
        except BaseException:
            self._close_fds()
            raise

    def _own(self, fd: int | None, writing: bool) -> int | None:
        private = None if fd is None else _private_fd(fd, writing)
        if private is not None:
            self._owned.append(private)
        return private

    # ---- the configuration space ----------------------------------------------------------

    def _config_bytes(self) -> bytes:
        rows, cols = self._sizes[0] or (0, 0)
        return CONFIG.pack(cols, rows, len(self._ports), 0)

    def config(self) -> bytes:
        return self._state[1]

    def config_generation(self) -> int:
        """Changes with every change of the configuration; read with `config` as one pair,
        so a driver that reads the same generation before and after saw one state."""
        return self._state[0]

    # ---- the transport's side ---------------------------------------------------------------

    def activate(
        self, queues: Sequence[Virtqueue], notify_fds: Sequence[int], irq_fd: int, status: Cdata
    ) -> None:
        self.reset()
        with self._lock:
            if self._closed:
                return  # the VM is over: nothing left to serve
            count = len(self._ports)
            specs = ffi.new("struct vmrun_console_port[]", count)
            names = []  # kept alive for the call: the worker copies them
            for spec, port, (input_fd, output_fd), size in zip(
                specs, self._ports, self._fds, self._sizes, strict=True
            ):
                name = port.name.encode()
                if name:
                    names.append(ffi.new("char[]", name))
                    spec.name, spec.name_len = names[-1], len(name)
                spec.input_fd = -1 if input_fd is None else input_fd
                spec.output_fd = -1 if output_fd is None else output_fd
                spec.console = port.console
                if size is not None:
                    spec.has_size = 1
                    spec.rows, spec.cols = size
            natives = ffi.new("struct vmrun_virtq *[]", [queue.native for queue in queues])
            fds = ffi.new("int[]", list(notify_fds))
            worker = lib.vmrun_console_start(
                natives, len(queues), fds, irq_fd, status, specs, count, self._multiport
            )
            if worker == ffi.NULL:
                raise OSError(ffi.errno, "cannot start the virtio-console worker")
            self._worker = worker
            self._line = (status, irq_fd)
            if not self._multiport and self._sizes[0] is not None:
                # Linux reads the size on a configuration change only: tell it the first one.
                lib.vmrun_virtio_interrupt_raise(status, lib.VMRUN_VIRTIO_INT_CONFIG, irq_fd)

    def reset(self) -> None:
        """Stop the worker, dropping what the guest queued (a reset of the device)."""
        self._stop(drain=False)

    def drain(self) -> None:
        """The VM ended: write out what the guest queued (for at most about 2 s), then stop
        the worker. Call it once the vCPUs stopped and before the transport closes (its
        close resets, which drops what is queued)."""
        self._stop(drain=True)

    def close(self) -> None:
        """Drain (if not done yet), then close the private fds. Idempotent."""
        self.drain()
        with self._lock:
            self._closed = True
        self._close_fds()

    def _stop(self, drain: bool) -> None:
        with self._lock:
            worker, self._worker, self._line = self._worker, None, None
        if worker is not None:  # outside the lock: a drain may take its 2 s
            lib.vmrun_console_stop(worker, int(drain))

    def _close_fds(self) -> None:
        owned, self._owned = self._owned, []
        for fd in owned:
            os.close(fd)

    # ---- the host's side ------------------------------------------------------------------

    def resize(self, port_index: int, rows: int, cols: int) -> None:
        """Port `port_index`'s terminal is now rows x cols (from any thread)."""
        if not 0 <= port_index < len(self._ports):
            raise IndexError(f"no console port {port_index}")
        _check_size(rows, cols)
        with self._lock:
            self._sizes[port_index] = (rows, cols)
            if port_index == 0:
                self._state = (self._state[0] + 1, self._config_bytes())
            if self._worker is None:
                return  # the next activation starts with the new size
            if self._multiport:
                lib.vmrun_console_resize(self._worker, port_index, rows, cols)
            elif self._line is not None:
                status, irq_fd = self._line
                lib.vmrun_virtio_interrupt_raise(status, lib.VMRUN_VIRTIO_INT_CONFIG, irq_fd)

    def bytes_out(self) -> int:
        """Bytes written to the host since the last activation (tests, benchmarks)."""
        with self._lock:
            return lib.vmrun_console_bytes_out(self._worker) if self._worker is not None else 0

    def bytes_in(self) -> int:
        """Bytes given to the guest since the last activation."""
        with self._lock:
            return lib.vmrun_console_bytes_in(self._worker) if self._worker is not None else 0
