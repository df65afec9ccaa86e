"""What a test does when a tool it needs is not installed: a skip that says so, and under CI
(which installs every tool: `bash scripts/setup` as root) a failure."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI runs every check (`bash scripts/setup` as root)", pytrace=False)
    pytest.skip(reason)
