"""virtio-console through the virtio-mmio transport, the guest's side played as Linux's
virtio_console would (tests/virtio/console_guest.py), over real pipes, files and sockets on
the host's side."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from console_guest import (
    BAD_ID,
    CONSOLE_PORT,
    CONTROL_RX,
    CONTROL_TX,
    DEVICE_ADD,
    DEVICE_READY,
    PORT_NAME,
    PORT_OPEN,
    PORT_READY,
    RESIZE,
    Device,
    close_end,
    new_pipe,
    quiet,
    read_exactly,
)
from test_mmio_transport import wait_for

from runner.devices.virtio.console import CONFIG, F_MULTIPORT, F_SIZE, ConsolePort, VirtioConsole
from runner.devices.virtio.mmio import Reg
from runner.kvm.memory import GuestMemory
from runner.kvm.native import lib


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    with GuestMemory.flat(0x200000) as memory:
        yield memory


@pytest.fixture
def pipes() -> Iterator[list[int]]:
    """Pipes for a test, closed after it (an entry set to -1 is closed already)."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        if fd >= 0:
            os.close(fd)


Make = Callable[..., Device]


@pytest.fixture
def make(memory: GuestMemory) -> Iterator[Make]:
    devices: list[Device] = []

    def make(ports: Sequence[ConsolePort], multiport: bool = False, start: bool = True) -> Device:
        devices.append(Device(memory, ports, multiport))
        if start:
            devices[-1].start()
        return devices[-1]

    yield make
    for device in devices:
        device.close()


# ---- one port ---------------------------------------------------------------------------------


def test_one_port_carries_bytes_both_ways(make: Make, pipes: list[int]) -> None:
    out_r, out_w = new_pipe(pipes)
    in_r, in_w = new_pipe(pipes)
    device = make([ConsolePort(input_fd=in_r, output_fd=out_w, console=True, size=(24, 80))])
    assert device.guest.read(Reg.DEVICE_ID) == 3
    assert device.backend.features == F_SIZE and len(device.backend.queue_sizes) == 2
    cols, rows, max_ports, _ = CONFIG.unpack(
        bytes(device.transport.read(Reg.CONFIG + i, 1) for i in range(12))
    )
    assert (cols, rows, max_ports) == (80, 24, 1)
    # The worker's fds are its own descriptions: the caller's pipe stays blocking.
    assert not fcntl.fcntl(out_w, fcntl.F_GETFL) & os.O_NONBLOCK

    message = bytes(range(256)) * 40
    device.send(1, message, pieces=7)
    device.wait_used(1, 1)
    assert device.received(1) == [b""]  # a transmit chain comes back with nothing written
    assert read_exactly(out_r, len(message)) == message

    device.give(0, 2)
    quiet()
    assert device.queues[0].used_idx == 0  # no chain is taken before there are bytes for it
    os.write(in_w, b"hello, guest")
    device.wait_used(0, 1)
    assert device.received(0) == [b"hello, guest"]
    assert device.guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_USED
    assert (device.backend.bytes_out(), device.backend.bytes_in()) == (len(message), 12)


def test_a_resize_changes_the_config_and_interrupts(make: Make, pipes: list[int]) -> None:
    _, out_w = new_pipe(pipes)
    device = make([ConsolePort(output_fd=out_w, size=(24, 80))])
    # Linux reads the size on a configuration change only: the first one comes at DRIVER_OK.
    assert device.guest.read(Reg.INTERRUPT_STATUS) == lib.VMRUN_VIRTIO_INT_CONFIG
    assert os.eventfd_read(device.irq) == 1
    device.guest.write(Reg.INTERRUPT_ACK, lib.VMRUN_VIRTIO_INT_CONFIG)
    generation = device.guest.read(Reg.CONFIG_GENERATION)
    device.backend.resize(0, 50, 132)
    assert device.guest.read(Reg.CONFIG_GENERATION) != generation
    config = device.transport.read(Reg.CONFIG, 2), device.transport.read(Reg.CONFIG + 2, 2)
    assert config == (132, 50)
    assert device.guest.read(Reg.INTERRUPT_STATUS) == lib.VMRUN_VIRTIO_INT_CONFIG
    assert os.eventfd_read(device.irq) == 1


def test_without_a_size_there_is_no_f_size(make: Make) -> None:
    assert make([ConsolePort()], start=False).backend.features == 0
    with pytest.raises(ValueError):
        VirtioConsole([ConsolePort(), ConsolePort()], multiport=False)


def test_a_regular_file_gets_the_bytes(make: Make, tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        device = make([ConsolePort(output_fd=fd)])
        device.send(1, b"to a file\n" * 1000, pieces=3)
        device.wait_used(1, 1)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"to a file\n" * 1000


def test_a_socket_gets_the_bytes(make: Make) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        device = make([ConsolePort(output_fd=theirs.fileno())])
        device.send(1, b"over a socket")
        device.wait_used(1, 1)
        assert ours.recv(100) == b"over a socket"


def test_a_full_pipe_holds_the_chain_until_read(make: Make, pipes: list[int]) -> None:
    out_r, out_w = new_pipe(pipes)
    device = make([ConsolePort(output_fd=out_w)])
    os.set_blocking(out_w, False)  # the test's own description: to fill the pipe
    filled = 0
    try:
        while True:
            filled += os.write(out_w, b"x" * 4096)
    except BlockingIOError:
        pass
    message = os.urandom(100_000)
    device.send(1, message, pieces=5)
    quiet()
    assert device.queues[1].used_idx == 0  # back-pressure: not complete while unwritten
    data = b""
    while len(data) < filled + len(message):
        data += os.read(out_r, 65536)
    device.wait_used(1, 1)
    assert data == b"x" * filled + message


def test_a_reader_that_never_reads_holds_the_stop_for_the_deadline_only(
    make: Make, pipes: list[int]
) -> None:
    _, out_w = new_pipe(pipes)
    device = make([ConsolePort(output_fd=out_w)])
    os.set_blocking(out_w, False)
    try:
        while True:
            os.write(out_w, b"x" * 4096)
    except BlockingIOError:
        pass
    device.send(1, b"never read")
    quiet()
    started = time.monotonic()
    device.backend.close()
    waited = time.monotonic() - started
    deadline = lib.VMRUN_CONSOLE_DRAIN_MS / 1000
    assert deadline * 0.9 <= waited < deadline + 1.5  # it tried, and gave up in time


def test_a_description_that_cannot_be_opened_anew_is_shared_and_polled(
    make: Make, pipes: list[int]
) -> None:
    master, slave = os.openpty()  # a pty master: opened anew, it would make a new pty
    pipes += [master, slave]
    tty.setraw(slave)  # no echo back into the port's input
    device = make([ConsolePort(input_fd=master, output_fd=master)])
    device.send(1, b"through a pty")
    device.wait_used(1, 1)
    assert read_exactly(slave, 13) == b"through a pty"
    device.give(0)
    os.write(slave, b"and back")
    device.wait_used(0, 1)
    assert device.received(0) == [b"and back"]
    # Nobody reads the terminal: it fills, and the stop keeps to its bound all the same.
    device.send(1, b"y" * 300_000)
    quiet()
    started = time.monotonic()
    device.backend.close()
    assert time.monotonic() - started < lib.VMRUN_CONSOLE_DRAIN_MS / 1000 + 2.5


def test_stopping_with_drain_writes_what_the_guest_queued(make: Make, pipes: list[int]) -> None:
    out_r, out_w = new_pipe(pipes)
    device = make([ConsolePort(output_fd=out_w)])
    quiet()
    device.send(1, b"the last words ", kick=False)  # queued, never notified
    device.send(1, b"before exit", kick=False)
    quiet()
    assert device.queues[1].used_idx == 0
    device.backend.drain()
    assert os.read(out_r, 100) == b"the last words before exit"
    device.send(1, b"after the end", kick=True)
    quiet()
    assert device.queues[1].used_idx == 2  # the worker is gone


def test_a_reset_drops_the_queue_without_drain(make: Make, pipes: list[int]) -> None:
    out_r, out_w = new_pipe(pipes)
    device = make([ConsolePort(output_fd=out_w)])
    quiet()
    device.send(1, b"dropped", kick=False)
    device.guest.write(Reg.STATUS, 0)
    os.set_blocking(out_r, False)
    with pytest.raises(BlockingIOError):
        os.read(out_r, 100)


def test_a_closed_reader_drops_the_output_and_the_device_goes_on(
    make: Make, pipes: list[int]
) -> None:
    out_r, out_w = new_pipe(pipes)
    in_r, in_w = new_pipe(pipes)
    device = make([ConsolePort(input_fd=in_r, output_fd=out_w)])
    close_end(pipes, out_r)
    for _ in range(3):
        device.send(1, b"nobody reads this")
    device.wait_used(1, 3)
    assert not device.broken and device.backend.bytes_out() == 0
    device.give(0)
    os.write(in_w, b"still here")
    device.wait_used(0, 1)
    assert device.received(0) == [b"still here"]


@pytest.mark.parametrize(
    ("queue", "writable"), [(0, False), (1, True)], ids=["readable-rx", "writable-tx"]
)
def test_a_buffer_in_the_wrong_direction_breaks_the_device(
    make: Make, pipes: list[int], queue: int, writable: bool
) -> None:
    in_r, in_w = new_pipe(pipes)
    device = make([ConsolePort(input_fd=in_r)])
    device.give(queue, writable=writable)
    os.write(in_w, b"data")
    wait_for(lambda: device.broken, "DEVICE_NEEDS_RESET")
    assert device.guest.read(Reg.INTERRUPT_STATUS) & lib.VMRUN_VIRTIO_INT_CONFIG


def test_close_closes_its_own_fds_and_keeps_the_callers(pipes: list[int]) -> None:
    in_r, out_w = new_pipe(pipes)
    before = len(os.listdir("/proc/self/fd"))
    console = VirtioConsole([ConsolePort(input_fd=in_r, output_fd=out_w)], multiport=False)
    assert len(os.listdir("/proc/self/fd")) == before + 2
    console.close()
    console.close()
    assert len(os.listdir("/proc/self/fd")) == before
    os.fstat(in_r)
    os.fstat(out_w)


# ---- multiport --------------------------------------------------------------------------------

PORTS = ("", "krun-stdin", "krun-stdout")


@pytest.fixture
def multi(make: Make, pipes: list[int]) -> tuple[Device, dict[str, int]]:
    """Port 0 a 24x80 console, port 1 input only, port 2 output only; the handshake done."""
    console_r, console_w = new_pipe(pipes)
    stdin_r, stdin_w = new_pipe(pipes)
    stdout_r, stdout_w = new_pipe(pipes)
    device = make(
        [
            ConsolePort(output_fd=console_w, console=True, size=(24, 80)),
            ConsolePort(name="krun-stdin", input_fd=stdin_r),
            ConsolePort(name="krun-stdout", output_fd=stdout_w),
        ],
        multiport=True,
    )
    device.give(CONTROL_RX, 32, length=512)
    device.control(BAD_ID, DEVICE_READY)
    assert sorted(device.messages(3)) == [(i, DEVICE_ADD, 1, b"") for i in range(3)]
    return device, {"console": console_r, "stdin": stdin_w, "stdout": stdout_r}


def test_multiport_layout(multi) -> None:
    device, _ = multi
    assert device.backend.features == F_SIZE | F_MULTIPORT
    assert len(device.backend.queue_sizes) == 8
    assert CONFIG.unpack(device.backend.config())[2] == 3


def test_the_handshake_names_opens_and_sizes_the_ports(multi) -> None:
    device, _ = multi
    for port in range(3):
        device.control(port, PORT_READY)
    got = device.messages(7)
    for port in range(3):
        mine = [m for m in got if m[0] == port]
        assert mine[-1] == (port, PORT_OPEN, 1, b"")  # last: the host side is connected
        if PORTS[port]:
            assert (port, PORT_NAME, 1, PORTS[port].encode()) in mine
    console = [m[1:] for m in got if m[0] == 0]
    assert console == [(CONSOLE_PORT, 1, b""), (RESIZE, 0, struct.pack("<HH", 80, 24)),
                       (PORT_OPEN, 1, b"")]  # fmt: skip


def test_input_waits_for_the_guest_to_open_and_ends_with_port_open_0(
    multi, pipes: list[int]
) -> None:
    device, fds = multi
    device.control(1, PORT_READY)
    device.messages(2)
    device.give(4, 4)
    data = os.urandom(10_000)
    os.write(fds["stdin"], data)
    quiet()
    assert device.queues[4].used_idx == 0  # Linux drops what comes for a closed port
    device.control(1, PORT_OPEN, 1)
    close_end(pipes, fds["stdin"])
    assert device.messages(1) == [(1, PORT_OPEN, 0, b"")]
    assert b"".join(device.received(4)) == data  # all in the used ring before the close


def test_a_resize_is_a_message_for_a_console_port(multi) -> None:
    device, _ = multi
    device.backend.resize(0, 30, 100)  # before PORT_READY: sent after it, with the new size
    device.backend.resize(2, 30, 100)  # not a console: nothing to say
    quiet()
    assert device.queues[CONTROL_RX].used_idx == 3
    device.control(0, PORT_READY)
    assert device.messages(3)[1] == (0, RESIZE, 0, struct.pack("<HH", 100, 30))
    device.backend.resize(0, 31, 101)
    assert device.messages(1) == [(0, RESIZE, 0, struct.pack("<HH", 101, 31))]
    assert CONFIG.unpack(device.backend.config())[:2] == (101, 31)


def test_output_of_several_ports(multi) -> None:
    device, fds = multi
    device.send(1, b"to the console")
    device.send(7, b"to krun-stdout")
    device.wait_used(1, 1)
    device.wait_used(7, 1)
    assert os.read(fds["console"], 100) == b"to the console"
    assert os.read(fds["stdout"], 100) == b"to krun-stdout"


def test_a_flood_of_control_messages_keeps_the_state_bounded(multi) -> None:
    device, _ = multi
    for _ in range(20):  # 1000 DEVICE_READY and PORT_READY, 25 of each at a time
        for _ in range(25):
            device.control(BAD_ID, DEVICE_READY)
            device.control(1, PORT_READY)
        device.wait_used(CONTROL_TX, 50)
        device.queues[CONTROL_TX].take_used()
    quiet()
    assert not device.broken
    # What the device still owes: flags (DEVICE_ADD for each port, port 1's name and
    # PORT_OPEN), not a queue of 1000s of messages.
    before = device.queues[CONTROL_RX].used_idx
    device.give(CONTROL_RX, 32, length=512)
    quiet()
    assert (device.queues[CONTROL_RX].used_idx - before) % 65536 <= 5
    device.received(CONTROL_RX)
    device.control(2, PORT_READY)
    assert device.messages(2) == [(2, PORT_NAME, 1, b"krun-stdout"), (2, PORT_OPEN, 1, b"")]


def test_bad_ids_events_and_short_messages_are_ignored(multi) -> None:
    device, _ = multi
    device.control(99, PORT_READY)
    device.control(BAD_ID, PORT_OPEN)
    device.control(0, 1234)
    device.control(0, CONSOLE_PORT)  # a host's message, from the guest
    device.send(CONTROL_TX, b"\0\0\0\0\3\0")  # a short PORT_READY
    device.control(2, PORT_READY, pieces=3)  # split across buffers: a message all the same
    assert device.messages(2) == [(2, PORT_NAME, 1, b"krun-stdout"), (2, PORT_OPEN, 1, b"")]
    quiet()
    assert device.queues[CONTROL_RX].used_idx == 5 and not device.broken


@pytest.mark.parametrize(
    ("queue", "writable"),
    [(CONTROL_TX, True), (CONTROL_RX, False), (7, True)],
    ids=["writable-control-tx", "readable-control-rx", "writable-port-tx"],
)
def test_wrong_directions_on_multiport_queues_break_the_device(
    make: Make, queue: int, writable: bool
) -> None:
    device = make([ConsolePort(), ConsolePort(), ConsolePort()], multiport=True)
    device.give(queue, writable=writable)
    device.control(BAD_ID, DEVICE_READY)  # something to send on the control receiveq
    wait_for(lambda: device.broken, "DEVICE_NEEDS_RESET")
    # A reset gives the guest a working device again.
    device.guest.write(Reg.STATUS, 0)
    assert not device.broken
