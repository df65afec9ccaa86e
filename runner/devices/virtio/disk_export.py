"""A qcow2 disk, exported to vmrun by qemu-storage-daemon over NBD on a unix socket.

vmrun does not read qcow2 itself: for each qcow2 disk it starts QEMU's storage daemon (QEMU's
own block layer, as a process of its own), which opens the image and serves it as an NBD
export; virtio-blk's native workers reach it with the NBD client of native/virtio/nbd.c, one
connection per worker.

The daemon:
- is vmrun's child in a process group of its own (a Ctrl-C at the terminal reaches vmrun,
  which stops it in order), and dies with vmrun if vmrun is killed (PR_SET_PDEATHSIG);
- listens on a socket in a private directory (mkdtemp: 0700, this user's only) under
  $TMPDIR, else $XDG_RUNTIME_DIR, else /dev/shm: the first that takes a unix socket. Inside
  the emulated KVM host (runner/emulated/host.py) /tmp is read-only and TMPDIR is the job's
  scratch directory, writable but on 9p, where bind() fails: the socket goes to /dev/shm;
- writes its messages to a log in that directory, whose last lines are quoted when it fails
  (a corrupt image, a lock held by another QEMU);
- is ready once a full NBD handshake with its export succeeds;
- is stopped with SIGTERM, on which it closes the image cleanly (a qcow2 left by a killed
  daemon may need `qemu-img check -r`), SIGKILL only when it does not end in time.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runner.errors import VmrunError, describe
from runner.kvm.native import ffi, lib

DAEMON = "qemu-storage-daemon"
EXPORT_NAME = "disk"
SOCKET_NAME = "nbd.sock"
LOG_NAME = "daemon.log"
# struct sockaddr_un's sun_path holds 108 bytes, its terminating NUL included.
SOCKET_PATH_MAX = 107
# Opening a qcow2 is quick; an image on a slow disk, or the emulated host's TCG, is not.
READY_TIMEOUT_S = 30.0
READY_POLL_S = 0.02
# The daemon flushes and closes the image on SIGTERM: a large dirty cache takes a while.
STOP_TIMEOUT_S = 10.0
MESSAGE_TAIL_LINES = 3
MESSAGE_LIMIT = 600  # characters of the daemon's words in an error message
PR_SET_PDEATHSIG = 1


class DiskExportError(VmrunError):
    """qemu-storage-daemon could not be started for a disk, or would not serve it."""


def daemon_argv(
    daemon: str, image: str, socket_path: str, *, read_only: bool, direct_io: bool
) -> list[str]:
    """The daemon's command line: the image as a `file` node under a `qcow2` node, exported
    over NBD on `socket_path` as EXPORT_NAME. JSON for each option: a path with commas or
    `=` in it needs no escaping."""
    file_node = {
        "driver": "file",
        "node-name": "image-file",
        "filename": image,
        "read-only": read_only,
        "cache": {"direct": direct_io},
        "aio": "threads",
        "discard": "unmap",  # the guest's discards free the image's clusters, then the file's
    }
    qcow2_node = {
        "driver": "qcow2",
        "node-name": "image",
        "file": "image-file",
        "read-only": read_only,
        "discard": "unmap",
    }
    # No max-connections: unlimited, one connection per worker.
    server = {"addr": {"type": "unix", "path": socket_path}}
    export = {
        "type": "nbd",
        "id": "export",
        "node-name": "image",
        "name": EXPORT_NAME,
        "writable": not read_only,
    }
    return [
        daemon,
        "--blockdev", json.dumps(file_node),
        "--blockdev", json.dumps(qcow2_node),
        "--nbd-server", json.dumps(server),
        "--export", json.dumps(export),
    ]  # fmt: skip


def find_daemon() -> str:
    """The daemon's path on PATH, or DiskExportError saying where it comes from."""
    found = shutil.which(DAEMON)
    if found is None:
        raise DiskExportError(
            f"qcow2 disks need {DAEMON}, which is not on PATH: install it "
            "(Debian and Ubuntu: package qemu-system-common)"
        )
    return found


def socket_bases() -> list[str]:
    """Where the private directory may go, in order: $TMPDIR (tempfile's choice), then
    $XDG_RUNTIME_DIR, then /dev/shm (a tmpfs)."""
    bases = [tempfile.gettempdir(), os.environ.get("XDG_RUNTIME_DIR") or "", "/dev/shm"]
    return [base for base in dict.fromkeys(bases) if base]


def socket_directory(disk: str) -> Path:
    """A new private directory (mkdtemp: 0700) where a unix socket can be bound, in the first
    of socket_bases() that takes one. Not every writable directory does: on 9p, as the
    emulated KVM host's TMPDIR (its scratch directory) is, bind() fails with ENXIO; and a
    long path does not fit a socket address."""
    tried = []
    for base in socket_bases():
        try:
            path = Path(tempfile.mkdtemp(prefix="vmrun-disk-", dir=base))
        except OSError as exc:
            tried.append(f"{base}: {exc.strerror or exc}")
            continue
        problem = _socket_problem(path / SOCKET_NAME)
        if problem is None:
            return path
        shutil.rmtree(path, ignore_errors=True)
        tried.append(f"{base}: {problem}")
    raise DiskExportError(
        f"{disk}: no directory for {DAEMON}'s socket ({'; '.join(tried)}); "
        "set TMPDIR to a short local directory"
    )


def _socket_problem(path: Path) -> str | None:
    """Why a unix socket cannot be bound at `path`, or None (the probe is removed)."""
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        return "too long for a unix socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(str(path))
    except OSError as exc:
        return f"no unix socket there ({exc.strerror or exc})"
    finally:
        probe.close()
    path.unlink()
    return None


class DiskExport:
    """One qemu-storage-daemon serving one qcow2 disk; `with` it, or close() it.

    `disk` names the disk in messages (its config key or id). `socket_path` and
    `export_name` are what vmrun_nbd_connect takes.
    """

    def __init__(self, image: str, *, disk: str, read_only: bool, direct_io: bool) -> None:
        self.disk = disk
        self.image = image
        self.export_name = EXPORT_NAME
        self._process: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []
        daemon = find_daemon()
        self._dir = socket_directory(disk)
        self.socket_path = str(self._dir / SOCKET_NAME)
        try:
            self._argv = daemon_argv(
                daemon,
                os.path.abspath(image),
                self.socket_path,
                read_only=read_only,
                direct_io=direct_io,
            )
            self._start()
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        try:
            with open(self._dir / LOG_NAME, "wb") as log:
                self._process = subprocess.Popen(
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()),
                )
        except OSError as exc:
            raise DiskExportError(f"{self.disk}: cannot start {DAEMON}: {describe(exc)}") from exc

    def __enter__(self) -> DiskExport:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def daemon_says(self) -> str:
        """The last lines the daemon wrote, as one line ('' when it wrote nothing)."""
        try:
            text = (self._dir / LOG_NAME).read_text(errors="replace")
        except OSError:
            return ""
        # Its errors read `qemu-storage-daemon: --blockdev {...}: what failed`: the option,
        # which vmrun wrote, is left out.
        prefixes = [f"{DAEMON}: "]
        prefixes += [f"{option} {value}: " for option, value in itertools.pairwise(self._argv)]
        lines = []
        for line in text.splitlines()[-MESSAGE_TAIL_LINES:]:
            for prefix in prefixes:
                line = line.removeprefix(prefix)
            if line.strip():
                lines.append(line.strip())
        said = "; ".join(lines)
        return said if len(said) <= MESSAGE_LIMIT else "..." + said[-MESSAGE_LIMIT:]

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            status = self._process.poll()
            if status is not None:
                said = self.daemon_says() or f"it exited with status {status}"
                raise DiskExportError(f"{self.disk}: {DAEMON} cannot serve {self.image}: {said}")
            error = _handshake(self.socket_path)
            if error is None:
                return
            if time.monotonic() > deadline:
                raise DiskExportError(
                    f"{self.disk}: {DAEMON} did not serve {self.image} within "
                    f"{READY_TIMEOUT_S:g} s ({os.strerror(error)})"
                )
            time.sleep(READY_POLL_S)

    def close(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and remove its
        directory. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            _stop(process)
        shutil.rmtree(self._dir, ignore_errors=True)


def _handshake(socket_path: str) -> int | None:
    """None once the export answers a full NBD handshake (then left with NBD_CMD_DISC, so
    the daemon logs nothing); else the errno of the attempt."""
    size = ffi.new("uint64_t *")
    flags = ffi.new("uint16_t *")
    connection = lib.vmrun_nbd_connect(socket_path.encode(), EXPORT_NAME.encode(), size, flags)
    if connection == ffi.NULL:
        return ffi.errno
    lib.vmrun_nbd_close(connection)
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The child's last step before exec: die with vmrun. PR_SET_PDEATHSIG follows the
    thread that forked, so the builder's thread (the main one) must outlive the disk."""

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # vmrun died before the signal was armed
            os._exit(1)

    return arm
