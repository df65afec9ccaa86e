"""The QEMU peer's console against vmrun's implicit one (runner/emulated/peers.py)."""

from __future__ import annotations

import pytest

from runner.config.load import load
from runner.emulated.peers import (
    IMPLICIT_PORTS,
    PeerMismatch,
    implicit_console_stdio,
    qemu_implicit_console,
)


def resources(tmp_path, text: str = ""):
    path = tmp_path / "vm.toml"
    path.write_text(text)
    return load(str(path)).resources


def test_the_init_is_told_the_peers_ports(tmp_path) -> None:
    stdio = implicit_console_stdio(resources(tmp_path))
    assert stdio.console == "/dev/hvc0"
    assert stdio.stdio_ports == IMPLICIT_PORTS
    args = qemu_implicit_console(hvc0="/h", stdout="/o", stderr="/e")
    devices = [args[i + 1] for i, arg in enumerate(args) if arg == "-device"]
    consoles = [d for d in devices if d.startswith("virtconsole,")]
    named = [d for d in devices if d.startswith("virtserialport,") and ",name=" in d]
    # The init waits for as many ports as the peer has: all of them, and the named ones.
    assert stdio.virtio_ports == (len(consoles) + len(named), len(named))
    assert [d.rsplit("name=", 1)[1] for d in named] == [name for _fd, name in IMPLICIT_PORTS]


def test_each_port_writes_where_it_is_told() -> None:
    args = qemu_implicit_console(hvc0="/h", stdout="/o", stderr="/e")
    chardevs = [args[i + 1] for i, arg in enumerate(args) if arg == "-chardev"]
    assert chardevs == [
        "file,id=hvc0,path=/h",
        "null,id=krun-stdin",
        "file,id=krun-stdout,path=/o",
        "file,id=krun-stderr,path=/e",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "disable_implicit_console = true\n",
        'console_output = "/tmp/console.log"\n',
        '[[virtio_consoles]]\ntype = "auto"\n',
    ],
)
def test_another_console_is_no_peers(tmp_path, text: str) -> None:
    with pytest.raises(PeerMismatch):
        implicit_console_stdio(resources(tmp_path, text))
