"""The parts of the kernel command line a file writes (prolog, epilog, env values) are each
checked as the kernel will split them (lib/cmdline.c, next_arg), at their own key."""

from __future__ import annotations

import pytest
from expect import passes, problems

from runner.boot.cmdline import env_value_problem, parameters, part_problem


def test_parameters_split_as_the_kernel_splits() -> None:
    assert parameters('a  b\t"c d" e="f g" "--"') == ["a", "b", "c d", 'e="f g', "--"]


@pytest.mark.parametrize(
    ("text", "last", "refused"),
    [
        ("quiet", False, False),
        ('x="a b"', False, False),
        ("a\tb", False, False),  # a tab separates parameters
        ('x="a b', False, True),  # swallows what vmrun adds after it
        ('x="a b', True, True),  # swallows nothing, but the kernel reads it as unclosed
        ("quiet -- a", False, True),
        ('quiet "--" a', False, True),
        ("quiet -- a", True, False),  # the epilog's `--` passes its own rest to init
        ("quiet --a", False, False),
        ("a\x1bb", True, True),
        ("a\x7fb", True, True),
        ("a\nb", True, True),
    ],
)
def test_part_problem(text: str, last: bool, refused: bool) -> None:
    assert (part_problem(text, last=last) is not None) == refused


def test_env_values() -> None:
    assert env_value_problem("a b") is None
    assert env_value_problem('a"b') is not None
    assert env_value_problem("\x1b") is not None


def test_every_part_at_its_key(write_vm) -> None:
    path = write_vm(
        '[kernel_cmdline]\nprolog = "a -- b"\nepilog = "\\"x"\nenv = { A = "\\u001b", B = "ok" }\n'
    )
    assert [where for where, _ in problems(path)] == [
        "kernel_cmdline.prolog",
        "kernel_cmdline.epilog",
        "kernel_cmdline.env.A",
    ]


def test_the_default_prolog_with_an_epilog_of_quotes_passes(write_vm) -> None:
    passes(write_vm('[kernel_cmdline]\nepilog = "init.x=\\"a b\\" -- arg"\n'))
