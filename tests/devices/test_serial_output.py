"""A console's output never blocks a vCPU: bounded buffer, writer thread, loss said once."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from runner.devices.legacy.serial import THR, Serial8250
from runner.devices.legacy.serial_output import OutputFileError, SerialOutput, open_output_file


def test_output_arrives_whole_and_in_order_and_close_drains_it() -> None:
    sink = io.BytesIO()
    said: list[str] = []
    output = SerialOutput(sink, "ttyS0", say=said.append)
    for n in range(2000):
        output.write(b"%d\n" % n)
    output.close()
    assert sink.getvalue() == b"".join(b"%d\n" % n for n in range(2000))
    assert said == []


def test_a_reader_that_stops_never_blocks_the_writer_and_loss_is_said_once() -> None:
    read_end, write_end = os.pipe()
    said: list[str] = []
    with os.fdopen(write_end, "wb") as stream:
        output = SerialOutput(stream, "ttyS0 (vmrun's stdout)", bound=4096, say=said.append)
        uart = Serial8250(output, lambda: None)
        start = time.monotonic()
        for _ in range(200_000):  # far more than the pipe and the bound hold; nobody reads
            uart.write(THR, 1, ord("x"))
        assert time.monotonic() - start < 30  # a vCPU's writes went on: nothing blocked
        assert said == [
            "ttyS0 (vmrun's stdout): the reader is 4096 bytes behind; "
            "the guest's output beyond that is lost until it catches up"
        ]
        # The reader comes back: what was buffered is written, then close returns.
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(_read_all(read_end)))
        reader.start()
        output.close()
    reader.join(10)
    assert not reader.is_alive()
    assert 4096 <= len(received) < 200_000 and set(received) == {ord("x")}


def test_a_reader_that_goes_away_loses_the_rest_said_once() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    said: list[str] = []
    with os.fdopen(write_end, "wb") as stream:
        output = SerialOutput(stream, "ttyS1 (vmrun's stdout)", say=said.append)
        for _ in range(100):
            output.write(b"line\n")
            time.sleep(0.001)
        output.close()  # returns: nothing can be written any more
        stream.write(b"still buffered")  # and flushing it later is quiet (/dev/null now)
    assert len(said) == 1
    assert said[0].startswith("ttyS1 (vmrun's stdout): cannot write the guest's output (")


def test_close_waits_interruptibly_for_a_slow_reader() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as stream:
        output = SerialOutput(stream, "ttyS0", say=lambda _: None)
        output.write(b"y" * 200_000)  # more than a pipe holds
        closer = threading.Thread(target=output.close)
        closer.start()
        closer.join(1)
        assert closer.is_alive()  # waiting for the reader, in short waits
        received = _read_all(read_end, 200_000)
        closer.join(10)
        assert not closer.is_alive()
    assert received == b"y" * 200_000
    os.close(read_end)


def _read_all(fd: int, want: int | None = None) -> bytes:
    data = bytearray()
    while want is None or len(data) < want:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


# --- the files a VM file names for output --------------------------------------------------


def test_a_regular_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"before\n")
    with open_output_file(str(path), "serial_consoles[0].output") as stream:
        stream.write(b"after\n")
    assert path.read_bytes() == b"before\nafter\n"


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    # A link planted where the file is would redirect the writes (O_NOFOLLOW).
    target = tmp_path / "precious"
    target.write_bytes(b"keep\n")
    (tmp_path / "console.log").symlink_to(target)
    with pytest.raises(OutputFileError, match=r"console\.log is a symbolic link"):
        open_output_file(str(tmp_path / "console.log"), "serial_consoles[0].output")
    assert target.read_bytes() == b"keep\n"


@pytest.mark.parametrize("reader", [False, True], ids=["no-reader", "with-reader"])
def test_a_fifo_is_refused_without_waiting(tmp_path: Path, reader: bool) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else None
    try:
        with pytest.raises(OutputFileError, match=r"FIFO|not a regular file"):
            open_output_file(str(fifo), "serial_consoles[0].output")
    finally:
        if held is not None:
            os.close(held)


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero", "/"])
def test_devices_and_directories_are_refused(path: str) -> None:
    with pytest.raises(OutputFileError, match=r"serial_consoles\[0\]\.output: "):
        open_output_file(path, "serial_consoles[0].output")


def test_abandoned_output_lets_close_return_while_the_writer_is_stuck() -> None:
    # vmrun stopped by SIGINT or SIGTERM does not wait for a reader that stopped reading.
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as stream:
        output = SerialOutput(stream, "ttyS0", say=lambda _: None)
        output.write(b"z" * 200_000)  # more than a pipe holds: the writer thread blocks
        time.sleep(0.2)
        output.abandon()
        start = time.monotonic()
        output.close()
        assert time.monotonic() - start < 1
        output.write(b"later")  # taken no more
        os.close(read_end)  # the stuck write fails now; its thread ends
