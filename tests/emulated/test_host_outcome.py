"""How the emulated host's end is reported: one line, with the kept console log named."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner.emulated import host
from runner.emulated.host import HARNESS_FAILURE, TIMED_OUT, Settings

LOCKUP_CONSOLE = """\
[    6.123456] vmrun-host: something harmless
[   65.432675] watchdog: BUG: soft lockup - CPU#0 stuck for 183s! [python:124]
[   65.432700] Modules linked in: kvm_amd kvm
[   65.432710] CPU: 0 PID: 124 Comm: python Not tainted 6.1.0-41-amd64
[   65.432720] RIP: 0010:smp_call_function_many_cond+0x12a/0x360
[   65.432730] Call Trace:
""" + "".join(f"[   65.4{i:05d}] frame {i}\n" for i in range(200))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMRUN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "emulated-host" / "logs"


def ended(scratch: Path, how: host.Ended, status: int = 0) -> host.Outcome:
    proc = subprocess.Popen(["sh", "-c", f"exit {status}"])
    proc.wait()
    return host._outcome(scratch, proc, how, Settings(hung_after_s=240), ["vmrun", "run", "x"])


def test_a_lock_up_is_one_line_naming_what_the_kernel_said_and_the_log(
    tmp_path: Path, cache: Path
) -> None:
    (tmp_path / "console.log").write_text(LOCKUP_CONSOLE)
    outcome = ended(tmp_path, "hung")
    assert outcome.status == HARNESS_FAILURE
    (kept,) = cache.glob("console-*.log")
    assert outcome.message == (
        "the emulated host locked up: no heartbeat from its init for 240 s while "
        "`vmrun run x` ran; its kernel said "
        '"watchdog: BUG: soft lockup - CPU#0 stuck for 183s! [python:124]"; '
        f"its console log is in {kept}"
    )
    assert kept.read_text() == LOCKUP_CONSOLE
    assert kept.stat().st_mode & 0o777 == 0o600


def test_a_timeout_and_a_crash_are_one_line_each(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "console.log").write_text("[ 1.0] Kernel panic - not syncing: Fatal exception\n")
    (tmp_path / "qemu.log").write_text("qemu-system-x86_64: terminating on signal 15\n")
    timed_out = ended(tmp_path, "timed out")
    assert timed_out.status == TIMED_OUT
    assert "\n" not in timed_out.message
    crashed = ended(tmp_path, "ended", status=1)
    assert crashed.status == HARNESS_FAILURE
    assert crashed.message.startswith(
        "the emulated host ended (QEMU status 1) without running the command; its kernel said "
        '"Kernel panic - not syncing: Fatal exception"; its console log is in '
    )
    assert crashed.message.endswith("; QEMU said: qemu-system-x86_64: terminating on signal 15")
    assert "\n" not in crashed.message


def test_a_quiet_console_names_only_the_log_and_old_logs_go(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "console.log").write_text("[ 1.0] nothing went wrong here\n")
    for _ in range(host.KEPT_LOGS + 5):
        outcome = ended(tmp_path, "hung")
    assert "its kernel said" not in outcome.message
    assert len(list(cache.glob("console-*.log"))) == host.KEPT_LOGS
    assert Path(outcome.message.rsplit(" ", 1)[1]).exists()  # the newest is kept


def test_no_console_log_at_all(tmp_path: Path, cache: Path) -> None:
    outcome = ended(tmp_path, "ended", status=1)
    assert outcome.message == (
        "the emulated host ended (QEMU status 1) without running the command"
    )


def test_a_warning_is_named_by_its_own_line_not_the_cut_marker(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "console.log").write_text(
        "[ 9.1] ------------[ cut here ]------------\n"
        "[ 9.1] WARNING: CPU: 1 PID: 7 at arch/x86/kvm/x86.c:123 kvm_arch_vcpu_ioctl_run\n"
    )
    outcome = ended(tmp_path, "hung")
    assert (
        'its kernel said "WARNING: CPU: 1 PID: 7 at arch/x86/kvm/x86.c:123 '
        'kvm_arch_vcpu_ioctl_run"' in outcome.message
    )
