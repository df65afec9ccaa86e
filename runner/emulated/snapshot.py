"""The emulated host saved once it has booted, and later runs started from there.

Booting the emulated host's kernel under TCG is about 5 s of every run; starting QEMU from
a saved state (migration to a file, `-incoming` from it) is about half a second. Its init
stops at the snapshot point, after its modules are loaded (and the waiting vmrun inside has
imported, runner/emulated/waiting_inside.py) and before it mounts anything (a mounted 9p
share blocks migration, and what a run shares is its own): it says `ready` on the `go` port
and waits. A run that finds no saved state saves the host there (QMP
`migrate` into the cache) and lets it go on; later runs restore it (`restore`), and one
that cannot be restored is deleted and booted again.

A restored host must not be a copy of the last one: vmrun sends the time and fresh
random bytes with `go` (the init sets its clock and stirs them in), and a vmgenid device
gets a new generation ID on every start, on which Linux reseeds its random number
generator before anything of the run reads it. Without it, each restore handed out the same
/dev/urandom bytes (measured). SeaBIOS, not qboot, starts such hosts: qboot hangs with a
vmgenid device, and the firmware's speed counts only in the one boot that saves the host.

Migration needs the same devices on both sides, so a host that may be saved or restored has
a fixed set (`SHARE_SLOTS` writable shares, `OUTPUT_SLOTS` output ports, stdin and winsize
ports), the unused ones idle. What backs each device (paths, pipes, sockets) is not part of
the saved state, and may differ from run to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

from runner import timings
from runner.cache import keep_newest
from runner.emulated.image import HostImage
from runner.emulated.inbound_ports import SOCKET_PATH_MAX
from runner.emulated.output_ports import port_name
from runner.errors import VmrunError

if TYPE_CHECKING:
    from qemu.qmp.legacy import QEMUMonitorProtocol

SHARE_SLOTS = 8  # writable directories a host that can be saved shares, at most
OUTPUT_SLOTS = 8  # output ports (the VM's output files) besides stdout, stderr and events
KEPT = 4  # saved states kept (one per host image, memory size and CPU count in use)
FORMAT = "1"  # bump when what the init does before the snapshot point changes
SAVE_WAIT_S = 120.0  # a migration to a local file takes about a second
RESUME_WAIT_S = 60.0
POLL_S = 0.02
GO_SOCKET = "go.sock"
MONITOR_SOCKET = "qmp.sock"
SOCKETS = (GO_SOCKET, MONITOR_SOCKET)
OUTPUT_NAMES = tuple(port_name(index) for index in range(OUTPUT_SLOTS))
Started = Literal["going", "not restored", "ended", "hung", "timed out"]


class SnapshotError(VmrunError):
    """The host could not be saved; the run goes on without a saved state."""


@attrs.frozen
class Plan:
    """What a run does with the saved state `path`: restore it, or save it."""

    path: Path
    restore: bool


def state_file(image: HostImage, qemu: str, cpus: int, memory_mib: int, threads: str) -> Path:
    """Where the state of a host booted from `image` by this `qemu` with these settings is
    saved: keyed by all that shapes it, so that another one is another file."""
    binary = os.stat(os.path.realpath(qemu))
    key = "\0".join(
        [
            FORMAT,
            str(image.kernel),
            str(image.initramfs),
            f"{binary.st_ino} {binary.st_size} {binary.st_mtime_ns}",
            f"{cpus} {memory_mib} {threads} {SHARE_SLOTS} {OUTPUT_SLOTS}",
        ]
    )
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    return image.kernel.parent / f"snapshot-{name}.state"


def fits(outputs: tuple[str, ...], writable: int) -> bool:
    """Can a host with these output ports and writable shares be saved or restored?"""
    return outputs == OUTPUT_NAMES[: len(outputs)] and writable <= SHARE_SLOTS


def plan(path: Path) -> Plan:
    if path.exists():
        with contextlib.suppress(OSError):
            os.utime(path)  # in use: the last to be pruned
        return Plan(path, restore=True)
    return Plan(path, restore=False)


def sockets_fit(scratch: Path) -> bool:
    """Do the sockets of a host that can be saved fit in a unix socket's path there?"""
    return all(len(os.fsencode(scratch / name)) <= SOCKET_PATH_MAX for name in SOCKETS)


class GoPort:
    """The `go` port's host side: a unix socket in the scratch directory (0700) that QEMU
    connects to as it starts. The init says `ready` there at the snapshot point and goes on
    when it reads a line."""

    def __init__(self, scratch: Path) -> None:
        self.path = scratch / GO_SOCKET
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(1)
        self._connection: socket.socket | None = None

    def close(self) -> None:
        for end in (self._connection, self._listener):
            if end is not None:
                end.close()

    def connect(self, qemu: subprocess.Popen[bytes], deadline: float) -> bool:
        while qemu.poll() is None and time.monotonic() < deadline:
            if select.select([self._listener], [], [], 0.1)[0]:
                self._connection, _ = self._listener.accept()
                return True
        return False

    def ready(self, qemu: subprocess.Popen[bytes], deadline: float) -> bool:
        """Wait for the init's `ready`: False if QEMU ended or `deadline` passed first."""
        assert self._connection is not None
        said = b""
        while b"\n" not in said:
            if qemu.poll() is not None or time.monotonic() >= deadline:
                return False
            if select.select([self._connection], [], [], 0.1)[0]:
                chunk = self._connection.recv(64)
                if not chunk or len(said) > 64:
                    return False
                said += chunk
        return said.strip() == b"ready"

    def go(self) -> None:
        """Let the init go on, with this machine's time (rounded: busybox's `date -s` takes
        whole seconds, as the emulated RTC a booted host reads its clock from) and 32 random
        bytes for its pool."""
        assert self._connection is not None
        line = f"{round(time.time())} {secrets.token_hex(32)}\n"
        with contextlib.suppress(OSError):  # QEMU ended: its outcome says why
            self._connection.sendall(line.encode())


@contextlib.contextmanager
def _monitor(
    path: Path, qemu: subprocess.Popen[bytes], deadline: float
) -> Iterator[QEMUMonitorProtocol]:
    from qemu.qmp.legacy import QEMUMonitorProtocol  # asyncio and all: only here

    while not path.exists():  # QEMU makes it as it starts
        if qemu.poll() is not None or time.monotonic() >= deadline:
            raise SnapshotError("QEMU's monitor socket did not appear")
        time.sleep(POLL_S)
    monitor = QEMUMonitorProtocol(str(path))
    try:
        monitor.connect()
        monitor.settimeout(max(1.0, deadline - time.monotonic()))
        yield monitor
    finally:
        monitor.close()


def save(monitor_path: Path, qemu: subprocess.Popen[bytes], target: Path) -> None:
    """Migrate the host, waiting at its snapshot point, into `target`, whole or not at all
    (a private temporary file beside it, renamed), then let it run on. Raises SnapshotError;
    the host runs on in any case."""
    deadline = time.monotonic() + SAVE_WAIT_S
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with _monitor(monitor_path, qemu, deadline) as monitor:
            try:
                status = _migrate(monitor, fd, deadline)
            finally:
                # After a migration QEMU's VM stays paused: on with the run in any case.
                monitor.cmd("cont")
        if status != "completed":
            raise SnapshotError(f"QEMU's migration ended as {status!r}")
        os.fsync(fd)
        os.replace(partial, target)
    except Exception as exc:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(str(exc) or type(exc).__name__) from exc
    finally:
        os.close(fd)
    _prune(target.parent.parent)


def _migrate(monitor: QEMUMonitorProtocol, fd: int, deadline: float) -> str:
    monitor.send_fd_scm(fd)
    monitor.cmd("getfd", fdname="snapshot")
    monitor.cmd("migrate", uri="fd:snapshot")
    while time.monotonic() < deadline:
        status = _reply(monitor.cmd("query-migrate")).get("status")
        if status in ("completed", "failed", "cancelled"):
            return str(status)
        time.sleep(POLL_S)
    monitor.cmd("migrate_cancel")
    return "too slow"


def _reply(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def resumed(monitor_path: Path, qemu: subprocess.Popen[bytes]) -> bool:
    """Has QEMU, started with `-incoming`, loaded the saved state and let the host run?
    False when it ended or gave up first (a state it cannot load)."""
    deadline = time.monotonic() + RESUME_WAIT_S
    try:
        with _monitor(monitor_path, qemu, deadline) as monitor:
            while qemu.poll() is None and time.monotonic() < deadline:
                if _reply(monitor.cmd("query-status")).get("status") == "running":
                    return True
                time.sleep(POLL_S)
    except Exception:  # QEMU went away while we asked: not restored
        return False
    return False


def _prune(images: Path) -> None:
    """Keep the `KEPT` saved states used last, of all the host images in `images` (a state
    is as big as the host's memory in use: 150 to 250 MB)."""
    keep_newest(images.glob("*/snapshot-*.state"), KEPT)


def start(
    plan: Plan,
    go: GoPort,
    qemu: subprocess.Popen[bytes],
    monitor_path: Path,
    wait_s: float,
    waited: Literal["hung", "timed out"],
) -> Started:
    """Take the host started as `plan` says to its snapshot point, save it there if that is
    the plan, and let it go on ("going"). Else "not restored" (QEMU could not load the state:
    nothing of the run has happened yet), "ended" (QEMU ended), or `waited` when the host
    did not get there within `wait_s`."""
    deadline = time.monotonic() + wait_s
    if not go.connect(qemu, deadline):
        return "ended" if qemu.poll() is not None else waited
    if plan.restore:
        if not resumed(monitor_path, qemu):
            return "not restored"
        timings.mark("emulated host restored from its snapshot")
    else:
        if not go.ready(qemu, deadline):
            return "ended" if qemu.poll() is not None else waited
        try:
            save(monitor_path, qemu, plan.path)
            timings.mark("emulated host saved for later runs")
        except SnapshotError as exc:
            # Said every time: a run that cannot save the host is 5 s slower than it could be.
            print(
                f"vmrun: the emulated host could not be saved for later runs: {exc}",
                file=sys.stderr,
                flush=True,
            )
    go.go()
    return "going"
