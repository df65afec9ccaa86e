"""A corpus of hostile VM files (what a pull request could put in CI), each with its exact
outcome: refused with every problem located (`LINE:COL: key.path: message`), or accepted.
Never a traceback, never a hang, never a problem that vmrun would only meet at run time."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from runner.config.load import load
from runner.config.problems import ConfigError

DIGITS = "1" * 5000  # more than the 4300 decimal digits Python converts
HEX = "0x" + "f" * 5000  # 20000 bits: read at any length, but too long to print in decimal
NUL = "holds a NUL character (\\x00), which no argument, name or path can carry"
UNMATCHED = (
    'has an unmatched `"`; the kernel would read the rest of the command line, the parts '
    "vmrun adds after this one included, as one parameter"
)
NOT_A_NAME = "is not a variable name (letters, digits, `_`; no digit first)"


@attrs.frozen
class Hostile:
    name: str
    text: str  # `{d}` is a directory of files of every kind (see `named`)
    expected: tuple[str, ...]  # every problem, in file order; () for a file that passes
    suffix: str = ".toml"


CORPUS = [
    # --- 1. tracebacks: integers too long for Python, paths that are not files ---------------
    Hostile(
        "a 5000-digit integer (TOML)",
        f"[machine]\nvcpu_count = {DIGITS}\n",
        ("2:1: machine.vcpu_count: must be at most 32, got 111111111111...(5000 digits)",),
    ),
    Hostile(
        "a negative 5000-digit integer where a string goes (TOML)",
        f"[workload]\nexec = -{DIGITS}\nrlimits.nofile = {{ soft = -{DIGITS}, hard = 1 }}\n",
        (
            "2:1: workload.exec: expected a string, got an integer -111111111111...(5000 digits)",
            "3:20: workload.rlimits.nofile.soft: must be at least -1, got "
            "-111111111111...(5000 digits)",
        ),
    ),
    Hostile(
        "a 20000-bit hexadecimal integer (TOML)",
        f"[vsock]\nguest_cid = {HEX}\n",
        ("2:1: vsock.guest_cid: must be at most 4294967294, got 0xffffffffffff...(20000 bits)",),
    ),
    Hostile(
        "a 5000-digit integer, then a syntax error after it (TOML)",
        f"[machine]\nvcpu_count = {DIGITS}\nmem_size_mib = = 1\n",
        ("3:16: (document): TOML syntax: Invalid value",),
    ),
    Hostile(
        "a 5000-digit integer beside a 5000-digit float (TOML)",
        f"[machine]\nvcpu_count = {DIGITS}\nmem_size_mib = {DIGITS}.5\n",
        (
            "2:1: machine.vcpu_count: must be at most 32, got 111111111111...(5000 digits)",
            "3:1: machine.mem_size_mib: expected an integer, got a float inf",
        ),
    ),
    Hostile(
        "a date with a 5000-digit year (TOML)",
        f"[machine]\nvcpu_count = {DIGITS}-05-27\n",
        ("2:5014: (document): TOML syntax: Expected newline or end of document after a statement",),
    ),
    Hostile(
        "digits in strings are text (TOML)",
        f'[workload]\nexec = "{DIGITS}"\nargs = [\'{DIGITS}\', """{DIGITS}"""]\n',
        (),
    ),
    Hostile(
        "5000-digit integers (JSON)",
        f'{{"machine": {{"mem_size_mib": {DIGITS}}}, "workload": {{"exec": "x", '
        f'"args": [-{DIGITS}]}}}}',
        (
            "1:14: machine.mem_size_mib: must be at most 1048576, got 111111111111...(5000 digits)",
            "1:5068: workload.args[0]: expected a string, got an integer "
            "-111111111111...(5000 digits)",
        ),
        ".json",
    ),
    Hostile(
        "/proc/self/mem as the kernel: only looked at", '[kernel]\npath = "/proc/self/mem"\n', ()
    ),
    Hostile(
        "devices and FIFOs where files are read",
        '[kernel]\npath = "/dev/zero"\ninitramfs = "{d}/fifo"\n',
        (
            "2:1: kernel.path: is a character device, not a regular file: /dev/zero",
            "3:1: kernel.initramfs: is a FIFO, not a regular file: {d}/fifo",
        ),
    ),
    Hostile(
        "paths no file system holds",
        '[kernel]\npath = "{long}"\ninitramfs = "/etc/hostname/x"\n[[fs]]\ntag = "t"\n'
        'shared_dir = "{d}/loop"\n',
        (
            "2:1: kernel.path: cannot look at {long}: File name too long",
            "3:1: kernel.initramfs: cannot look at /etc/hostname/x: Not a directory",
            "6:1: fs[0].shared_dir: no such directory: {d}/loop",
        ),
    ),
    # --- 2. what was accepted and should not be ---------------------------------------------
    Hostile(
        "floats where integers go (TOML)",
        "[machine]\nvcpu_count = 2.0\nmem_size_mib = 1e3\n",
        (
            "2:1: machine.vcpu_count: expected an integer, got a float 2.0",
            "3:1: machine.mem_size_mib: expected an integer, got a float 1000.0",
        ),
    ),
    Hostile(
        "floats where integers go (JSON)",
        '{"machine": {"vcpu_count": 2.0, "mem_size_mib": 1e30}, "vsock": {"guest_cid": -0.0}}',
        (
            "1:14: machine.vcpu_count: expected an integer, got a float 2.0",
            "1:33: machine.mem_size_mib: expected an integer, got a float 1e+30",
            "1:66: vsock.guest_cid: expected an integer, got a float -0.0",
        ),
        ".json",
    ),
    Hostile(
        "NUL characters in what becomes a C string (TOML)",
        '[workload]\nexec = "/bin/sh\\u0000-c"\nargs = ["a", "b\\u0000"]\n'
        'env = { A = "\\u0000" }\n[kernel_cmdline]\nepilog = "x\\u0000y"\n'
        '[[fs]]\ntag = "t\\u0000"\nshared_dir = "{d}"\n',
        (
            f"2:1: workload.exec: {NUL}",
            f"3:14: workload.args[1]: {NUL}",
            f"4:9: workload.env.A: {NUL}",
            f"6:1: kernel_cmdline.epilog: {NUL}",
            f"8:1: fs[0].tag: {NUL}",
        ),
    ),
    Hostile(
        "NUL characters in names and paths (JSON)",
        '{"net": [{"id": "n", "backend": {"type": "tap", "tap_name": "t\\u0000p"}}],\n'
        ' "kernel": {"path": "/bin/sh\\u0000"},\n'
        ' "kernel_cmdline": {"env": {"A": "\\u0000"}}}',
        (
            f"1:49: net[0].backend.tap_name: {NUL}",
            f"2:13: kernel.path: {NUL}",
            f"3:29: kernel_cmdline.env.A: {NUL}",
        ),
        ".json",
    ),
    Hostile(
        "command-line parts that swallow what follows them",
        '[kernel_cmdline]\nprolog = "quiet root=\\"/dev/vda"\n'
        'epilog = "init=/bin/sh \\"a b\\" \\""\n',
        (f"2:1: kernel_cmdline.prolog: {UNMATCHED}", f"3:1: kernel_cmdline.epilog: {UNMATCHED}"),
    ),
    Hostile(
        "`--` in the prolog hands the rest of the line to init",
        '[kernel_cmdline]\nprolog = "quiet -- x"\n',
        (
            "2:1: kernel_cmdline.prolog: holds `--`, after which the kernel passes everything "
            "to init: the parts vmrun adds after this one (env, devices, console=) would not "
            "reach the kernel",
        ),
    ),
    Hostile(
        "balanced quotes and `--` last are fine",
        '[kernel_cmdline]\nprolog = "quiet x=\\"a b\\""\nepilog = "-- init args"\n',
        (),
    ),
    Hostile(
        "control characters on the command line",
        '[kernel_cmdline]\nepilog = "a\\u001b[2Jb"\nenv = { E = "\\u0007" }\n',
        (
            "2:1: kernel_cmdline.epilog: holds the control character U+001B; the command "
            "line is text",
            "3:9: kernel_cmdline.env.E: holds the control character U+0007; the command line "
            "is text",
        ),
    ),
    Hostile(
        "TAP names Linux refuses",
        '[[net]]\nid = "a"\nbackend = { type = "tap", tap_name = "ééééééééé" }\n'
        '[[net]]\nid = "b"\nbackend = { type = "tap", tap_name = "tap:0" }\n'
        '[[net]]\nid = "c"\nbackend = { type = "tap", tap_name = ".." }\n',
        (
            "3:27: net[0].backend.tap_name: is 18 bytes in UTF-8; an interface name holds at "
            "most 15 (Linux's IFNAMSIZ with its NUL)",
            "6:27: net[1].backend.tap_name: 'tap:0' is no interface name: Linux refuses `:`, "
            "`.` and `..`",
            "9:27: net[2].backend.tap_name: '..' is no interface name: Linux refuses `:`, `.` "
            "and `..`",
        ),
    ),
    Hostile(
        "two devices on one host resource",
        '[[net]]\nid = "a"\nbackend = { type = "tap", tap_name = "tap0" }\n'
        '[[net]]\nid = "b"\nbackend = { type = "tap", tap_name = "tap0" }\n'
        '[[net]]\nid = "c"\nbackend = { type = "unixstream", socket_path = "{d}/s.sock" }\n'
        '[[input_backends]]\ndevice = "/dev/null"\n'
        '[[input_backends]]\ndevice = "/dev/../dev/null"\n'
        "[vsock]\nports = [\n"
        '  { port = 1, socket_path = "{d}/s.sock", direction = "host_connects" },\n'
        '  { port = 2, socket_path = "{d}/l.sock", direction = "host_connects" },\n'
        '  { port = 3, socket_path = "{d}/l.sock", direction = "host_connects" },\n'
        "]\n",
        (
            "6:27: net[1].backend.tap_name: the TAP interface tap0 is already used by "
            "net[0].backend.tap_name; a TAP interface carries one interface's frames",
            "13:1: input_backends[1].device: the host path /dev/null is already used by "
            "input_backends[0].device; an input device has one reader",
            "16:15: vsock.ports[0].socket_path: the host path {d}/s.sock is already used by "
            "net[2].backend.socket_path; vmrun listens on it for one vsock port",
            "18:15: vsock.ports[2].socket_path: the host path {d}/l.sock is already used by "
            "vsock.ports[1].socket_path; vmrun listens on it for one vsock port",
        ),
    ),
    Hostile(
        "a disk image that one device writes, used by others",
        'block = [\n  { id = "a", path = "{d}/disk.img" },\n'
        '  { id = "b", path = "{d}/../named/disk.img", read_only = true },\n'
        '  { id = "c", path = "{d}/disk.img" },\n]\n',
        (
            "3:15: block[1].path: the host path {d}/disk.img is already used by block[0].path; "
            "another device writes that image",
            "4:15: block[2].path: the host path {d}/disk.img is already used by block[0].path; "
            "a disk image that a device writes is that device's alone",
        ),
    ),
    Hostile(
        "read-only disks share an image",
        'block = [{ id = "a", path = "{d}/disk.img", read_only = true }, '
        '{ id = "b", path = "{d}/disk.img", read_only = true }]\n',
        (),
    ),
    Hostile(
        "vsock ports that connect out share a socket",
        '[vsock]\nports = [{ port = 1, socket_path = "{d}/s.sock" }, '
        '{ port = 2, socket_path = "{d}/s.sock" }]\n',
        (),
    ),
    Hostile(
        "integers beyond what the VMM can use",
        "[workload]\nexec = 'x'\nrlimits.nofile = { soft = -1, hard = 18446744073709551615 }\n"
        "[kernel_bundle]\nguest_addr = 18446744073709551616\n[gpu]\nshm_size = 4503599627370497\n",
        (
            "3:31: workload.rlimits.nofile.hard: must be at most 18446744073709551614, got "
            "18446744073709551615",
            "5:1: kernel_bundle.guest_addr: must be at most 4503599627370495, got "
            "18446744073709551616",
            "7:1: gpu.shm_size: must be at most 4503599627370496, got 4503599627370497",
        ),
    ),
    Hostile(
        "a guest memory no kernel runs in, whatever the kernel",
        '[machine]\nmem_size_mib = 1\n[tee_config]\nworkload_id = "w"\ncpus = 1\nram_mib = 48\n',
        (
            "2:1: machine.mem_size_mib: must be at least 49, got 1",
            "6:1: tee_config.ram_mib: must be at least 49, got 48",
        ),
    ),
    # --- 3. problems in tables of names are located at the name ----------------------------
    Hostile(
        "names and values in [workload.env], [workload.rlimits], [kernel_cmdline.env]",
        '[workload]\nexec = "x"\n\n[workload.env]\nOK = "1"\n"1BAD" = "x"\nNUM = 1\n\n'
        "[workload.rlimits]\nnofiles = { soft = 1, hard = 1 }\nstack = { soft = 1 }\n\n"
        '[kernel_cmdline.env]\n"a-b" = "x"\n',
        (
            f'6:1: workload.env.1BAD: "1BAD" {NOT_A_NAME}',
            "7:1: workload.env.NUM: expected a string, got an integer 1",
            '10:1: workload.rlimits.nofiles: "nofiles" is not one of: as, core, cpu, data, '
            "fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, "
            "sigpending, stack",
            "11:1: workload.rlimits.stack.hard: missing required key `hard`",
            f'14:1: kernel_cmdline.env.a-b: "a-b" {NOT_A_NAME}',
        ),
    ),
    Hostile(
        "names in JSON tables of names",
        '{"workload": {"exec": "x",\n  "env": {"A": "1", "9": "x"}},\n'
        ' "kernel_cmdline": {"env": {"B C": "x"}}}',
        (
            f'2:21: workload.env.9: "9" {NOT_A_NAME}',
            f'3:29: kernel_cmdline.env.B C: "B C" {NOT_A_NAME}',
        ),
        ".json",
    ),
    Hostile(
        "a key repeated in a repeated object (JSON)",
        '{"machine": {"vcpu_count": 1},\n "machine": {"vcpu_count": 1,\n'
        '              "vcpu_count": 2}}',
        (
            "2:2: machine: `machine` is given twice in one object",
            "3:15: machine.vcpu_count: `vcpu_count` is given twice in one object",
        ),
        ".json",
    ),
    Hostile(
        "the same key in two objects is no repeat (JSON)",
        '{"workload": {"exec": "x", "env": {"exec": "y"}}, "kernel": {"path": "/proc/self/mem"}}',
        (),
        ".json",
    ),
    # --- 4. what a message quotes is escaped ------------------------------------------------
    Hostile(
        "terminal escapes and a forged line in a key",
        '"\\u001b[2J\\nvm.toml:1:1: all good" = 1\n',
        (
            "1:1: \\x1b[2J\\nvm.toml:1:1: all good: unknown key `\\x1b[2J\\nvm.toml:1:1: all "
            "good`; expected one of: $schema, machine, kernel, kernel_bundle, firmware, "
            "kernel_cmdline, fs, block, net, dhcp_client, vsock, disable_implicit_console, "
            "kernel_console, serial_consoles, virtio_consoles, console_output, "
            "smbios_oem_strings, gpu, snd_device, input_backends, tee_config, workload, root",
        ),
    ),
    Hostile(
        "bidi controls and separators in a value",
        '[workload]\nexec = "x"\nhostname = "a\\u202eb\\u2028c\\r"\n',
        ('3:1: workload.hostname: "a\\u202eb\\u2028c\\r" is not a valid host name',),
    ),
    # --- 6. suggestions name close keys only ------------------------------------------------
    Hostile(
        "a key of a table one level down",
        "vcpus = 2\ngpus = 1\nflavour = 1\n",
        (
            "1:1: vcpus: unknown key `vcpus`; did you mean `machine.vcpu_count`?",
            "2:1: gpus: unknown key `gpus`; did you mean `gpu`?",
            "3:1: flavour: unknown key `flavour`; expected one of: $schema, machine, kernel, "
            "kernel_bundle, firmware, kernel_cmdline, fs, block, net, dhcp_client, vsock, "
            "disable_implicit_console, kernel_console, serial_consoles, virtio_consoles, "
            "console_output, smbios_oem_strings, gpu, snd_device, input_backends, tee_config, "
            "workload, root",
        ),
    ),
]


@pytest.fixture
def named(tmp_path: Path) -> Path:
    """A directory of what a hostile file may name: a FIFO, a symbolic-link loop, a disk."""
    directory = tmp_path / "named"
    directory.mkdir()
    os.mkfifo(directory / "fifo")
    (directory / "disk.img").write_bytes(bytes(4096))
    (directory / "loop").symlink_to(directory / "loop")
    return directory


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_hostile_file(tmp_path: Path, named: Path, case: Hostile) -> None:
    fill = {"d": str(named), "long": "/" + "x" * 5000}
    vm = tmp_path / f"vm{case.suffix}"
    vm.write_text(case.text.replace("{d}", fill["d"]).replace("{long}", fill["long"]))
    expected = [
        f"{vm}:{line}".replace("{d}", fill["d"]).replace("{long}", fill["long"])
        for line in case.expected
    ]
    try:
        load(str(vm))
    except ConfigError as error:
        assert error.lines() == expected
    else:
        assert expected == [], "accepted"
