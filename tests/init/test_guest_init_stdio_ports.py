"""The guest init's `console` and `stdio-port` keys, in test mode.

In the guest, `stdio-port FD NAME` makes the virtio port named NAME (its
/sys/class/virtio-ports/vportNpM/name) the workload's FD, opened from /dev/vportNpM. Test mode
reads the same layout from $VMRUN_INIT_TEST_PORTS and opens the node from $VMRUN_INIT_TEST_DEV,
here regular files and FIFOs; $VMRUN_INIT_TEST_PORT_WAIT_MS shortens the wait for a port that
never comes. `console` is only parsed in test mode (its use is in test_guest_init_as_pid1.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from guest_init_config import Result, render, workload
from guest_init_config import run as run_config

from runner.config.model import VmResources
from runner.guest.initramfs import init_config

STDIO_SCRIPT = "echo out; echo err >&2; cat"
KRUN_PORTS = {0: "krun-stdin", 1: "krun-stdout", 2: "krun-stderr"}


class Ports(NamedTuple):
    sys: Path  # laid out like /sys/class/virtio-ports
    dev: Path  # the ports' device nodes

    def add(self, entry: str, name: str | None, node: str | None = "file") -> Path:
        """Port `entry` (vportNpM) named `name` (None: its name has not arrived yet), with a
        node that is a regular file, a FIFO, or None: not made yet."""
        (self.sys / entry).mkdir()
        if name is not None:
            (self.sys / entry / "name").write_text(name + "\n")
        path = self.dev / entry
        if node == "file":
            path.touch()
        elif node == "fifo":
            os.mkfifo(path)
        return path


@pytest.fixture
def ports(tmp_path: Path) -> Ports:
    made = Ports(tmp_path / "virtio-ports", tmp_path / "dev")
    made.sys.mkdir()
    made.dev.mkdir()
    return made


def run(
    init: Path,
    tmp_path: Path,
    ports: Ports,
    config: bytes | list[tuple[str, str]],
    wait_ms: int = 0,
) -> Result:
    env = {"VMRUN_INIT_TEST_PORTS": str(ports.sys), "VMRUN_INIT_TEST_DEV": str(ports.dev)}
    if wait_ms:
        env["VMRUN_INIT_TEST_PORT_WAIT_MS"] = str(wait_ms)
    return run_config(init, tmp_path, config, env)


def test_console_is_only_parsed_in_test_mode(init: Path, tmp_path: Path, ports: Ports) -> None:
    lines = workload("sh", "-c", "echo here", console="/dev/vmrun-no-such-console")
    assert run(init, tmp_path, ports, lines) == (0, "here\n", "")


def test_ports_become_the_workloads_stdio(init: Path, tmp_path: Path, ports: Ports) -> None:
    nodes = {fd: ports.add(f"vport0p{fd + 1}", name) for fd, name in KRUN_PORTS.items()}
    nodes[0].write_text("in\n")
    lines = workload("sh", "-c", STDIO_SCRIPT, stdio_ports=KRUN_PORTS)
    assert run(init, tmp_path, ports, lines) == (0, "", "")  # nothing on the init's own stdio
    assert nodes[1].read_text() == "out\nin\n"
    assert nodes[2].read_text() == "err\n"


def test_fifo_ports(init: Path, tmp_path: Path, ports: Ports) -> None:
    nodes = {fd: ports.add(f"vport1p{fd}", name, "fifo") for fd, name in KRUN_PORTS.items()}
    got: dict[int, bytes] = {}

    def feed() -> None:
        with open(nodes[0], "wb") as fifo:  # opens once the init opens its end
            fifo.write(b"in\n")

    def drain(fd: int) -> None:
        with open(nodes[fd], "rb") as fifo:
            got[fd] = fifo.read()  # to the end: every writer, the init too, has closed it

    threads = [threading.Thread(target=feed, daemon=True)]
    threads += [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (1, 2)]
    for thread in threads:
        thread.start()
    lines = workload("sh", "-c", STDIO_SCRIPT, stdio_ports=KRUN_PORTS)
    assert run(init, tmp_path, ports, lines).status == 0
    for thread in threads:
        thread.join(10)
    assert got == {1: b"out\nin\n", 2: b"err\n"}


def test_only_the_workload_holds_the_ports(init: Path, tmp_path: Path, ports: Ports) -> None:
    # The init (the workload's parent in test mode) closed its copies after the fork, and the
    # workload has each port only on its fd (the init's opens close on exec).
    ports.add("vport0p1", "krun-stdin")
    out = ports.add("vport0p2", "krun-stdout")
    script = (
        'for fd in /proc/$PPID/fd/*; do echo "init ${fd##*/} $(readlink $fd)"; done; '
        'for fd in /proc/$$/fd/*; do echo "workload ${fd##*/} $(readlink $fd)"; done'
    )
    lines = workload("sh", "-c", script, stdio_ports={0: "krun-stdin", 1: "krun-stdout"})
    assert run(init, tmp_path, ports, lines).status == 0
    held = [line.split(" ", 2) for line in out.read_text().splitlines()]
    assert {who for who, _, _ in held} == {"init", "workload"}
    on_ports = sorted((who, fd) for who, fd, target in held if target.startswith(str(ports.dev)))
    assert on_ports == [("workload", "0"), ("workload", "1")]


def test_the_lowest_device_of_a_name_is_taken(init: Path, tmp_path: Path, ports: Ports) -> None:
    nodes = {entry: ports.add(entry, "out") for entry in ("vport1p0", "vport0p10", "vport0p2")}
    ports.add("vport0p1", "other")
    ports.add("vport0p0", None)  # its name has not arrived
    assert run(init, tmp_path, ports, workload("echo", "hi", stdio_ports={1: "out"})).status == 0
    assert {entry: node.read_text() for entry, node in nodes.items()} == {
        "vport1p0": "", "vport0p10": "", "vport0p2": "hi\n"
    }  # fmt: skip


def test_a_name_that_arrives_late_is_waited_for(init: Path, tmp_path: Path, ports: Ports) -> None:
    node = ports.add("vport0p1", None)

    def name_it() -> None:
        time.sleep(0.3)
        (ports.sys / "vport0p1" / ".name").write_text("late\n")
        (ports.sys / "vport0p1" / ".name").rename(ports.sys / "vport0p1" / "name")

    namer = threading.Thread(target=name_it, daemon=True)
    namer.start()
    assert run(init, tmp_path, ports, workload("echo", "hi", stdio_ports={1: "late"})).status == 0
    namer.join()
    assert node.read_text() == "hi\n"


def test_a_port_that_never_appears_is_125(init: Path, tmp_path: Path, ports: Ports) -> None:
    ports.add("vport0p1", "krun-stdin")
    ports.add("vport0p2", None)  # never named
    ports.add("vport0p3", "krun-stderr", node=None)  # named, but its node never comes
    started = time.monotonic()
    result = run(init, tmp_path, ports, workload("echo", "ran", stdio_ports=KRUN_PORTS), 200)
    assert time.monotonic() - started >= 0.2
    assert result.status == 125
    assert result.out == ""  # the workload never ran
    assert f"stdio-port 1: no virtio port named 'krun-stdout' in {ports.sys}" in result.err
    assert "stdio-port 2: no virtio port named 'krun-stderr'" in result.err
    assert "stdio-port 0" not in result.err


def test_without_the_ports_directory_it_waits_then_fails(
    init: Path, tmp_path: Path, ports: Ports
) -> None:
    ports.sys.rmdir()
    result = run(init, tmp_path, ports, workload("true", stdio_ports={0: "in"}), 50)
    assert result.status == 125
    assert "stdio-port 0: no virtio port named 'in'" in result.err


def test_a_port_that_cannot_be_opened_is_125(init: Path, tmp_path: Path, ports: Ports) -> None:
    ports.add("vport0p1", "out", node=None)
    (ports.dev / "vport0p1").mkdir()
    result = run(init, tmp_path, ports, workload("echo", "ran", stdio_ports={1: "out"}))
    assert result.status == 125
    assert result.out == ""
    assert f"stdio-port 1 out: {ports.dev}/vport0p1: Is a directory" in result.err


def test_the_inits_messages_stay_on_its_console(init: Path, tmp_path: Path, ports: Ports) -> None:
    # stderr is a port: the init's own "cannot run" still goes to the init's stderr
    err = ports.add("vport0p1", "krun-stderr")
    lines = workload("/no/such/program", stdio_ports={2: "krun-stderr"})
    result = run(init, tmp_path, ports, lines)
    assert result.status == 127
    assert "vmrun-init: cannot run /no/such/program" in result.err
    assert err.read_text() == ""


def test_the_runners_writer(init: Path, tmp_path: Path, ports: Ports) -> None:
    # init_config's lines, as the builder writes them, parsed and used by the init
    nodes = {fd: ports.add(f"vport0p{fd + 1}", name) for fd, name in KRUN_PORTS.items()}
    nodes[0].write_text("in\n")
    config = init_config(
        VmResources(),
        ["sh", "-c", STDIO_SCRIPT],
        ["vmrun/modules/virtio_console.ko"],
        console="/dev/hvc0",
        stdio_ports=sorted(KRUN_PORTS.items()),
    )
    assert b"\nconsole /dev/hvc0\n" in config
    assert b"\nstdio-port 0 krun-stdin\nstdio-port 1 krun-stdout\nstdio-port 2 krun-stderr\n" in (
        config
    )
    result = run(init, tmp_path, ports, config)
    assert (result.status, result.out) == (0, "")
    assert (nodes[1].read_text(), nodes[2].read_text()) == ("out\nin\n", "err\n")


def test_the_runners_writer_without_them() -> None:
    config = init_config(VmResources(), ["true"])
    assert b"console" not in config and b"stdio-port" not in config


# ---- virtio-ports: every console port before the workload ---------------------------------


def test_the_workload_waits_for_every_port_and_name(
    init: Path, tmp_path: Path, ports: Ports
) -> None:
    # The console port (no name) is there; the named one and its node come later, as the
    # guest's driver adds ports while the device's messages arrive.
    ports.add("vport0p0", None)

    def arrive() -> None:
        time.sleep(0.3)
        ports.add("vport2p1", "metrics")

    thread = threading.Thread(target=arrive, daemon=True)
    thread.start()
    lines = [("virtio-ports", "2 1"), *workload("sh", "-c", f"ls {ports.dev}")]
    result = run(init, tmp_path, ports, lines, wait_ms=5000)
    thread.join(10)
    assert result == (0, "vport0p0\nvport2p1\n", "")


def test_ports_that_never_come_are_said_and_the_workload_runs(
    init: Path, tmp_path: Path, ports: Ports
) -> None:
    ports.add("vport0p0", None)
    ports.add("vport0p1", None)  # its name never arrives
    lines = [("virtio-ports", "3 1"), *workload("sh", "-c", "echo ran")]
    result = run(init, tmp_path, ports, lines, wait_ms=50)
    assert (result.status, result.out) == (0, "ran\n")
    assert re.fullmatch(
        r"vmrun-init: virtio-ports: 2 of 3 ports, 0 of 1 named, after 50 ms\n", result.err
    )


@pytest.mark.parametrize("value", ["", "1", "1 2", "a b", "1 1 1", "-1 0", " 1 0", "99999 0"])
def test_a_bad_virtio_ports_line_is_refused(
    init: Path, tmp_path: Path, ports: Ports, value: str
) -> None:
    path = tmp_path / "config"
    path.write_bytes(render([("virtio-ports", value), *workload("true")]))
    done = subprocess.run(
        [str(init), str(path)],
        env={"VMRUN_INIT_TEST": "1"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"virtio-ports wants TOTAL NAMED" in done.stderr, done.stderr
