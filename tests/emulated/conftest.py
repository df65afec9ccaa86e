"""What the tests that boot the emulated host share."""

from __future__ import annotations

import os

import pytest

from runner.emulated.host import qemu_missing


@pytest.fixture
def qemu_present() -> None:
    """Skip without QEMU, except under CI, which must test the emulated host."""
    reason = qemu_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the emulated host: {reason}")
        pytest.skip(reason)
