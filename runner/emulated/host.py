"""Run one command inside the emulated host: QEMU (TCG, `-cpu max`, which emulates AMD SVM)
booting a Linux whose /dev/kvm is real.

The command sees the host's files at their own paths (read-only), the writable directories
(by default the current directory) and a scratch directory read-write, and runs in the
current directory with this process's environment. Its stdout and stderr stream back as
they come over two virtio-serial ports, and its stdin (`Settings.stdin`) goes in over
another (inbound_ports.py); its exit status comes back through the scratch directory.
QEMU never outlives this: it dies with its parent (PR_SET_PDEATHSIG), on Ctrl-C, and at
the timeout.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO, Literal

import attrs

from runner import progress, timings
from runner.cache import cache_dir, keep_newest
from runner.emulated import snapshot
from runner.emulated.host_job import job_env, write_inside_job, write_job
from runner.emulated.image import HostImage
from runner.emulated.inbound_ports import InboundPorts, StdinMode
from runner.emulated.qemu_command import QEMU, qemu_command
from runner.errors import VmrunError

TIMED_OUT = 124  # as timeout(1)
HARNESS_FAILURE = 125  # vmrun's own failure, not the command's
PR_SET_PDEATHSIG = 1
HEARTBEAT_POLL_S = 2.0
Ended = Literal["ended", "timed out", "hung"]


class HarnessError(VmrunError):
    """The emulated host itself failed (not the command run in it)."""


@attrs.frozen(kw_only=True)  # by name: a field added in between must not shift the others
class Settings:
    cpus: int = 2
    memory_mib: int = 4096
    timeout_s: float = 3600.0
    writable: tuple[str, ...] = ()  # besides the current directory (with `writable_cwd`)
    # `vmrun emulated-host` promises its command the current directory; `vmrun run` writes
    # only where its VM file says (runner/emulated/delegate.py).
    writable_cwd: bool = True
    hung_after_s: float = 240.0  # no heartbeat from the host's init for this long: it hung
    env: tuple[tuple[str, str], ...] = ()  # set for the command, besides this environment
    tcg_threads: Literal["multi", "single"] = "multi"  # QEMU's -accel tcg,thread=
    console_log: str | None = None  # keep the host's console log there (else it is dropped)
    # More virtio-serial ports, each by name, and the stream that its output is written to.
    outputs: tuple[tuple[str, BinaryIO], ...] = ()
    # The command's stdin: "null" (/dev/null), "pass" (this one's, to its end), "raw" (as
    # "pass", with a terminal there in raw mode: the console of a VM run in there).
    stdin: StdinMode = "null"
    # Restore the host from its saved state, saving it first if there is none
    # (runner/emulated/snapshot.py): `vmrun run` and `vmrun emulated-host`.
    snapshot: bool = False
    # The arguments of runner.emulated.inside that the command (`argv`) runs: a host whose
    # image has the waiting vmrun inside runs them there (runner/emulated/waiting_inside.py).
    inside_args: tuple[str, ...] | None = None


@attrs.frozen
class Outcome:
    status: int  # the command's exit status, or TIMED_OUT / HARNESS_FAILURE
    message: str = ""  # why, when vmrun itself ended it


def qemu_missing() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed: install Debian's qemu-system-x86"
    return None


def run_in_host(
    image: HostImage,
    argv: Sequence[str],
    settings: Settings,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> Outcome:
    """Boot the emulated host (or restore it, `Settings.snapshot`), run `argv` in it, and
    return its outcome."""
    missing = qemu_missing()
    if missing:
        return Outcome(HARNESS_FAILURE, missing)
    cwd = os.getcwd()
    shared = (cwd,) if settings.writable_cwd else ()
    writable = _writable_dirs((*shared, *settings.writable))
    saved = _snapshot_plan(image, settings, writable)
    if saved is not None and saved.restore:
        outcome = _run(image, argv, settings, (cwd, writable), (stdout, stderr), saved)
        if outcome is not None:
            return outcome
        # QEMU could not load it (another QEMU, a damaged file), before anything of the run
        # happened: boot the host, and save it again.
        saved.path.unlink(missing_ok=True)
        saved = snapshot.Plan(saved.path, restore=False)
    outcome = _run(image, argv, settings, (cwd, writable), (stdout, stderr), saved)
    assert outcome is not None  # only a restore can fail to start
    return outcome


def _snapshot_plan(
    image: HostImage, settings: Settings, writable: list[str]
) -> snapshot.Plan | None:
    names = tuple(name for name, _ in settings.outputs)
    if not settings.snapshot or not snapshot.fits(names, len(writable)):
        return None
    qemu = shutil.which(QEMU) or QEMU
    path = snapshot.state_file(
        image, qemu, settings.cpus, settings.memory_mib, settings.tcg_threads
    )
    return snapshot.plan(path)


def _run(
    image: HostImage,
    argv: Sequence[str],
    settings: Settings,
    where: tuple[str, list[str]],
    sinks: tuple[BinaryIO, BinaryIO],
    saved: snapshot.Plan | None,
) -> Outcome | None:
    """One QEMU: its outcome, or None when it could not restore `saved`."""
    cwd, writable = where
    if saved is None or not saved.restore:
        progress.phase("booting the emulated KVM host")
    # Not the cache: it is provisioned here before the host boots, and what runs inside sees it
    # read-only (with the rest of this machine's files), so nothing there can plant a file
    # that vmrun out here would later unpack, build from or run.
    with tempfile.TemporaryDirectory(prefix="vmrun-host-") as scratch, ExitStack() as stack:
        scratch_path = Path(scratch)
        (scratch_path / "tmp").mkdir()
        # Closed (and the terminal restored) after QEMU ends, before the scratch directory goes.
        inbound = stack.enter_context(InboundPorts(scratch_path, settings.stdin))
        env = job_env(scratch_path, {**dict(settings.env), **inbound.facts.env()})
        write_job(scratch_path, argv, cwd, writable, env, unused=inbound.unused)
        if settings.inside_args is not None:
            write_inside_job(scratch_path, cwd, env, settings.inside_args)
        go = None
        passed: list[int] = []  # the saved state's fd
        if saved is not None and not snapshot.sockets_fit(scratch_path):
            saved = None  # a long TMPDIR: this run boots the host, as one that cannot be saved
        if saved is not None:
            go = snapshot.GoPort(scratch_path)
            stack.callback(go.close)
            if saved.restore:
                try:
                    state = os.open(saved.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:  # pruned by another vmrun meanwhile
                    return None
                stack.callback(os.close, state)
                passed.append(state)
        # A virtio-serial port per stream: the job's stdout and stderr, the VM's output files
        # (`settings.outputs`), and `events`: lines that the init and the vmrun inside write
        # as phases end (runner/timings.py), stamped here on arrival.
        streams = [("stdout", sinks[0]), ("stderr", sinks[1]), *settings.outputs]
        ends = {name: os.pipe() for name in [name for name, _ in streams] + ["events"]}
        pipes = tuple((name, w) for name, (_, w) in ends.items())
        passed = [w for _, w in pipes] + passed
        cmd = qemu_command(
            image, settings, scratch_path, (writable, pipes, inbound.sockets), saved, passed
        )
        with open(scratch_path / "qemu.log", "wb") as qemu_log:
            proc = subprocess.Popen(
                cmd,
                # QEMU looks for its firmware and option ROMs (qboot.rom, pvh.bin, ...) in its
                # working directory before its own: not in the user's, where a file of that
                # name would become the emulated host's firmware.
                cwd=scratch,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                pass_fds=passed,
                start_new_session=True,  # Ctrl-C reaches vmrun, which stops QEMU itself
                preexec_fn=_die_with_parent,
            )
        for _, fd in pipes:
            os.close(fd)
        pumps = [_pump(ends[name][0], sink) for name, sink in streams]
        pumps.append(_event_pump(ends["events"][0]))
        try:
            started: snapshot.Started = "going"
            if saved is not None and go is not None:
                wait_s = min(settings.timeout_s, settings.hung_after_s)
                waited: Ended = "timed out" if wait_s == settings.timeout_s else "hung"
                monitor = scratch_path / snapshot.MONITOR_SOCKET
                started = snapshot.start(saved, go, proc, monitor, wait_s, waited)
            if started == "not restored":
                return None
            if started == "going":
                # Only now: a restore that failed has taken nothing of vmrun's stdin.
                inbound.start(proc)
                ended = _wait(proc, settings, scratch_path / "heartbeat")
            else:
                ended = started
        finally:
            _stop(proc)
            for pump in pumps:
                pump.join(timeout=5)
            if settings.console_log:
                shutil.copyfile(scratch_path / "console.log", settings.console_log)
        outcome = _outcome(scratch_path, proc, ended, settings, argv)
        if saved is not None and saved.restore:
            _forget_if_broken(
                saved.path, outcome, started_job=(scratch_path / "heartbeat").exists()
            )
        return outcome


def _forget_if_broken(state: Path, outcome: Outcome, started_job: bool) -> None:
    """A restored host that failed before its job began (no heartbeat yet) may have been
    restored from a bad state, which QEMU loaded but the host cannot run from: the next run
    boots afresh. One that failed later may have been failed by its command: kept."""
    if outcome.status == HARNESS_FAILURE and not started_job:
        state.unlink(missing_ok=True)


def _writable_dirs(paths: Sequence[str]) -> list[str]:
    dirs = []
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            raise HarnessError(f"writable directory {path} does not exist")
        if real != "/" and real not in dirs:
            dirs.append(real)
    return dirs


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pump(fd: int, sink: BinaryIO) -> threading.Thread:
    def copy() -> None:
        with os.fdopen(fd, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                sink.write(chunk)
                sink.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _event_pump(fd: int) -> threading.Thread:
    """Each line from the events port is a phase that just ended inside (runner/timings.py)."""

    def read() -> None:
        with os.fdopen(fd, "rb") as source:
            while line := source.readline(200):  # bounded: a line is a phase's name
                phase = line.decode(errors="replace").strip()
                if phase:
                    timings.mark(phase)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _wait(proc: subprocess.Popen[bytes], settings: Settings, heartbeat: Path) -> Ended:
    """Wait for QEMU to end: "ended", "timed out", or "hung" when the host's init has not
    beaten its heart (the scratch file `heartbeat`, rewritten every few seconds) for
    `settings.hung_after_s`. A host whose kernel locked up stops both QEMU's output and the
    heartbeat, but not QEMU."""
    start = last_change = time.monotonic()
    last_beat = None
    while True:
        try:
            proc.wait(timeout=HEARTBEAT_POLL_S)
            return "ended"
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - start >= settings.timeout_s:
            return "timed out"
        try:
            beat = heartbeat.read_bytes()
        except OSError:
            beat = None
        if beat != last_beat:
            last_beat, last_change = beat, now
        elif now - last_change >= settings.hung_after_s:
            return "hung"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _outcome(
    scratch: Path,
    proc: subprocess.Popen[bytes],
    ended: Ended,
    settings: Settings,
    argv: Sequence[str],
) -> Outcome:
    """The command's status, or one line on why vmrun ended it: what the host's kernel said
    last that matters, and where its whole console log was kept (not pages of it)."""
    status_file = scratch / "status"
    if ended == "hung":
        return Outcome(
            HARNESS_FAILURE,
            f"the emulated host locked up: no heartbeat from its init for "
            f"{settings.hung_after_s:g} s while `{shlex.join(argv)}` ran" + _console(scratch),
        )
    if ended == "timed out":
        return Outcome(
            TIMED_OUT,
            f"timed out after {settings.timeout_s:g} s: `{shlex.join(argv)}` was still running"
            + _console(scratch),
        )
    if status_file.exists():
        text = status_file.read_text().strip()
        if text.isdigit():
            return Outcome(int(text))
    qemu_said = _last_line(scratch / "qemu.log")
    return Outcome(
        HARNESS_FAILURE,
        f"the emulated host ended (QEMU status {proc.returncode}) without running the command"
        + _console(scratch)
        + (f"; QEMU said: {qemu_said}" if qemu_said else ""),
    )


# Where a kernel's report of what went wrong starts: "BUG: soft lockup - CPU#0 stuck for
# 183s!", an oops, a warning's cut line, a panic.
CRASH_START = re.compile(
    r"BUG:|Oops:|general protection fault|------------\[ cut here \]|Kernel panic"
)
TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
KEPT_LOGS = 20


def _console(scratch: Path) -> str:
    """`; its kernel said "...": its console log is in PATH`, as far as there is one."""
    try:
        text = (scratch / "console.log").read_text(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if CRASH_START.search(line)), None)
    if first is not None and "cut here" in lines[first] and first + 1 < len(lines):
        first += 1  # a warning's own line ("WARNING: CPU: 0 PID: ... at ...") follows the cut
    said = TIMESTAMP.sub("", lines[first]).strip() if first is not None else ""
    part = f'; its kernel said "{said}"' if said else ""
    try:
        return part + f"; its console log is in {_keep(scratch / 'console.log')}"
    except OSError as exc:
        return part + f" (its console log could not be kept: {exc})"


def _keep(log: Path) -> str:
    """A copy of `log` in the cache's emulated-host/logs (the latest KEPT_LOGS are kept)."""
    directory = cache_dir("emulated-host", "logs")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"console-{stamp}-", suffix=".log", dir=directory)
    with os.fdopen(fd, "wb") as kept, open(log, "rb") as source:
        shutil.copyfileobj(source, kept)
    keep_newest(directory.glob("console-*.log"), KEPT_LOGS)
    return path


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
