"""runner/terminal.py on pseudo-terminals: raw mode and its restore on every way out, window
sizes, and what the outer vmrun tells the one inside the emulated host."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import terminal
from runner.host_kvm import INSIDE_ENV
from runner.termination import Terminated, sigterm_unwinds


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def is_raw(fd: int) -> bool:
    iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(fd)
    return (
        not lflag & (termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
        and not iflag & (termios.ICRNL | termios.IXON | termios.INLCR | termios.IGNCR)
        and cflag & termios.CSIZE == termios.CS8
        and bool(oflag & termios.OPOST and oflag & termios.ONLCR)  # "\n" still starts a line
        and (cc[termios.VMIN], cc[termios.VTIME]) == (1, 0)
    )


def test_raw_mode_sets_a_console_up_and_gives_the_settings_back(pty: tuple[int, int]) -> None:
    _, slave = pty
    before = termios.tcgetattr(slave)
    assert not is_raw(slave)
    with terminal.raw_mode(slave):
        assert is_raw(slave)
        with terminal.raw_mode(slave):  # two consoles on one terminal
            assert is_raw(slave)
        assert is_raw(slave)
    assert termios.tcgetattr(slave) == before


def test_raw_mode_gives_the_settings_back_when_the_run_fails(pty: tuple[int, int]) -> None:
    _, slave = pty
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError, match="the VM failed"), terminal.raw_mode(slave):
        raise RuntimeError("the VM failed")
    assert termios.tcgetattr(slave) == before
    assert terminal._RAW == []


def test_raw_mode_gives_the_settings_back_at_sigterm(pty: tuple[int, int]) -> None:
    # vmrun's SIGTERM raises Terminated in the main thread (runner/termination.py).
    _, slave = pty
    before = termios.tcgetattr(slave)
    with pytest.raises(Terminated), sigterm_unwinds(), terminal.raw_mode(slave):
        assert is_raw(slave)
        os.kill(os.getpid(), signal.SIGTERM)
    assert termios.tcgetattr(slave) == before


def test_raw_mode_gives_the_settings_back_at_exit_when_nothing_else_did(
    pty: tuple[int, int],
) -> None:
    # A raw mode whose context is never left (a daemon thread's, at the interpreter's exit):
    # the atexit fallback restores it.
    _, slave = pty
    before = termios.tcgetattr(slave)
    script = (
        "import sys, threading\n"
        "from runner import terminal\n"
        "fd = int(sys.argv[1])\n"
        "entered = threading.Event()\n"
        "def hold():\n"
        "    with terminal.raw_mode(fd):\n"
        "        entered.set()\n"
        "        threading.Event().wait()\n"
        "threading.Thread(target=hold, daemon=True).start()\n"
        "entered.wait()\n"
        "print(terminal.raw_attributes(terminal._RAW[0][1]) == __import__('termios')"
        ".tcgetattr(fd))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(slave)],
        pass_fds=[slave], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n"  # it was raw while the process ran
    assert termios.tcgetattr(slave) == before


def test_raw_mode_leaves_a_non_terminal_alone() -> None:
    read_end, write_end = os.pipe()
    try:
        with terminal.raw_mode(read_end):
            pass
        assert terminal._RAW == []
    finally:
        os.close(read_end)
        os.close(write_end)


def test_window_size_is_the_terminal_s(pty: tuple[int, int]) -> None:
    master, slave = pty
    set_size(master, 0, 0)
    assert terminal.window_size(slave) is None  # never set (a serial line's)
    set_size(master, 43, 132)
    assert terminal.window_size(slave) == (43, 132)
    read_end, write_end = os.pipe()
    assert terminal.window_size(read_end) is None
    os.close(read_end)
    os.close(write_end)


@pytest.mark.parametrize(
    ("text", "size"),
    [("24 80", (24, 80)), (" 1 65535\n", (1, 65535)), ("0 80", None), ("24 65536", None),
     ("24", None), ("24 80 1", None), ("-1 80", None), ("a b", None), ("", None)],
)  # fmt: skip
def test_parse_size(text: str, size: tuple[int, int] | None) -> None:
    assert terminal.parse_size(text) == size


def test_watch_window_size_follows_sigwinch_and_gives_the_handler_back(
    pty: tuple[int, int],
) -> None:
    master, slave = pty
    earlier: list[int] = []
    previous = signal.signal(signal.SIGWINCH, lambda number, _frame: earlier.append(number))
    seen: list[tuple[int, int]] = []
    try:
        handler = signal.getsignal(signal.SIGWINCH)
        with terminal.watch_window_size(lambda rows, cols: seen.append((rows, cols)), slave):
            set_size(master, 50, 160)
            os.kill(os.getpid(), signal.SIGWINCH)  # handled before the next bytecode
            assert seen == [(50, 160)]
            assert earlier == [signal.SIGWINCH]  # the handler before it still hears of it
        assert signal.getsignal(signal.SIGWINCH) is handler
    finally:
        signal.signal(signal.SIGWINCH, previous)


@contextlib.contextmanager
def as_stdin(fd: int) -> Iterator[None]:
    """`fd` on fd 0 while inside."""
    saved = os.dup(0)
    os.dup2(fd, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@pytest.fixture
def inside(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Inside the emulated host, where /dev/null stands for a virtio-serial port (a fake
    /sys/class/virtio-ports names its device number); returns that directory."""
    ports = tmp_path / "virtio-ports"
    (ports / "vport1p1").mkdir(parents=True)
    device = os.stat("/dev/null").st_rdev
    (ports / "vport1p1" / "dev").write_text(f"{os.major(device)}:{os.minor(device)}\n")
    monkeypatch.setattr(terminal, "VIRTIO_PORTS", ports)
    monkeypatch.setattr(terminal._SIZE_LINES, "latest", None)
    monkeypatch.setenv(INSIDE_ENV, "1")
    monkeypatch.setenv(terminal.TERMINALS_ENV, "0")
    monkeypatch.setenv(terminal.SIZE_ENV, "24 80")
    monkeypatch.delenv(terminal.WINSIZE_PORT_ENV, raising=False)
    return ports


def test_inside_the_outer_vmrun_says_which_port_is_a_terminal(
    inside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    null = os.open("/dev/null", os.O_RDONLY)
    read_end, write_end = os.pipe()
    try:
        with as_stdin(null):
            assert 0 in terminal.stdio_terminals()
            assert terminal.window_size(0) == (24, 80)
            with terminal.raw_mode(0):  # the outer vmrun's to do: nothing here
                pass
            monkeypatch.setenv(terminal.TERMINALS_ENV, "1 2")
            assert 0 not in terminal.stdio_terminals()
            assert terminal.window_size(0) is None
            monkeypatch.setenv(terminal.TERMINALS_ENV, "0")
            monkeypatch.delenv(INSIDE_ENV)
            assert 0 not in terminal.stdio_terminals()  # outside, the variable means nothing
            monkeypatch.setenv(INSIDE_ENV, "1")
        with as_stdin(read_end):  # a pipe given in between is no terminal, whatever was said
            assert 0 not in terminal.stdio_terminals()
            assert terminal.window_size(0) is None
    finally:
        for fd in (null, read_end, write_end):
            os.close(fd)


def test_inside_a_real_terminal_is_one(inside: Path, pty: tuple[int, int]) -> None:
    master, slave = pty
    set_size(master, 33, 99)
    with as_stdin(slave):
        assert 0 in terminal.stdio_terminals()
        assert terminal.window_size(0) == (33, 99)  # its own, not the outer one's


def test_inside_new_sizes_come_from_the_port(
    inside: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = tmp_path / "winsize"
    os.mkfifo(port)
    monkeypatch.setenv(terminal.WINSIZE_PORT_ENV, str(port))
    seen: list[tuple[int, int]] = []
    got = threading.Event()

    def follow(rows: int, cols: int) -> None:
        seen.append((rows, cols))
        if (rows, cols) == (40, 120):
            got.set()

    null = os.open("/dev/null", os.O_RDONLY)
    handler = signal.getsignal(signal.SIGWINCH)
    try:
        with as_stdin(null), terminal.watch_window_size(follow, 0):
            assert signal.getsignal(signal.SIGWINCH) is handler  # no SIGWINCH comes in there
            with open(port, "wb", buffering=0) as outer:  # the outer vmrun's end
                outer.write(b"30 100\nnot a size\n" + b"9" * 500 + b" 7\n40 ")
                outer.write(b"120\n")
                assert got.wait(10)
                assert seen == [(30, 100), (40, 120)]
                assert terminal.window_size(0) == (40, 120)  # not the start's any more
        assert terminal._SIZE_LINES._thread is None  # the reader stopped with the last watcher
    finally:
        os.close(null)
