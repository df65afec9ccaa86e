"""The guest init, built once for all of tests/init."""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_init_config import build


@pytest.fixture(scope="session")
def init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init") / "init"
    build.build_init(str(out))
    return out
