"""Shared fixtures (VM files in a test's own directory) and the boot-test delegation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.emulated.host import HARNESS_FAILURE, INSIDE_ENV, TIMED_OUT, qemu_missing
from runner.host_kvm import kvm_status

WriteVm = Callable[..., str]


@pytest.fixture
def write_vm(tmp_path: Path) -> WriteVm:
    """`write_vm(text, suffix=".toml", name="vm")` writes `text` (dedented) beside the test's
    other files and returns the file's path as a string, as `load` takes it."""

    def write(text: str, suffix: str = ".toml", name: str = "vm") -> str:
        path = tmp_path / f"{name}{suffix}"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return str(path)

    return write


# --- boot tests ------------------------------------------------------------------------------
# Tests marked `boot` boot a guest and need a /dev/kvm that can boot Linux. Where this host
# has none, they are taken out of this session and run together in ONE emulated host
# (`vmrun emulated-host -- python -m pytest NODEIDS`), whose result joins this session's.
# If they cannot run at all, the session says so loudly, and fails under CI.

BOOT_TIMEOUT_S = float(os.environ.get("VMRUN_BOOT_TESTS_TIMEOUT", "2400"))
_delegated = pytest.StashKey[list[str]]()
_outcome = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "boot: boots a guest on KVM (run inside the emulated host where KVM is unusable)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    boot = [item for item in items if item.get_closest_marker("boot")]
    if not boot or os.environ.get(INSIDE_ENV) or kvm_status().usable:
        return
    config.stash[_delegated] = [item.nodeid for item in boot]
    items[:] = [item for item in items if not item.get_closest_marker("boot")]
    config.hook.pytest_deselected(items=boot)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> object:
    result = yield
    nodeids = session.config.stash.get(_delegated, [])
    if nodeids and not session.shouldfail and not session.shouldstop:
        _run_boot_tests_in_emulated_host(session, nodeids)
    return result


def _run_boot_tests_in_emulated_host(session: pytest.Session, nodeids: list[str]) -> None:
    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reason = qemu_missing()
    if reason:
        outcome = f"{len(nodeids)} BOOT TESTS NOT RUN: {reason}"
        reporter.write_sep("!", outcome, red=True, bold=True)
        config.stash[_outcome] = outcome
        if os.environ.get("CI"):
            session.testsfailed += 1
        return
    reporter.write_sep(
        "=", f"{len(nodeids)} boot tests in the emulated host ({kvm_status().reason})"
    )
    inner = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *nodeids]
    host = [sys.executable, "-m", "runner", "emulated-host", "--timeout", str(BOOT_TIMEOUT_S)]
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        status = subprocess.run([*host, "--", *inner], cwd=config.rootpath).returncode
    if status == 0:
        config.stash[_outcome] = f"{len(nodeids)} boot tests passed in the emulated host"
        return
    session.testsfailed += 1
    if status in (TIMED_OUT, HARNESS_FAILURE):
        outcome = f"BOOT TESTS NOT RUN: the emulated host failed (status {status}), see above"
    else:
        outcome = f"boot tests FAILED in the emulated host (pytest status {status}), see above"
    reporter.write_sep("!", outcome, red=True, bold=True)
    config.stash[_outcome] = outcome


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    outcome = config.stash.get(_outcome, None)
    if outcome:
        terminalreporter.write_line(outcome, bold=True)
