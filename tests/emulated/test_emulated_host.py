"""`vmrun emulated-host -- CMD`: statuses, streaming, files, timeouts, Ctrl-C, its own failures.

Each test boots a real emulated host (QEMU TCG, about 6 s here). Where QEMU is missing they
skip, except under CI, where the harness must be testable and a skip is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.cache import cache_dir
from runner.emulated.host import QEMU

VMRUN = [sys.executable, "-m", "runner", "emulated-host"]
pytestmark = pytest.mark.usefixtures("qemu_present")  # tests/emulated/conftest.py


def qemu_children(parent: int) -> list[int]:
    """The QEMU processes that `parent` started and that are still there (other sessions'
    emulated hosts on the same machine are not ours to count)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(status.split("PPid:")[1].split()[0])
        if ppid == parent and cmdline.startswith(QEMU.encode()):
            found.append(int(pid))
    return found


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def wait_for_qemu(proc: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + 60
    while not (pids := qemu_children(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def run(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("status", [0, 1, 42])
def test_exit_status_comes_back(tmp_path: Path, status: int) -> None:
    result = run(["--", "sh", "-c", f"exit {status}"], tmp_path)
    assert result.returncode == status, result.stderr
    assert result.stderr == ""


def test_command_not_found_is_127(tmp_path: Path) -> None:
    result = run(["--", "no-such-command-here"], tmp_path)
    assert result.returncode == 127
    assert "no-such-command-here" in result.stderr


def test_qemu_takes_no_firmware_from_the_user_s_directory(tmp_path: Path) -> None:
    # QEMU looks for its firmware and option ROMs in its working directory first: files of
    # their names where vmrun is run must not become the emulated host's firmware.
    # (qboot for a host that is not saved, SeaBIOS for one that is: runner/emulated/snapshot.py)
    for name in ("qboot.rom", "bios-256k.bin", "pvh.bin", "linuxboot_dma.bin", "kvmvapic.bin"):
        (tmp_path / name).write_bytes(b"\xf4" * 65536)  # hlt, everywhere
    result = run(["--", "sh", "-c", "echo booted"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "booted\n"


def test_output_streams_in_order_and_as_it_comes(tmp_path: Path) -> None:
    script = "for i in $(seq 1 300); do echo out $i; done; echo err 1 >&2; sleep 4; echo last"
    proc = subprocess.Popen(
        [*VMRUN, "--", "sh", "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines, arrival = [], []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        arrival.append(time.monotonic())
    assert proc.wait(timeout=120) == 0
    assert lines == [f"out {i}" for i in range(1, 301)] + ["last"]
    # The first lines came while the command still ran (4 s of sleep before its last line).
    assert arrival[-1] - arrival[0] > 2.5


def test_stdout_and_stderr_stay_apart(tmp_path: Path) -> None:
    result = run(["--", "sh", "-c", "echo to-out; echo to-err >&2"], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "to-out\n", "to-err\n")


def test_runs_in_the_current_directory_and_files_stay(tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_text("from the host\n")
    # A comma in a directory's name is escaped for QEMU's -virtfs, not an option of its own.
    other = tmp_path / "other,readonly=on"
    other.mkdir()
    script = (
        'pwd; cat input.txt; echo made > made.txt; echo also > "$1/also.txt"; '
        'echo scratch > "$TMPDIR/t" && cat "$TMPDIR/t"; '
        "touch /etc/vmrun-must-not-exist 2>/dev/null || echo read-only; "
        # The cache is read-only in there: nothing inside plants what vmrun outside runs.
        'ls "$2" >/dev/null && (mkdir "$2/planted" 2>/dev/null || echo cache read-only)'
    )
    cache = cache_dir()
    argv = ["sh", "-c", script, "sh", str(other), str(cache)]
    result = run(["--writable", str(other), "--", *argv], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        str(tmp_path),
        "from the host",
        "scratch",
        "read-only",
        "cache read-only",
    ]
    assert not (cache / "planted").exists()
    assert (tmp_path / "made.txt").read_text() == "made\n"
    assert (other / "also.txt").read_text() == "also\n"
    assert not Path("/etc/vmrun-must-not-exist").exists()


def test_environment_passes_through(tmp_path: Path) -> None:
    env = {**os.environ, "VMRUN_TEST_VALUE": "it's a 'quoted' value $HOME"}
    result = subprocess.run(
        [*VMRUN, "--", "sh", "-c", 'printf "%s|%s" "$VMRUN_TEST_VALUE" "$VMRUN_IN_EMULATED_HOST"'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.stdout == "it's a 'quoted' value $HOME|1"


def test_kvm_is_real_inside(tmp_path: Path) -> None:
    result = run(
        ["--", sys.executable, "-c", "from runner.host_kvm import kvm_status as k; print(k())"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "usable=True" in result.stdout


def test_timeout_kills_the_host_and_names_the_command(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*VMRUN, "--timeout", "15", "--", "sleep", "600"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    start = time.monotonic()
    qemu = wait_for_qemu(proc)
    assert qemu, "no QEMU started"
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 124
    assert time.monotonic() - start < 120
    assert "timed out after 15 s: `sleep 600` was still running" in stderr
    assert all(gone(pid) for pid in qemu)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_everything(tmp_path: Path, stop: signal.Signals) -> None:
    # Nothing outlives the run: QEMU, and the scratch directory with its console log.
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = subprocess.Popen(
        [*VMRUN, "--", "sh", "-c", "echo started; sleep 600"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    qemu = qemu_children(proc.pid)
    assert qemu, "no QEMU running the command"
    assert list(temp.glob("vmrun-host-*")), "the scratch directory is not where TMPDIR says"
    proc.send_signal(stop)
    assert proc.wait(timeout=30) == 128 + stop
    assert all(gone(pid) for pid in qemu)
    assert list(temp.iterdir()) == []


def test_killing_vmrun_kills_qemu(tmp_path: Path) -> None:
    # SIGKILL gives vmrun no chance to clean up: PR_SET_PDEATHSIG must end QEMU.
    proc = subprocess.Popen(
        [*VMRUN, "--", "sh", "-c", "echo started; sleep 600"],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    qemu = qemu_children(proc.pid)
    assert qemu, "no QEMU running the command"
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in qemu) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in qemu)


def test_missing_qemu_is_the_harness_failing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    env = {**os.environ, "PATH": str(bin_dir)}
    result = subprocess.run(
        [*VMRUN, "--", "true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 125
    assert result.stderr == (
        "vmrun: qemu-system-x86_64 is not installed: install Debian's qemu-system-x86\n"
    )


def test_missing_writable_directory_is_the_harness_failing(tmp_path: Path) -> None:
    result = run(["--writable", str(tmp_path / "absent"), "--", "true"], tmp_path)
    assert result.returncode == 125
    assert f"writable directory {tmp_path / 'absent'} does not exist" in result.stderr


def kept_log(stderr: str) -> str:
    """The console log that vmrun's one line names, as text."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    path = lines[0].rsplit("its console log is in ", 1)[1]
    assert Path(path).parent == cache_dir("emulated-host", "logs")
    assert Path(path).stat().st_mode & 0o077 == 0
    return Path(path).read_text()


def test_a_crash_of_the_host_s_kernel_is_the_harness_failing_in_one_line(tmp_path: Path) -> None:
    # One line says what its kernel said; the whole crash report is in the kept console log.
    crash = "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger"
    result = run(["--", "sh", "-c", crash], tmp_path)
    assert result.returncode == 125
    assert result.stderr.startswith(
        "vmrun: the emulated host ended (QEMU status 0) without running the command; "
        'its kernel said "Kernel panic - not syncing: sysrq triggered crash"; '
        "its console log is in "
    ), result.stderr
    log = kept_log(result.stderr)
    assert "Kernel panic - not syncing: sysrq triggered crash" in log
    assert "Call Trace:" in log


def test_a_host_that_stops_beating_is_hung_and_ended(tmp_path: Path) -> None:
    # SIGSTOP to every process but the command's shell and init stops the init's heartbeat,
    # as a locked-up kernel would; the command itself would run on for 600 s.
    start = time.monotonic()
    result = run(["--hung-after", "20", "--", "sh", "-c", "kill -STOP -1; sleep 600"], tmp_path)
    assert result.returncode == 125
    assert result.stderr.startswith(
        "vmrun: the emulated host locked up: no heartbeat from its init for 20 s while "
        "`sh -c 'kill -STOP -1; sleep 600'` ran; its console log is in "
    ), result.stderr
    kept_log(result.stderr)
    assert time.monotonic() - start < 120
