"""Whatever path a hostile file names, in whatever path field, `vmrun validate` and `vmrun
show` answer with located problems or the file, never a traceback: validation only looks at
paths (stat, lstat, readlink), and /proc/self/mem, a loop of links, a name too long for the
kernel or a path through a file are each just a path that is or is not what the field needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import cli

ODD_PATHS = [
    "/proc/self/mem", "/proc/kmsg", "/dev/stdin", "/dev/tty", "/proc/self/fd/0",
    "/proc/self/fd/999", "/dev/null", "", ".", "..", "-", "~", "~no-such-user/x",
    "/" * 5000, "a/" * 3000 + "x", "x" * 100_000, "/etc/hostname/x", "{d}/loop",
    "/sys/kernel/debug",
]  # fmt: skip
PATH_FIELDS = {
    "kernel": "[kernel]\npath = {v}\ninitramfs = {v}\n",
    "firmware": "[firmware]\npath = {v}\n",
    "bundle": "[kernel_bundle]\nlibrary = {v}\nqboot = {v}\ninitrd = {v}\n",
    "share": "[[fs]]\ntag = 't'\nshared_dir = {v}\n",
    "disk": "[[block]]\nid = 'd'\npath = {v}\n",
    "net socket": "[[net]]\nid = 'n'\nbackend = {{ type = 'unixgram', socket_path = {v} }}\n",
    "vsock": "[vsock]\nports = [{{ port = 1, socket_path = {v}, direction = 'host_connects' }}]\n",
    "serial": "[[serial_consoles]]\ninput = {v}\noutput = {v}\n",
    "virtio console": "[[virtio_consoles]]\ntype = 'auto'\ninput = {v}\noutput = {v}\nerr = {v}\n",
    "input device": "[[input_backends]]\ndevice = {v}\n",
    "console output": "console_output = {v}\n",
}


@pytest.mark.parametrize("field", PATH_FIELDS)
def test_any_path_in_any_path_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    vm = tmp_path / "vm.toml"
    for odd in ODD_PATHS:
        value = json.dumps(odd.replace("{d}", str(tmp_path)))
        vm.write_text(PATH_FIELDS[field].format(v=value) + "[workload]\nexec = 'x'\n")
        for command in ("validate", "show"):
            status = cli.main([command, str(vm)])
            said = capsys.readouterr()
            assert status in (0, 1), (odd[:40], command, said)
            assert "internal error" not in said.out + said.err, (odd[:40], command, said)
            if status == 1 and command == "validate":
                assert said.out.startswith(f"{vm}:"), (odd[:40], said)
