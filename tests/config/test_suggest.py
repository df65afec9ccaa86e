"""Suggestions for an unknown key: close names only, this table's first, then a table's one
level down; otherwise the keys the table knows."""

from __future__ import annotations

import pytest
from expect import problems

from runner.config.suggest import unknown_key_message

KNOWN = ["machine", "kernel", "gpu", "vsock", "kernel_cmdline", "workload"]
BELOW = {
    "machine": ["vcpu_count", "mem_size_mib", "ht_enabled"],
    "kernel": ["path", "initramfs"],
    "workload": ["exec", "args", "env"],
}


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("kernal", "`kernel`"),  # a slip
        ("vsok", "`vsock`"),
        ("gpus", "`gpu`"),
        ("mach", "`machine`"),  # shortened
        ("cmdline", "`kernel_cmdline`"),  # a word of it
        ("vcpus", "`machine.vcpu_count`"),  # one level down, shortened
        ("mem_size_mib", "`machine.mem_size_mib`"),  # one level down, exact
        ("exe", "`workload.exec`"),
        ("initramf", "`kernel.initramfs`"),
    ],
)
def test_a_close_key_is_suggested(key: str, meant: str) -> None:
    assert unknown_key_message(key, KNOWN, BELOW) == f"unknown key `{key}`; did you mean {meant}?"


@pytest.mark.parametrize("key", ["vcpu", "cpu", "memory", "x", "", "\x1b[2J", "k" * 10000])
def test_a_far_key_lists_the_known_ones(key: str) -> None:
    message = unknown_key_message(key, KNOWN, BELOW)
    if key == "vcpu":  # a shortening of machine.vcpu_count, not `gpu` (ratio 0.57)
        assert message.endswith("did you mean `machine.vcpu_count`?")
    else:
        assert message == f"unknown key `{key}`; expected one of: {', '.join(KNOWN)}"


def test_this_table_before_one_level_down() -> None:
    below = {**BELOW, "kernel": ["gpu"]}
    assert unknown_key_message("gpux", KNOWN, below).endswith("did you mean `gpu`?")


def test_equally_close_names_are_all_given() -> None:
    message = unknown_key_message("kernel_x", ["kernel_bundle", "kernel_cmdline"], {})
    assert message.endswith("did you mean `kernel_bundle` or `kernel_cmdline`?")


def test_through_load(write_vm) -> None:
    path = write_vm("vcpus = 2\n[machine]\nvcpus = 2\n")
    assert problems(path) == [
        ("vcpus", "unknown key `vcpus`; did you mean `machine.vcpu_count`?"),
        ("machine.vcpus", "unknown key `vcpus`; did you mean `vcpu_count`?"),
    ]
