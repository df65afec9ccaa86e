"""A serial console's input: the UART's receive side, and the thread that feeds it."""

from __future__ import annotations

import io
import os
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.devices.legacy.serial import RX_CAPACITY, Serial8250
from runner.devices.legacy.serial_input import SerialInput
from runner.terminal import raw_mode

RBR, IER, IIR, LSR = 0, 1, 2, 5
IER_RDI, IER_THRI = 0x01, 0x02


def uart_with_irqs() -> tuple[Serial8250, list[int]]:
    raised: list[int] = []
    return Serial8250(io.BytesIO(), lambda: raised.append(1)), raised


def drain(uart: Serial8250) -> bytes:
    out = bytearray()
    while uart.read(LSR, 1) & 0x01:  # data ready
        out.append(uart.read(RBR, 1))
    return bytes(out)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_input_waits_for_the_driver_to_enable_receive_interrupts() -> None:
    # Linux's start-up reads RBR once to clear it: a byte taken before would be lost.
    uart, raised = uart_with_irqs()
    assert uart.receive(b"early") == 0
    assert uart.read(LSR, 1) & 0x01 == 0
    uart.write(IER, 1, IER_RDI)
    assert uart.receive(b"hello") == 5
    assert raised == [1]
    assert uart.read(LSR, 1) == 0x61  # data ready, transmitter empty
    assert drain(uart) == b"hello"
    assert uart.read(RBR, 1) == 0  # an empty buffer reads zero


def test_received_data_outranks_transmitter_empty_until_read() -> None:
    uart, _ = uart_with_irqs()
    uart.write(IER, 1, IER_RDI | IER_THRI)
    uart.receive(b"ab")
    assert uart.read(IIR, 1) == 0x04  # received data available
    assert uart.read(IIR, 1) == 0x04  # reading IIR does not acknowledge it
    drain(uart)
    assert uart.read(IIR, 1) == 0x02  # then the pending THRE
    assert uart.read(IIR, 1) == 0x01


def test_more_input_while_data_waits_raises_no_second_interrupt() -> None:
    uart, raised = uart_with_irqs()
    uart.write(IER, 1, IER_RDI)
    uart.receive(b"a")
    uart.receive(b"b")
    assert raised == [1]
    assert drain(uart) == b"ab"
    uart.receive(b"c")  # the buffer was read empty: a fresh edge
    assert raised == [1, 1]


def test_bytes_are_hidden_while_receive_interrupts_are_off() -> None:
    # Linux's autoconfig sets IER to 0x0f for a moment, then start-up reads RBR to clear it
    # three times with IER off: none of those reads may take a byte.
    uart, _ = uart_with_irqs()
    uart.write(IER, 1, 0x0F)
    uart.receive(b"hello")
    uart.write(IER, 1, 0)
    assert [uart.read(RBR, 1) for _ in range(3)] == [0, 0, 0]
    assert uart.read(LSR, 1) & 0x01 == 0
    assert uart.read(IIR, 1) & 0x0F == 0x01  # no interrupt pending
    uart.write(IER, 1, IER_RDI)
    assert drain(uart) == b"hello"


def test_enabling_receive_interrupts_with_data_waiting_raises_one() -> None:
    uart, raised = uart_with_irqs()
    uart.write(IER, 1, IER_RDI)
    uart.receive(b"x")
    uart.write(IER, 1, 0)  # throttled
    assert uart.receive(b"y") == 0
    raised.clear()
    uart.write(IER, 1, IER_RDI)
    assert raised == [1]
    assert drain(uart) == b"x"


def test_the_buffer_takes_what_fits_and_says_when_it_has_room() -> None:
    uart, _ = uart_with_irqs()
    uart.write(IER, 1, IER_RDI)
    assert uart.receive(bytes(RX_CAPACITY + 10)) == RX_CAPACITY
    assert not uart.wait_for_room(0.01)
    uart.read(RBR, 1)
    assert uart.wait_for_room(0.01)


def test_a_pipe_feeds_the_uart_in_order_and_its_end_stops_the_thread() -> None:
    uart, _ = uart_with_irqs()
    uart.write(IER, 1, IER_RDI)
    read_end, write_end = os.pipe()
    feeder = SerialInput(read_end, uart, "ttyS0")
    feeder.start()
    data = bytes(range(256)) * 4  # more than the buffer holds: the thread waits for room
    os.write(write_end, data)
    os.close(write_end)
    received = bytearray()
    assert eventually(lambda: received.extend(drain(uart)) or len(received) == len(data))
    assert bytes(received) == data
    assert eventually(lambda: not feeder._thread.is_alive())  # the end of the pipe
    feeder.close()
    os.close(read_end)


def test_close_stops_a_thread_waiting_for_input() -> None:
    uart, _ = uart_with_irqs()
    read_end, write_end = os.pipe()
    feeder = SerialInput(read_end, uart, "ttyS0")
    feeder.start()
    time.sleep(0.05)
    feeder.close()
    assert not feeder._thread.is_alive()
    os.close(read_end)
    os.close(write_end)


def test_a_fifo_waits_for_its_next_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "in"
    os.mkfifo(fifo)
    uart, _ = uart_with_irqs()
    uart.write(IER, 1, IER_RDI)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    feeder = SerialInput(fd, uart, "ttyS0", wait_for_writers=True)
    feeder.start()
    for word in (b"one", b"two"):  # two writers, one after the other
        with open(fifo, "wb") as writer:
            writer.write(word)
        assert eventually(lambda w=word: uart.read(LSR, 1) & 0x01 == 1)
        assert drain(uart) == word
    assert feeder._thread.is_alive()
    feeder.close()
    os.close(fd)


def test_a_terminal_passes_keys_and_comes_back_as_it_was() -> None:
    primary, secondary = os.openpty()
    before = termios.tcgetattr(secondary)
    with raw_mode(secondary):
        mode = termios.tcgetattr(secondary)
        assert not mode[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert not mode[0] & termios.ICRNL
        assert mode[1] & termios.OPOST  # the guest's "\n" still starts a line
        os.write(primary, b"\x03")  # ^C is a byte for the guest, not SIGINT for vmrun
        assert os.read(secondary, 1) == b"\x03"
    assert termios.tcgetattr(secondary) == before
    os.close(primary)
    os.close(secondary)


@pytest.mark.parametrize("value", [b"\n", b"q"])
def test_output_is_unaffected_by_input(value: bytes) -> None:
    sink = io.BytesIO()
    uart = Serial8250(sink, lambda: None)
    uart.write(IER, 1, IER_RDI)
    uart.receive(b"in")
    uart.write(0, 1, value[0])
    assert sink.getvalue() == value
    assert drain(uart) == b"in"
