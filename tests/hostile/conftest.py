"""Hostile VM files are loaded in process here too: their schema memo goes to a directory of
the session's, not to the user's cache (as in tests/config)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest


@pytest.fixture(autouse=True, scope="session")
def session_schema_memo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    memo = tmp_path_factory.mktemp("schema-clean")
    with mock.patch("runner.config.schema_memo.cache_dir", lambda *_: memo):
        yield memo
