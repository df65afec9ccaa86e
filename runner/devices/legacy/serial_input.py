"""The host side of a serial console's input: a thread that feeds a UART from a host fd.

`input = "stdin"` reads vmrun's stdin; a path reads that file (or FIFO). When stdin is a
terminal, it is put in a character-at-a-time mode without echo or signal keys for the run
(`runner.terminal.raw_mode`, as for a virtio console): the guest's tty does the line
editing and echo, and ^C reaches the workload as a byte, as on a serial line. Output
processing stays on, so the guest's "\\n" still starts a new line on the host's terminal.
The settings come back when the VM ends.

At the end of input the thread stops: a pipe or a file has nothing more. The end of a named
FIFO (a path in the VM file) only means no writer for now, so it waits for the next one.
Nothing outlives the run: the thread polls a wake-up pipe beside its input and is joined by
`close`.
"""

from __future__ import annotations

import os
import select
import threading

from runner.devices.legacy.serial import Serial8250

READ_SIZE = 256
ROOM_WAIT_S = 0.1  # how often a full UART is rechecked, and the stop with it
FIFO_RETRY_S = 0.1  # how often a FIFO without a writer is polled again


class SerialInput:
    """Feeds `uart` from `fd` (owned by the caller) on its own thread, from `start` to `close`;
    with `wait_for_writers` (a named FIFO), the end of input waits for the next writer."""

    def __init__(
        self, fd: int, uart: Serial8250, name: str, *, wait_for_writers: bool = False
    ) -> None:
        self._fd = fd
        self._uart = uart
        self._wait_for_writers = wait_for_writers
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._pump, name=f"serial-input {name}")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_write, b"\0")
        if self._thread.ident is not None:
            self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll())
            if self._wake_read in events:
                return
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return  # an input that fails has ended
            if not data:
                if not self._wait_for_writers:
                    return
                self._stop.wait(FIFO_RETRY_S)  # no writer now; a later one may come
                continue
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        while data and not self._stop.is_set():
            data = data[self._uart.receive(data) :]
            if data:
                self._uart.wait_for_room(ROOM_WAIT_S)
