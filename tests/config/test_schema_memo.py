"""A text that passed the schema once is not validated again; nothing else changes."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from runner.config import schema_memo
from runner.config.load import load
from runner.config.problems import ConfigError

VM = '[machine]\nvcpu_count = 2\n\n[workload]\nexec = "/bin/true"\n'


def test_a_clean_text_is_remembered_and_then_not_validated(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(VM)
    first = load(str(path))
    assert schema_memo.passed_before("toml", VM)
    with mock.patch("runner.config.load.schema_problems", side_effect=AssertionError):
        again = load(str(path))  # would raise if the schema stage ran
    assert again.resources == first.resources


def test_a_text_with_problems_is_not_remembered(tmp_path: Path) -> None:
    text = "[machine]\nvcpu_count = 0\n"
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load(str(path))
    assert not schema_memo.passed_before("toml", text)


def test_the_later_stages_still_run_for_a_remembered_text(tmp_path: Path) -> None:
    # Host paths are checked on every load: a remembered text whose kernel went away fails.
    text = '[kernel]\npath = "vmlinuz"\n'
    path = tmp_path / "vm.toml"
    path.write_text(text)
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    load(str(path))
    (tmp_path / "vmlinuz").unlink()
    with pytest.raises(ConfigError) as failed:
        load(str(path))
    assert "kernel.path" in "\n".join(failed.value.lines())


def test_the_memo_is_per_schema_and_kind(tmp_path: Path) -> None:
    schema_memo.remember_passed("toml", VM)
    assert schema_memo.passed_before("toml", VM)
    assert not schema_memo.passed_before("json", VM)
    with mock.patch("runner.config.schema_memo._schema_identity", return_value=b"another"):
        assert not schema_memo.passed_before("toml", VM)


def test_an_entry_whose_content_differs_is_not_taken() -> None:
    # The name is a checksum, not a proof: a hit needs the same bytes.
    schema_memo.remember_passed("toml", VM)
    path, content = schema_memo._entry("toml", VM)
    path.write_bytes(content[:-1] + b"!")
    assert not schema_memo.passed_before("toml", VM)
