"""Locating problems scans the file once, however many there are (2000 unknown keys took 20 s
when each problem rescanned the text); and work on a hostile number of problems is bounded."""

from __future__ import annotations

from unittest import mock

import pytest
from expect import lines

from runner.config import positions, schema_check, suggest
from runner.config.positions import Position, index, json_repeated_keys


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_two_thousand_unknown_keys_scan_the_text_once(write_vm, suffix: str) -> None:
    keys = [f"unknown_key_{i}" for i in range(2000)]
    if suffix == ".toml":
        text = "".join(f"{key} = 1\n" for key in keys)
    else:
        text = "{\n" + ",\n".join(f'"{key}": 1' for key in keys) + "\n}\n"
    path = write_vm(text, suffix=suffix)
    with mock.patch.object(positions, "index", wraps=positions.index) as scans:
        found = lines(path)
    assert scans.call_count == 1
    assert len(found) == 2000
    assert found[1999].startswith(f"{path}:{2000 if suffix == '.toml' else 2001}:")


def test_only_the_first_unknown_keys_get_suggestions(write_vm) -> None:
    path = write_vm("".join(f"vcpu_{i} = 1\n" for i in range(1000)))
    with mock.patch.object(
        schema_check, "unknown_key_message", wraps=suggest.unknown_key_message
    ) as suggested:
        found = lines(path)
    assert suggested.call_count == schema_check.SUGGESTED_KEYS
    assert found[-1] == f"{path}:1000:1: vcpu_999: unknown key `vcpu_999`"


def test_a_flood_of_schema_errors_is_cut(write_vm) -> None:
    path = write_vm("[workload]\nexec = 'x'\nargs = [" + "1, " * 5000 + "]\n")
    found = lines(path)
    assert found[0] == (
        f"{path}:1:1: (document): more than {schema_check.SCHEMA_ERRORS} schema errors; "
        "those found first are listed"
    )
    assert len(found) == schema_check.SCHEMA_ERRORS + 1


def test_an_index_answers_many_paths() -> None:
    found = index("a = 1\n[t]\nb = [1,\n  2]\n", "toml")
    assert found.locate(("a",)) == Position(1, 1)
    assert found.locate(("t", "b", 1)) == Position(4, 3)
    assert found.locate(("t", "missing")) == Position(2, 2)
    assert found.locate(("nowhere",)) == Position(1, 1)


def test_json_repeats_are_per_object() -> None:
    text = '{"a": {"x": 1},\n "a": {"x": 2, "x": 3},\n "b": [{"x": 1}, {"x": 1, "y": 2, "y": 3}]}'
    assert json_repeated_keys(text) == [
        (("a",), Position(2, 2)),
        (("a", "x"), Position(2, 16)),
        (("b", 1, "y"), Position(3, 35)),
    ]
    # The same key in sibling objects, and an escaped spelling of a key, are what they are.
    assert json_repeated_keys('[{"x": 1}, {"x": 1}]') == []
    assert json_repeated_keys('{"x": 1, "\\u0078": 2}') == [(("x",), Position(1, 10))]
