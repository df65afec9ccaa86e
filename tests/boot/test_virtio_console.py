"""The virtio console, libkrun's way, seen from a real guest (runner/devices/virtio/console*).

Marked `boot`: where /dev/kvm cannot boot Linux, these run inside the emulated host. Without
a terminal, the workload's stdin, stdout and stderr are ports of the implicit console of
their own (`krun-stdin`, `krun-stdout`, `krun-stderr`); on a terminal (a pseudo-terminal
here) the console is hvc0 in raw mode, restored whatever happens to the guest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
VM = """\
[machine]
vcpu_count = {vcpus}
mem_size_mib = 256
"""


def vm_file(tmp_path: Path, vcpus: int = 1, extra: str = "") -> str:
    path = tmp_path / "vm.toml"
    path.write_text(VM.format(vcpus=vcpus) + extra)
    return str(path)


def run(vm: str, *argv: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", vm, *argv],
        capture_output=True, timeout=kwargs.pop("timeout", 300), **kwargs,
    )  # fmt: skip


def test_dev_toml_says_hello_on_stdout() -> None:
    result = run(str(ROOT / "configs" / "dev.toml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("hello from dev, Linux ")
    assert result.stderr == b""


def test_the_readme_example_runs(tmp_path: Path) -> None:
    # What a new user copies first: no console settings, so the implicit virtio console.
    example = (ROOT / "README.md").read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    vm = tmp_path / "example.toml"
    vm.write_text(example.replace("#:schema ../schemas/vmrun.schema.json\n", ""))
    result = run(str(vm))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hello from vmrun\n", b"")


def test_stdin_reaches_the_workload_up_to_its_end(tmp_path: Path) -> None:
    # `echo hi | vmrun run f.toml -- cat`
    result = run(vm_file(tmp_path), "--", "cat", input=b"hi\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hi\n", b"")


def test_stdout_and_stderr_arrive_separated(tmp_path: Path) -> None:
    result = run(vm_file(tmp_path), "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


def test_a_mebibyte_goes_through_both_ways_byte_for_byte(tmp_path: Path) -> None:
    # Random bytes in on krun-stdin, back out on krun-stdout: every byte value, nothing
    # added ("\n" stays "\n": ports are not terminals), nothing lost at the workload's exit,
    # which the init reports right after the last write returned. Two vCPUs: the worker's
    # interrupts arrive on another vCPU while the workload exits.
    data = os.urandom(1 << 20)
    result = run(vm_file(tmp_path, vcpus=2), "--", "cat", input=data, timeout=600)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def test_kernel_messages_go_to_stderr_never_into_the_workload_s_stdout(tmp_path: Path) -> None:
    # An emergency (printed whatever the loglevel) goes to the kernel's console, hvc0, whose
    # output is vmrun's stderr when stdout is not a terminal.
    script = "echo '<0>vmrun-test: an emergency' > /dev/kmsg; sleep 1; echo out"
    result = run(vm_file(tmp_path), "--", "/bin/sh", "-c", script)
    assert (result.returncode, result.stdout) == (0, b"out\n"), result.stderr
    assert b"vmrun-test: an emergency" in result.stderr


def test_no_stdin_reads_as_its_end_at_once(tmp_path: Path) -> None:
    result = run(vm_file(tmp_path), "--", "/bin/sh", "-c", "wc -c", stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout.split(), result.stderr) == (0, [b"0"], b"")


def test_console_output_writes_the_workload_s_output_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    vm = tmp_path / "vm.toml"
    vm.write_text(f'console_output = "{log}"\n' + VM.format(vcpus=1))
    result = run(str(vm), "--", "/bin/sh", "-c", "echo to the log; echo err too >&2")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert log.read_bytes() == b"to the log\nerr too\n"


def test_the_consoles_example_does_what_its_comment_says(tmp_path: Path) -> None:
    # The example as written, but its files in this test's directory (/tmp is read-only in
    # the emulated host, where the boot tests run here).
    text = (ROOT / "configs" / "examples" / "consoles.toml").read_text()
    assert text.count('"/tmp/vmrun-') == 4
    example = tmp_path / "consoles.toml"
    example.write_text(text.replace('"/tmp/vmrun-', f'"{tmp_path}/vmrun-'))
    result = run(str(example), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    console, kernel, hvc1, metrics = (
        (tmp_path / f"vmrun-{name}.log").read_bytes()
        for name in ("console", "kernel", "hvc1", "metrics")
    )
    # The workload's stdout is hvc0, written to console_output; its stderr hvc1's err port
    # (vmrun's stderr); `uptime` went to hvc2's second port, a file.
    assert console == b"to hvc0\n"
    assert result.stderr == b"to the err port\n"
    assert b"load average" in metrics
    # The kernel's console is COM2, in its own file (quiet: it gets nothing here), and hvc1's
    # console output a file of its own (nothing writes it here).
    assert (kernel, hvc1) == (b"", b"")
    assert result.stdout == b""


def test_a_listed_port_carries_data_both_ways(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(b"from the host\n")
    extra = (
        '[[virtio_consoles]]\ntype = "ports"\nports = [\n'
        f'  {{ type = "inout", name = "data", input = "{tmp_path / "in.txt"}", '
        f'output = "{tmp_path / "out.txt"}" }},\n]\n'
    )
    script = (
        "for p in /sys/class/virtio-ports/*; do "
        '[ "$(cat $p/name 2>/dev/null)" = data ] && dev=/dev/${p##*/}; done; '
        'head -n 1 < $dev; echo "to the host" > $dev'
    )
    result = run(vm_file(tmp_path, extra=extra), "--", "/bin/sh", "-c", script)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"from the host\n", b"")
    assert (tmp_path / "out.txt").read_bytes() == b"to the host\n"


# ---- on a terminal ---------------------------------------------------------------------------


class Terminal:
    """vmrun on a pseudo-terminal: its stdin, stdout and stderr, as in an interactive shell."""

    def __init__(self, argv: list[str], rows: int = 33, cols: int = 101) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.before = termios.tcgetattr(slave)
        self.slave_path = os.ttyname(slave)
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        self.slave = slave
        self.output = b""

    def read_until(self, wanted: bytes, timeout: float = 240) -> bytes:
        deadline = time.monotonic() + timeout
        while wanted not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 1)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # every slave closed
                    break
        assert wanted in self.output, self.output
        return self.output

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 300) -> int:
        status = self.proc.wait(timeout=timeout)
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        return status

    def attributes(self) -> list:
        return termios.tcgetattr(self.slave)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def on_terminal(tmp_path: Path):
    terminals: list[Terminal] = []

    def start(*workload: str) -> Terminal:
        argv = [sys.executable, "-m", "runner", "run", "--host", "kvm", vm_file(tmp_path)]
        terminal = Terminal([*argv, "--", *workload])
        terminals.append(terminal)
        return terminal

    yield start
    for terminal in terminals:
        terminal.close()


def test_on_a_terminal_the_console_is_hvc0_with_its_size(on_terminal) -> None:
    terminal = on_terminal("/bin/sh", "-c", "tty; stty size; echo done")
    assert terminal.wait() == 0, terminal.output
    assert b"/dev/hvc0" in terminal.output
    assert b"33 101" in terminal.output
    assert terminal.attributes() == terminal.before


def test_the_window_size_follows_the_terminal(on_terminal) -> None:
    terminal = on_terminal("/bin/sh", "-c", "echo up; read _; stty size")
    terminal.read_until(b"up")
    # The kernel tells the terminal's foreground group (vmrun) with SIGWINCH.
    fcntl.ioctl(terminal.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
    time.sleep(2)
    terminal.type(b"\r")
    assert terminal.wait() == 0, terminal.output
    assert b"50 132" in terminal.output.split(b"up", 1)[1]
    assert terminal.attributes() == terminal.before


def test_ctrl_c_reaches_the_guest_s_workload(on_terminal) -> None:
    terminal = on_terminal("/bin/sh", "-c", "echo up; sleep 600")
    terminal.read_until(b"up")
    terminal.type(b"\x03")  # raw mode: a byte for the guest's tty, whose ^C is SIGINT
    assert terminal.wait(timeout=120) == 128 + signal.SIGINT
    assert terminal.attributes() == terminal.before


def test_raw_mode_is_restored_after_the_workload_is_killed(on_terminal) -> None:
    terminal = on_terminal("/bin/sh", "-c", "echo up; kill -9 $$")
    assert terminal.wait() == 128 + signal.SIGKILL, terminal.output
    assert terminal.attributes() == terminal.before


def test_raw_mode_is_restored_after_the_guest_crashes(on_terminal) -> None:
    terminal = on_terminal("/bin/sh", "-c", "echo c > /proc/sysrq-trigger")
    assert terminal.wait() == 125, terminal.output
    assert terminal.attributes() == terminal.before


def test_typed_keys_reach_the_workload(on_terminal) -> None:
    terminal = on_terminal("/bin/sh", "-c", 'echo ready; read line; echo "got [$line]"')
    terminal.read_until(b"ready")
    time.sleep(1)
    terminal.type(b"typed\r")  # the Enter key sends CR; the guest's tty makes it NL
    terminal.read_until(b"got [typed]")
    assert terminal.wait() == 0
    assert terminal.attributes() == terminal.before
