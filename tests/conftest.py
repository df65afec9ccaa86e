"""Shared fixtures (VM files in a test's own directory) and the boot-test delegation."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import guest_kernels
import hypothesis
import pytest

from runner import progress
from runner.emulated.guest_programs import GuestProgramError, guest_programs
from runner.emulated.host import HARNESS_FAILURE, TIMED_OUT, qemu_missing
from runner.guest.debian import PackageError
from runner.guest.initramfs import GuestImageError
from runner.guest.kernel import default_kernel
from runner.guest.provision import provision_default_guest
from runner.host_kvm import INSIDE_ENV, kvm_status

WriteVm = Callable[..., str]


@pytest.fixture(autouse=True)
def not_a_first_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A download or build in one test marks the process as on a first run (runner.progress);
    no other test inherits that."""
    monkeypatch.setattr(progress, "_first_run", False)
    monkeypatch.delenv(progress.FIRST_RUN_ENV, raising=False)


@pytest.fixture
def write_vm(tmp_path: Path) -> WriteVm:
    """`write_vm(text, suffix=".toml", name="vm")` writes `text` (dedented) beside the test's
    other files and returns the file's path as a string, as `load` takes it."""

    def write(text: str, suffix: str = ".toml", name: str = "vm") -> str:
        path = tmp_path / f"{name}{suffix}"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return str(path)

    return write


# No time limit per example: speed is for bench/, and CI shares a loaded machine (a
# 200 ms default deadline failed a position round trip there).
hypothesis.settings.register_profile("vmrun", deadline=None)
hypothesis.settings.load_profile("vmrun")


# --- boot tests ------------------------------------------------------------------------------
# Tests marked `boot` boot a guest and need a /dev/kvm that can boot Linux. Where this host
# has none, this session first runs all of them together in ONE emulated host
# (`vmrun emulated-host -- python -m pytest NODEIDS`, its output streaming here), and each
# boot test here then replays its own outcome from there: passes, failures with the inner
# traceback, and skips count in this session's summary. If they cannot run at all, each
# says why: a skip locally, a failure under CI (CI must run them).

# The whole session's bound: about 60 boot tests take 25 minutes in a quiet emulated host;
# a loaded machine (CI shares one) stretches that, and the rest of CI's 90 minutes is the
# other tests' (a hung host is caught sooner, by its heartbeat).
BOOT_TIMEOUT_S = float(os.environ.get("VMRUN_BOOT_TESTS_TIMEOUT", "3600"))
BOOT_SESSION_CPUS = int(os.environ.get("VMRUN_BOOT_SESSION_CPUS", "1"))
REPORT_ENV = "VMRUN_BOOT_TEST_REPORT"  # where the inner session records its outcomes
_delegated = pytest.StashKey[list[pytest.Item]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "boot: boots a guest on KVM (run inside the emulated host where KVM is unusable)"
    )
    config.addinivalue_line(
        "markers", "fuzz: runs a libFuzzer harness for VMRUN_FUZZ_SECONDS (tests/native)"
    )


# trylast: after `-m` and `-k` have deselected, so `-m 'not boot'` starts no emulated host.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    boot = [item for item in items if item.get_closest_marker("boot")]
    if boot and not os.environ.get(INSIDE_ENV) and not kvm_status().usable:
        config.stash[_delegated] = boot


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> object:
    boot = session.config.stash.get(_delegated, [])
    if boot and not session.config.option.collectonly:
        recorded, problem = _run_in_emulated_host(session.config, [i.nodeid for i in boot])
        for item in boot:
            phases = recorded.get(item.nodeid, [])
            item.runtest = functools.partial(_replay, phases, problem)  # type: ignore[method-assign]
    return (yield)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # In the inner session: record each phase's outcome for the outer one to replay.
    path = os.environ.get(REPORT_ENV)
    if path:
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome}
        skip = report.longrepr if report.skipped else None
        record["text"] = skip[2] if isinstance(skip, tuple) else report.longreprtext
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _provision_extras(reporter: pytest.TerminalReporter, bzimage: Path) -> None:
    # Tests that need them say so themselves (a skip, a failure under CI) when they are
    # missing; the other boot tests run without them.
    for what, make in (
        ("the PVH vmlinux", lambda: guest_kernels.pvh_vmlinux(bzimage)),
        ("libkrunfw", lambda: guest_kernels.libkrunfw(download=True)),
        ("e2fsprogs for the guest", lambda: guest_programs(E2FSPROGS)),
    ):
        try:
            make()
        except (guest_kernels.Unavailable, GuestProgramError, OSError) as exc:
            reporter.write_line(f"boot tests: cannot provision {what}: {exc}", yellow=True)


@pytest.fixture
def pvh_vmlinux() -> Path:
    """An ELF vmlinux with a PVH entry note: the default kernel's, out of its bzImage."""
    try:
        return guest_kernels.pvh_vmlinux(default_kernel().image)
    except (guest_kernels.Unavailable, PackageError, OSError) as exc:
        pytest.skip(f"no PVH vmlinux: {exc}")


@pytest.fixture
def libkrunfw() -> Path:
    """A libkrunfw.so.5 (from the boxlite wheel): downloaded here unless inside the
    emulated host, which has no network and uses what the outer session provisioned."""
    try:
        return guest_kernels.libkrunfw(download=not os.environ.get(INSIDE_ENV))
    except (guest_kernels.Unavailable, OSError) as exc:
        pytest.skip(f"no libkrunfw: {exc}")


E2FSPROGS = ("mke2fs", "e2fsck")


@pytest.fixture
def e2fsprogs_initramfs() -> Path:
    """An initramfs with the host's mke2fs (and mkfs.ext4) and e2fsck with their libraries:
    busybox's mke2fs makes only ext2. Packed by the outer session before the emulated host."""
    try:
        return guest_programs(E2FSPROGS).archive
    except (GuestProgramError, OSError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no e2fsprogs for the guest: {exc}")


class NotRun(NamedTuple):
    reason: str
    skippable: bool  # the harness could not start here: a skip, but never under CI


def _run_in_emulated_host(
    config: pytest.Config, nodeids: list[str]
) -> tuple[dict[str, list[dict[str, str]]], NotRun]:
    """Run the boot tests in one emulated host: their recorded phases, and why a test
    without any did not run."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    why_not = qemu_missing()
    if why_not is None:
        try:
            # The emulated host has no network: download and build here what boot tests
            # build guests from (as `vmrun run` does before it enters).
            kernel = default_kernel()
            provision_default_guest()
        except (PackageError, GuestImageError) as exc:
            why_not = f"cannot provision what boot tests need: {exc}"
        else:
            _provision_extras(reporter, kernel.image)
    if why_not:
        reporter.write_sep("!", f"{len(nodeids)} BOOT TESTS CANNOT RUN: {why_not}", red=True)
        return {}, NotRun(why_not, skippable=True)
    recorded: dict[str, list[dict[str, str]]] = {}
    status = _boot_session(config, nodeids, recorded)
    unfinished = [n for n in nodeids if not _finished(recorded.get(n, []))]
    if status == HARNESS_FAILURE and unfinished:
        # The emulated host's own kernel died (the line above says how and names its log).
        # That kernel runs on QEMU's emulation of SVM, which is not what is under test: the
        # tests it had not finished get one fresh host, and what had finished keeps its
        # outcome.
        reporter.write_sep(
            "!",
            f"the emulated host died: {len(unfinished)} unfinished boot tests get a fresh one",
            red=True,
        )
        for nodeid in unfinished:
            recorded.pop(nodeid, None)
        status = _boot_session(config, unfinished, recorded)
    reason = f"the emulated host's session ended with status {status} before this test ran"
    if status in (TIMED_OUT, HARNESS_FAILURE):
        reason = f"the emulated host failed (status {status}, see its message above)"
    return recorded, NotRun(reason, skippable=False)


def _boot_session(
    config: pytest.Config, nodeids: list[str], recorded: dict[str, list[dict[str, str]]]
) -> int:
    """One emulated host running `nodeids`; their phases go into `recorded`. Its status."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_sep(
        "=", f"{len(nodeids)} boot tests in one emulated host ({kvm_status().reason})"
    )
    # The report's directory is the only one outside its scratch space that the session may
    # write (the cache is read-only in there).
    reports = Path(tempfile.mkdtemp(prefix="vmrun-boot-tests-"))
    report = reports / "outcomes.jsonl"
    # One emulated CPU, as `vmrun run` uses for a one-vCPU guest: a two-CPU session host
    # froze once in a loaded CI run and once left a guest's vmrun stuck for 300 s after the
    # guest's reboot message; one CPU has no cross-CPU interrupts to lose (README, "The
    # emulated host holds"). Guests with more vCPUs share it.
    host = [
        sys.executable, "-m", "runner", "emulated-host", "--cpus", str(BOOT_SESSION_CPUS),
        "--timeout", str(BOOT_TIMEOUT_S), "--writable", str(reports),
    ]  # fmt: skip
    inner = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *nodeids]
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        status = subprocess.run(
            [*host, "--", *inner],
            cwd=config.rootpath,
            env={**os.environ, REPORT_ENV: str(report)},
            stdin=subprocess.DEVNULL,  # the boot tests give their VMs stdin themselves
        ).returncode
    reporter.write_sep("=", f"end of the emulated host's session (status {status})")
    if report.exists():
        for line in report.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            recorded.setdefault(record["nodeid"], []).append(record)
    shutil.rmtree(reports, ignore_errors=True)
    return status


def _finished(phases: list[dict[str, str]]) -> bool:
    return any(phase["when"] == "teardown" for phase in phases)


def _replay(phases: list[dict[str, str]], problem: NotRun) -> None:
    if not phases:
        if problem.skippable and not os.environ.get("CI"):
            pytest.skip(f"boot test not run: {problem.reason}")
        pytest.fail(f"boot test not run: {problem.reason}", pytrace=False)
    for phase in phases:
        if phase["outcome"] == "failed":
            pytest.fail(f"in the emulated host ({phase['when']}):\n{phase['text']}", pytrace=False)
    for phase in phases:
        if phase["outcome"] == "skipped":
            if os.environ.get("CI"):
                pytest.fail(f"skipped in the emulated host, under CI: {phase['text']}")
            pytest.skip(f"in the emulated host: {phase['text']}")
