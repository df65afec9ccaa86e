"""SIGTERM unwinds like Ctrl-C inside `sigterm_unwinds`, and only there."""

from __future__ import annotations

import os
import signal

import pytest

from runner.termination import EXIT_STATUS, Terminated, sigterm_unwinds


def test_sigterm_raises_inside_and_the_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(Terminated), sigterm_unwinds():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next bytecode
        finally:
            cleaned.append(True)  # what made something removes it on the way out
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before
    assert EXIT_STATUS == 143


def test_terminated_passes_through_except_exception() -> None:
    with pytest.raises(Terminated):
        try:
            raise Terminated
        except Exception:  # what a layer on the way might have
            pytest.fail("an `except Exception` kept the stop")
