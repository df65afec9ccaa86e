"""The vmrun inside that waits in the saved emulated host (runner/emulated/waiting_inside.py)
and the host image that carries it (runner/emulated/inside_bundle.py).

`become` runs here in a child Python (chroot to / changes nothing for root; the inside's
`main` replaced by one that reports what it was given); the image's tests build the real
image; the boot tests start emulated hosts from a copy of it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.boot.initramfs import Entry, cpio
from runner.emulated import inside_bundle, waiting_inside
from runner.emulated.delegate import module_path
from runner.emulated.host import Settings, run_in_host
from runner.emulated.image import HostImage, provision

BECOME = """
import json, os, signal, sys
from runner.emulated import inside, waiting_inside
waiting_inside.HOST_ROOT = "/"
def report(args):
    print(json.dumps({
        "args": args, "cwd": os.getcwd(), "env": dict(os.environ),
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    }))
    print("to stderr", file=sys.stderr)
    return 7
inside.main = report
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job has it
sys.exit(waiting_inside.become(sys.argv[1:]))
"""


# It runs as root in the emulated host: chroot needs that.
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")


def become(tmp_path: Path, *fields: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BECOME, *fields], capture_output=True, text=True, timeout=60
    )


def job(tmp_path: Path, cwd: Path) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"env": {"ONLY": "this"}, "cwd": str(cwd), "args": ["p", "--"]}))
    return path


@as_root
def test_it_becomes_the_job_s_inside_on_the_job_s_ports(tmp_path: Path) -> None:
    stdin, out, err = tmp_path / "stdin", tmp_path / "out", tmp_path / "err"
    stdin.write_text("")
    out.touch()
    err.touch()
    work = tmp_path / "work"
    work.mkdir()
    fields = [str(job(tmp_path, work)), str(stdin), str(out), str(err), "/dev/vport0p3", "-"]
    result = become(tmp_path, *fields)
    assert result.returncode == 7, result.stderr
    assert (result.stdout, result.stderr) == ("", "")  # all on the ports
    said = json.loads(out.read_text())
    assert said["args"] == ["p", "--"]
    assert said["cwd"] == str(work)
    # The job's environment only, and the events port the init names; no winsize port.
    assert said["env"] == {"ONLY": "this", "VMRUN_TIMINGS_EVENTS": "/dev/vport0p3"}
    assert said["sigint"]  # Ctrl-C handling as a foreground Python has it
    assert err.read_text() == "to stderr\n"


@as_root
def test_a_job_directory_that_is_gone_or_a_bad_request_is_status_125(tmp_path: Path) -> None:
    ends = [str(tmp_path / "out")] * 3
    (tmp_path / "out").touch()
    gone = job(tmp_path, tmp_path / "gone")
    result = become(tmp_path, str(gone), *ends, "-", "-")
    assert result.returncode == 125
    assert "vmrun: cannot enter" in (tmp_path / "out").read_text()
    result = become(tmp_path, "too", "few")
    assert result.returncode == 125
    assert "a bad request for the vmrun inside" in result.stderr


def test_the_image_holds_the_interpreter_and_every_module_it_imports(tmp_path: Path) -> None:
    image = inside_bundle.with_waiting_inside(provision(), module_path())
    data = image.initramfs.read_bytes()
    base = provision().initramfs.read_bytes()
    assert data.startswith(base)  # the host's own archive, then the inside's
    names = set(_names(data[len(base) + (-len(base) % 4) :]))
    interpreter = os.path.realpath(sys.executable)
    assert interpreter.lstrip("/") in names
    assert "vmrun-inside/start" in names
    for module in ("runner.emulated.waiting_inside", *waiting_inside.PRELOADED, "attrs"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        assert spec.origin.lstrip("/") in names, module
        assert importlib.util.cache_from_source(spec.origin).lstrip("/") in names, module
    # Again: the same image, from the cache.
    assert inside_bundle.with_waiting_inside(provision(), module_path()) == image


def _names(archive: bytes) -> list[str]:
    names, offset = [], 0
    while archive.startswith(b"070701", offset):
        size = int(archive[offset + 54 : offset + 62], 16)
        name_size = int(archive[offset + 94 : offset + 102], 16)
        name = archive[offset + 110 : offset + 110 + name_size - 1].decode()
        if name == "TRAILER!!!":
            break
        names.append(name)
        offset += 110 + name_size
        offset += -offset % 4 + size
        offset += -offset % 4
    return names


def test_its_modules_are_taken_without_their_sources(tmp_path: Path) -> None:
    # The archive's times are zero: a compiled copy checked against its source would be
    # compiled again, at emulated speed. PEP 552: flags 0b01 is an unchecked hash.
    image = inside_bundle.with_waiting_inside(provision(), module_path())
    data = image.initramfs.read_bytes()
    spec = importlib.util.find_spec("runner.builder")
    assert spec is not None and spec.origin is not None
    cached = importlib.util.cache_from_source(spec.origin).lstrip("/").encode() + b"\0"
    at = data.index(cached) + len(cached)
    at += -at % 4
    assert data[at : at + 4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[at + 4 : at + 8], "little") == 0b01


def test_a_changed_module_is_another_image(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    image = HostImage(tmp_path / "kernel", tmp_path / "initramfs.gz")
    first = inside_bundle._target(image, "/py", "path", [str(module)])
    os.utime(module, ns=(1, 1))
    assert inside_bundle._target(image, "/py", "path", [str(module)]) not in (first, None)
    module.unlink()
    assert inside_bundle._target(image, "/py", "path", [str(module)]) is None


# The boot tests.


@pytest.fixture
def own_image(own_copy: Callable[[HostImage], HostImage]) -> HostImage:
    """The cached image with the waiting inside, in a copy of this test's own."""
    return own_copy(inside_bundle.with_waiting_inside(provision(), module_path()))


def run(image: HostImage, inside_args: tuple[str, ...]) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.BytesIO()
    settings = Settings(snapshot=True, timeout_s=300, inside_args=inside_args)
    outcome = run_in_host(image, ["sh", "-c", "echo plain"], settings, out, err)
    return outcome.status, out.getvalue().decode(), err.getvalue().decode()


def test_the_saved_and_the_restored_host_run_the_job_in_the_waiting_inside(
    own_image: HostImage, tmp_path: Path
) -> None:
    # Its arguments name no prepared VM: the inside says so, where `sh` would say "plain".
    for _ in range(2):  # saved, then restored
        status, out, err = run(own_image, (str(tmp_path / "absent.vm"),))
        assert (status, out) == (125, ""), err
        assert f"{tmp_path / 'absent.vm'}" in err and "No such file" in err


@pytest.mark.parametrize(
    "start",
    [
        "exit 1",  # it cannot start: the init stops waiting for it at once
        # It said it is ready, then died: nobody reads the request; the init stops after 10 s.
        "mkdir -p /run/vmrun-inside && mkfifo /run/vmrun-inside/request"
        " && touch /run/vmrun-inside/ready; exit 0",
    ],
)
def test_without_a_waiting_inside_the_command_runs(own_image: HostImage, start: str) -> None:
    # The init says so on the console and runs the command itself.
    broken = cpio([Entry.file("vmrun-inside/start", f"#!/bin/sh\n{start}\n".encode(), 0o755)])
    base = own_image.initramfs.read_bytes()
    own_image.initramfs.write_bytes(base + bytes(-len(base) % 4) + broken)
    for _ in range(2):  # saved, then restored
        assert run(own_image, ("absent.vm",))[:2] == (0, "plain\n")
