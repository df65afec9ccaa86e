"""vmrun's stdin into the emulated host: every byte and then its end, and a terminal there as
the command's raw console, window size included (runner/emulated/inbound_ports.py).

Two boots of a real emulated host (QEMU TCG, about 10 s each); where QEMU is missing they
skip, except under CI.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

VMRUN = [sys.executable, "-m", "runner", "emulated-host"]
pytestmark = pytest.mark.usefixtures("qemu_present")  # tests/emulated/conftest.py


def test_stdin_reaches_the_command_to_its_end(tmp_path: Path) -> None:
    # A megabyte after two lines: no byte lost or moved, and `cat` ends, so the end came
    # too. The command starts reading only after its sleep: by then vmrun has written all
    # of it and ended its side, and what QEMU has not read yet must still come.
    data = b"a\nb\n" + os.urandom(1 << 20)
    script = 'sleep 2; cat > got.bin; echo "[$VMRUN_STDIO_TERMINALS]"'
    result = subprocess.run(
        [*VMRUN, "--", "sh", "-c", script],
        cwd=tmp_path, input=data, capture_output=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"[]\n"  # a pipe, not a terminal
    got = (tmp_path / "got.bin").read_bytes()
    assert len(got) == len(data)
    assert got == data


# Run in a process whose stdin and stdout are a pseudo-terminal: the command of a `vmrun run`
# through the emulated host (runner/emulated/delegate.py), here a Python that reports what
# the vmrun inside would see (runner/terminal.py).
OUTER = """
import sys
from runner.emulated.host import Settings, run_in_host
from runner.emulated.image import provision
settings = Settings(stdin="raw", timeout_s=240)
outcome = run_in_host(provision(), sys.argv[1:], settings, sys.stdout.buffer, sys.stderr.buffer)
print(outcome.message, file=sys.stderr)
sys.exit(outcome.status)
"""
INNER = """
import os, threading
from runner import terminal
sizes = []
resized = threading.Event()
def follow(rows, cols):
    sizes.append((rows, cols))
    resized.set()
print("facts", sorted(terminal.stdio_terminals()), terminal.window_size(0), flush=True)
with terminal.watch_window_size(follow, 0):
    print("ready", flush=True)
    keys = b""
    while len(keys) < 3:
        keys += os.read(0, 16)
    print("keys", keys.hex(), flush=True)
    resized.wait(60)
print("sizes", sizes, terminal.window_size(1), flush=True)
"""


class Screen:
    """What arrives on a pseudo-terminal's master side."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.text = ""

    def wait_for(self, expected: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while expected not in self.text and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    self.text += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # no slave side left open
                    break
        return expected in self.text


def test_a_terminal_is_the_command_s_raw_console_with_its_size(tmp_path: Path) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [sys.executable, "-c", OUTER, sys.executable, "-c", INNER],
        cwd=tmp_path, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
    )  # fmt: skip
    screen = Screen(master)
    try:
        assert screen.wait_for("ready", 180), screen.text
        # Raw for the run: keys as bytes at once, no echo, no signal keys; but output
        # still post-processed, NL as CR NL.
        iflag, oflag, _, lflag, *_ = termios.tcgetattr(slave)
        assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert not iflag & (termios.ICRNL | termios.IXON)
        assert oflag & termios.OPOST and oflag & termios.ONLCR
        assert "facts [0, 1] (30, 100)\r\n" in screen.text  # stdin, stdout: stderr is a pipe
        # ^C is a byte for the command (vmrun is not interrupted), CR stays CR.
        os.write(master, b"a\x03\r")
        assert screen.wait_for("keys 61030d", 60), screen.text
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.kill(proc.pid, signal.SIGWINCH)  # the kernel's, if the terminal were vmrun's own
        assert screen.wait_for("sizes [(40, 120)] (40, 120)", 60), screen.text
        assert proc.wait(timeout=60) == 0
        assert termios.tcgetattr(slave) == before  # the terminal's own settings came back
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
        os.close(master)
        os.close(slave)
    assert stderr == b"\n", stderr  # no message from vmrun
