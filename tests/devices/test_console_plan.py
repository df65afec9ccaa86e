"""Which ports each virtio console has, libkrun's way (runner/devices/virtio/console_plan.py)."""

from __future__ import annotations

import pytest

from runner.config.load import load
from runner.devices.virtio.console_plan import (
    ConsolePlan,
    Endpoint,
    InitStdio,
    PortPlan,
    console_plans,
    init_stdio,
    reads_stdin,
)

NONE: frozenset[int] = frozenset()
ALL = frozenset({0, 1, 2})


@pytest.fixture
def resources_of(tmp_path):
    def resources(text: str):
        path = tmp_path / "vm.toml"
        path.write_text(text)
        return load(path).resources

    return resources


def stdio(name: str) -> Endpoint:
    return Endpoint(name, f"vmrun's {name}")


def test_on_a_terminal_the_implicit_console_is_one_port(resources_of) -> None:
    resources = resources_of("")
    [plan] = console_plans(resources, ALL)
    assert plan == ConsolePlan(
        (
            PortPlan(
                "",
                stdio("stdin"),
                stdio("stdout"),
                console=True,
                size_from=stdio("stdin"),
                raw=stdio("stdin"),
            ),
        ),
        multiport=False,
    )
    assert init_stdio(resources, [plan]) == InitStdio("/dev/hvc0", (), (1, 0))


def test_without_terminals_each_stream_has_its_named_port(resources_of) -> None:
    resources = resources_of("")
    [plan] = console_plans(resources, NONE)
    assert plan.multiport
    console, *named = plan.ports
    # The console carries the kernel's and the init's messages: to stderr, never stdout.
    assert console == PortPlan("", None, stdio("stderr"), console=True)
    assert named == [
        PortPlan("krun-stdin", stdio("stdin"), None, console=False),
        PortPlan("krun-stdout", None, stdio("stdout"), console=False),
        PortPlan("krun-stderr", None, stdio("stderr"), console=False),
    ]
    assert init_stdio(resources, [plan]) == InitStdio(
        "/dev/hvc0", ((0, "krun-stdin"), (1, "krun-stdout"), (2, "krun-stderr")), (4, 3)
    )
    assert reads_stdin([plan])


def test_a_pipe_into_a_terminal_session(resources_of) -> None:
    # `echo hi | vmrun run f.toml`: stdout and stderr a terminal, stdin a pipe.
    [plan] = console_plans(resources_of(""), frozenset({1, 2}))
    console, stdin_port = plan.ports
    assert console == PortPlan("", None, stdio("stdout"), console=True, size_from=stdio("stdout"))
    assert stdin_port.name == "krun-stdin"


def test_console_output_is_one_port_to_the_file(resources_of, tmp_path) -> None:
    resources = resources_of(f'console_output = "{tmp_path / "log"}"\n')
    [plan] = console_plans(resources, NONE)
    output = Endpoint(str(tmp_path / "log"), "console_output")
    assert plan == ConsolePlan((PortPlan("", None, output, console=True),), multiport=False)
    assert not reads_stdin([plan])
    assert init_stdio(resources, [plan]) == InitStdio("/dev/hvc0", (), (1, 0))


def test_auto_and_listed_consoles(resources_of, tmp_path) -> None:
    resources = resources_of(
        "disable_implicit_console = true\n"
        '[[virtio_consoles]]\ntype = "auto"\ninput = "null"\n'
        f'output = "{tmp_path / "out"}"\n'
        '[[virtio_consoles]]\ntype = "ports"\nports = [\n'
        '  { type = "tty", name = "shell", tty = "stdin" },\n'
        f'  {{ type = "inout", name = "metrics", output = "{tmp_path / "m"}" }},\n]\n'
    )
    auto, listed = console_plans(resources, NONE)
    assert auto.multiport and listed.multiport
    out = Endpoint(str(tmp_path / "out"), "virtio_consoles[0].output")
    assert auto.ports == (
        PortPlan("", None, out, console=True),
        PortPlan("krun-stderr", None, Endpoint("stderr", "virtio_consoles[0].err"), console=False),
    )
    shell, metrics = listed.ports
    # stdin is no terminal here: the tty port reads stdin and writes stdout.
    key = "virtio_consoles[1].ports[0].tty"
    assert shell == PortPlan(
        "shell", Endpoint("stdin", key), Endpoint("stdout", key), console=False
    )
    assert metrics == PortPlan(
        "metrics",
        None,
        Endpoint(str(tmp_path / "m"), "virtio_consoles[1].ports[1].output"),
        console=False,
    )
    # No implicit console: the workload's terminal is the kernel's console; its stderr the
    # auto console's err port.
    assert init_stdio(resources, [auto, listed]) == InitStdio(None, ((2, "krun-stderr"),), (4, 3))


def test_a_tty_port_on_vmrun_s_terminal_is_raw_and_sized(resources_of) -> None:
    resources = resources_of(
        "disable_implicit_console = true\n"
        '[[virtio_consoles]]\ntype = "ports"\nports = [{ type = "tty", name = "shell" }]\n'
    )
    [plan] = console_plans(resources, ALL)
    stdin = Endpoint("stdin", "virtio_consoles[0].ports[0].tty")
    assert plan.ports == (
        PortPlan("shell", stdin, stdin, console=False, size_from=stdin, raw=stdin),
    )
