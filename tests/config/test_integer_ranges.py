"""Integers in a VM file: never a float, never beyond what the VMM can use, and never too
long for Python (over 4300 decimal digits it neither reads nor prints them)."""

from __future__ import annotations

from typing import Any

import pytest
from expect import passes, problems

from runner.config.parse import HugeInteger
from runner.config.schema import schema

FLOAT = "expected an integer, got a float"


def _integers(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "integer":
            found.append((where, node))
        for key, value in node.items():
            found += _integers(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _integers(value, f"{where}/{index}")
    return found


def test_every_integer_field_has_a_range() -> None:
    fields = _integers(schema())
    assert len(fields) >= 15
    unbounded = [where for where, node in fields if "minimum" not in node or "maximum" not in node]
    assert unbounded == []
    assert all(node["maximum"] < 2**64 for _, node in fields)


def test_a_huge_integer_compares_and_shows_short() -> None:
    number = HugeInteger.from_literal("-" + "7" * 5000)
    assert number < -(2**64)
    assert str(number) == repr(number) == "-777777777777...(5000 digits)"
    assert str(HugeInteger.from_int(2**20000)) == "0x100000000000...(20001 bits)"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("[machine]\nvcpu_count = 2.0\n", "machine.vcpu_count", f"{FLOAT} 2.0"),
        ("[machine]\nvcpu_count = 1.5\n", "machine.vcpu_count", f"{FLOAT} 1.5"),
        ("[machine]\nvcpu_count = inf\n", "machine.vcpu_count", f"{FLOAT} inf"),
        ("[machine]\nmem_size_mib = 48\n", "machine.mem_size_mib", "must be at least 49, got 48"),
        (
            "[machine]\nmem_size_mib = 1" + "0" * 50 + "\n",
            "machine.mem_size_mib",
            "must be at most 1048576, got 10000000000000000000...(51 digits)",
        ),
    ],
)  # fmt: skip
def test_refused(write_vm, text: str, where: str, message: str) -> None:
    assert problems(write_vm(text)) == [(where, message)]


def test_the_least_memory_passes(write_vm) -> None:
    # With a kernel whose size validation does not know (a bundle): the range alone.
    passes(write_vm('[machine]\nmem_size_mib = 49\n[kernel_bundle]\nlibrary = "libkrunfw.so.5"\n'))
