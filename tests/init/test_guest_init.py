"""vmrun's guest init (native/init), built here and run in its test mode.

Test mode (VMRUN_INIT_TEST=1, config path as the argument) skips what needs a guest (mounts,
modules, root, host name, I/O ports, power-off) and prints `exit-status N` instead of the
port write; the rest (config parsing, env, workdir, rlimits, PATH search, the exit status
rules, reaping) is the code that runs in the guest.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from guest_init_config import (
    BUILD_SCRIPT,
    DEFAULT_PATH,
    END,
    MAGIC,
    build,
    escape,
    render,
    run,
    run_path,
    workload,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.guest.initramfs import GuestImageError

SH = "/bin/sh"
NOBODY = 65534


def sh(script: str, **kwargs: object) -> list[tuple[str, str]]:
    return workload(SH, "-c", script, **kwargs)  # type: ignore[arg-type]


# --- exit statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 0", 0), ("exit 1", 1), ("exit 42", 42), ("exit 255", 255), ("kill -9 $$", 137),
     ("kill -TERM $$", 143)],
)  # fmt: skip
def test_workload_status(init: Path, tmp_path: Path, script: str, status: int) -> None:
    assert run(init, tmp_path, sh(script)).status == status


def test_true_and_false_by_name(init: Path, tmp_path: Path) -> None:
    assert run(init, tmp_path, workload("true")).status == 0
    assert run(init, tmp_path, workload("false")).status == 1


def test_not_executable_is_126(init: Path, tmp_path: Path) -> None:
    program = tmp_path / "prog"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o644)
    result = run(init, tmp_path, workload(str(program)))
    assert result.status == 126
    assert f"cannot run {program}: Permission denied" in result.err


def test_unknown_format_is_126(init: Path, tmp_path: Path) -> None:
    program = tmp_path / "prog"
    program.write_bytes(b"\x01\x02 not a program\n")
    program.chmod(0o755)
    assert run(init, tmp_path, workload(str(program))).status == 126


def test_directory_is_126(init: Path, tmp_path: Path) -> None:
    assert run(init, tmp_path, workload(str(tmp_path))).status == 126


def test_missing_program_is_127(init: Path, tmp_path: Path) -> None:
    result = run(init, tmp_path, workload(str(tmp_path / "missing")))
    assert result.status == 127
    assert "No such file or directory" in result.err
    assert run(init, tmp_path, workload("vmrun-no-such-program")).status == 127


def test_missing_interpreter_is_127_and_said(init: Path, tmp_path: Path) -> None:
    program = tmp_path / "prog"
    program.write_text("#!/no/such/interpreter\n")
    program.chmod(0o755)
    result = run(init, tmp_path, workload(str(program)))
    assert result.status == 127
    assert "interpreter" in result.err


def test_missing_workdir_is_125(init: Path, tmp_path: Path) -> None:
    result = run(init, tmp_path, sh("exit 0", workdir=str(tmp_path / "nowhere")))
    assert result.status == 125
    assert "workdir" in result.err


def test_rlimit_that_cannot_be_set_is_125(init: Path, tmp_path: Path) -> None:
    # above fs.nr_open: refused even to root
    limit = 1 << 40
    result = run(init, tmp_path, sh("exit 0", rlimits={"nofile": (limit, limit)}))
    assert result.status == 125
    assert "rlimit nofile" in result.err


def test_missing_config_is_125(init: Path, tmp_path: Path) -> None:
    result = run_path(init, str(tmp_path / "absent"))
    assert result.status == 125
    assert "cannot read" in result.err


def test_no_config_argument_is_125(init: Path) -> None:
    done = subprocess.run(
        [str(init)], env={"VMRUN_INIT_TEST": "1"}, capture_output=True, check=False, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, b"exit-status 125\n")
    assert b"usage" in done.stderr


GOOD = MAGIC + b"\nexec /bin/true\n" + END + b"\n"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"", "the file is empty"),
        (b"exec /bin/true\nend\n", "line 1: the file does not start with"),
        (MAGIC + b"\nexec /bin/true\n", "no 'end' line"),
        (MAGIC + b"\nexec /bin/true\nend", "line 3: the last line has no newline"),
        (GOOD + b"exec /bin/true\n", "line 4: text after the 'end' line"),
        (MAGIC + b"\nend\n", "no exec line"),
        (MAGIC + b"\nexec\nend\n", "line 2: exec is empty"),
        (MAGIC + b"\nexec /bin/true\nexec /bin/true\nend\n", "line 3: 'exec' given twice"),
        (MAGIC + b"\nfrobnicate 1\nexec /bin/true\nend\n", "line 2: unknown key 'frobnicate'"),
        (MAGIC + b"\nexec /bin/\\q\nend\n", "line 2: unknown escape \\q"),
        (MAGIC + b"\nexec /bin/true\\\nend\n", "line 2: a value ends with a lone backslash"),
        (MAGIC + b"\nexec /bin/\\x4\nend\n", "line 2: \\x needs two hex digits"),
        (MAGIC + b"\nexec /bin/\\x00\nend\n", "line 2: \\x00"),
        (MAGIC + b"\nexec /bin/tr\0ue\nend\n", "NUL byte"),
        (MAGIC + b"\nenv FOO\nexec /bin/true\nend\n", "line 2: env wants NAME=VALUE"),
        (MAGIC + b"\nenv =x\nexec /bin/true\nend\n", "line 2: env wants NAME=VALUE"),
        (MAGIC + b"\nenv A=1\nenv A=2\nexec /bin/true\nend\n", "line 3: env A given twice"),
        (MAGIC + b"\nrlimit nofile 10\nexec /bin/true\nend\n", "rlimit wants NAME SOFT HARD"),
        (MAGIC + b"\nrlimit nofile 10 20 30\nexec /bin/true\nend\n", "rlimit wants NAME"),
        (MAGIC + b"\nrlimit files 10 20\nexec /bin/true\nend\n", "unknown rlimit 'files'"),
        (MAGIC + b"\nrlimit nofile -2 20\nexec /bin/true\nend\n", "decimal number or -1"),
        (MAGIC + b"\nrlimit nofile 1x 20\nexec /bin/true\nend\n", "decimal number or -1"),
        (MAGIC + b"\nrlimit nofile 30 20\nexec /bin/true\nend\n", "soft limit above hard"),
        (MAGIC + b"\nrlimit nofile -1 20\nexec /bin/true\nend\n", "soft limit above hard"),
        (MAGIC + b"\nrlimit nofile 1 2\nrlimit nofile 1 2\nexec /bin/true\nend\n", "twice"),
        (MAGIC + b"\nroot disk\nexec /bin/true\nend\n", "root is initramfs, fs or block"),
        (MAGIC + b"\nroot fs\nexec /bin/true\nend\n", "root fs needs a root-tag"),
        (MAGIC + b"\nroot fs\nroot-tag r\nroot-fstype ext4\nexec /bin/true\nend\n",
         "root fs takes no"),
        (MAGIC + b"\nroot block\nroot-device /dev/vda\nexec /bin/true\nend\n",
         "root block needs root-device and root-fstype"),
        (MAGIC + b"\nroot-tag r\nexec /bin/true\nend\n", "need root fs or root block"),
        (MAGIC + b"\nmodule\nexec /bin/true\nend\n", "module wants a path"),
        (MAGIC + b"\nworkdir\nexec /bin/true\nend\n", "workdir is empty"),
        (MAGIC + b"\nconsole\nexec /bin/true\nend\n", "line 2: console wants an absolute"),
        (MAGIC + b"\nconsole dev/hvc0\nexec /bin/true\nend\n", "console wants an absolute"),
        (MAGIC + b"\nconsole /dev/hvc0\nconsole /dev/hvc1\nexec /bin/true\nend\n",
         "line 3: 'console' given twice"),
        (MAGIC + b"\nstdio-port 3 x\nexec /bin/true\nend\n", "line 2: stdio-port wants FD NAME"),
        (MAGIC + b"\nstdio-port -1 x\nexec /bin/true\nend\n", "stdio-port wants FD NAME"),
        (MAGIC + b"\nstdio-port 01 x\nexec /bin/true\nend\n", "stdio-port wants FD NAME"),
        (MAGIC + b"\nstdio-port x\nexec /bin/true\nend\n", "stdio-port wants FD NAME"),
        (MAGIC + b"\nstdio-port 1\nexec /bin/true\nend\n", "stdio-port wants FD NAME"),
        (MAGIC + b"\nstdio-port\nexec /bin/true\nend\n", "stdio-port wants FD NAME"),
        (MAGIC + b"\nstdio-port 1 \nexec /bin/true\nend\n",
         "line 2: stdio-port 1: the port name is empty"),
        (MAGIC + b"\nstdio-port 1 a\nstdio-port 1 b\nexec /bin/true\nend\n",
         "line 3: stdio-port 1 given twice"),
        (MAGIC + b"\nstdio-port 1 a\nstdio-port 2 a\nexec /bin/true\nend\n",
         "line 3: stdio-port 2: port 'a' is already fd 1's"),
    ],
)  # fmt: skip
def test_malformed_config_is_125(init: Path, tmp_path: Path, config: bytes, message: str) -> None:
    result = run(init, tmp_path, config)
    assert result.status == 125
    assert message in result.err
    assert result.out == ""  # the workload never ran


def test_good_config_skeleton(init: Path, tmp_path: Path) -> None:
    assert run(init, tmp_path, GOOD).status == 0


def test_comments_blank_lines_and_any_order(init: Path, tmp_path: Path) -> None:
    config = MAGIC + b"\n# a comment\n\narg -c\narg exit 3\nexec /bin/sh\nend\n"
    assert run(init, tmp_path, config).status == 3


def test_root_and_module_lines_are_parsed_but_not_used_in_test_mode(
    init: Path, tmp_path: Path
) -> None:
    for root in (
        [("root", "fs"), ("root-tag", "rootfs"), ("root-options", "ro")],
        [("root", "block"), ("root-device", "/dev/vda"), ("root-fstype", "ext4"),
         ("root-options", "noatime,errors=remount-ro")],
        [("root", "initramfs")],
    ):  # fmt: skip
        lines = [("module", "/lib/modules/virtio_blk.ko"), ("hostname", "guest"), *root]
        assert run(init, tmp_path, [*lines, *sh("exit 4")]).status == 4


# --- what the workload gets ------------------------------------------------------------------


def test_env_workdir_and_rlimits_are_applied(init: Path, tmp_path: Path) -> None:
    result = run(
        init,
        tmp_path,
        sh(
            "echo $FOO; pwd; ulimit -n; ulimit -Hn",
            env={"FOO": "bar"},
            workdir=str(tmp_path),
            rlimits={"nofile": (256, 512)},
        ),
    )
    assert result.status == 0
    assert result.out == f"bar\n{tmp_path}\n256\n512\n"


def test_unlimited_rlimit(init: Path, tmp_path: Path) -> None:
    if resource.getrlimit(resource.RLIMIT_CORE)[1] != resource.RLIM_INFINITY:
        pytest.skip("the hard core limit here is not unlimited")
    result = run(init, tmp_path, sh("ulimit -c; ulimit -Hc", rlimits={"core": (-1, -1)}))
    assert result.out == "unlimited\nunlimited\n"


def test_environment_is_exactly_the_configs_plus_path(init: Path, tmp_path: Path) -> None:
    result = run(init, tmp_path, workload("/usr/bin/env", env={"A": "1", "B": "x=y"}))
    # VMRUN_INIT_TEST (the init's own environment) does not leak into the workload's
    assert result.out.splitlines() == ["A=1", "B=x=y", f"PATH={DEFAULT_PATH}"]


def test_configured_path_replaces_the_default(init: Path, tmp_path: Path) -> None:
    result = run(init, tmp_path, workload("/usr/bin/env", env={"PATH": "/bin"}))
    assert result.out.splitlines() == ["PATH=/bin"]


def test_default_workdir_is_root(init: Path, tmp_path: Path) -> None:
    assert run(init, tmp_path, sh("pwd")).out == "/\n"


def test_hostname_is_not_applied_in_test_mode(init: Path, tmp_path: Path) -> None:
    result = run(init, tmp_path, workload("uname", "-n", hostname="vmrun-guest-name"))
    assert result.out == socket.gethostname() + "\n"


def test_argv0_is_exec_as_written(init: Path, tmp_path: Path) -> None:
    first_arg = 'tr "\\0" "\\n" < /proc/$$/cmdline | head -n 1'
    assert run(init, tmp_path, workload("sh", "-c", first_arg)).out == "sh\n"
    assert run(init, tmp_path, workload("/bin/sh", "-c", first_arg)).out == "/bin/sh\n"


# --- PATH search -----------------------------------------------------------------------------


def _tool(directory: Path, name: str, text: str, mode: int = 0o755) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(f"#!/bin/sh\n{text}\n")
    (directory / name).chmod(mode)


def test_path_search_finds_the_first_executable(init: Path, tmp_path: Path) -> None:
    _tool(tmp_path / "a", "mytool", "echo from-a", mode=0o644)  # found but not executable
    _tool(tmp_path / "b", "mytool", "echo from-b")
    _tool(tmp_path / "c", "mytool", "echo from-c")
    path = f"{tmp_path}/missing:{tmp_path}/a:{tmp_path}/b:{tmp_path}/c"
    result = run(init, tmp_path, workload("mytool", env={"PATH": path}))
    assert (result.status, result.out) == (0, "from-b\n")


def test_path_search_only_non_executable_is_126(init: Path, tmp_path: Path) -> None:
    _tool(tmp_path / "a", "mytool", "echo from-a", mode=0o644)
    result = run(init, tmp_path, workload("mytool", env={"PATH": f"{tmp_path}/a:/bin"}))
    assert result.status == 126


def test_path_search_empty_entry_is_the_workdir(init: Path, tmp_path: Path) -> None:
    _tool(tmp_path, "mytool", "echo here")
    result = run(init, tmp_path, workload("mytool", env={"PATH": "/bin:"}, workdir=str(tmp_path)))
    assert result.out == "here\n"


def test_path_search_not_found_is_127(init: Path, tmp_path: Path) -> None:
    result = run(init, tmp_path, workload("sh", env={"PATH": str(tmp_path)}))
    assert result.status == 127


def test_relative_path_with_slash_is_not_searched(init: Path, tmp_path: Path) -> None:
    _tool(tmp_path / "bin", "mytool", "echo relative")
    lines = workload("bin/mytool", env={"PATH": "/nonexistent"}, workdir=str(tmp_path))
    assert run(init, tmp_path, lines).out == "relative\n"


# --- escaping --------------------------------------------------------------------------------

PRINT_ARGS = 'for a in "$@"; do printf "<%s>" "$a"; done'


def test_escaped_values_round_trip(init: Path, tmp_path: Path) -> None:
    args = ["two words", "line1\nline2", "tab\there", "back\\slash", "\\n literal", "ünï €",
            "cr\rlf", "  padded  ", "", "\x7f\x01", "# not a comment", "end"]  # fmt: skip
    script = PRINT_ARGS + '; printf "[%s]" "$V"'
    lines = [("env", "V=a b\nc\\d"), ("exec", SH), ("arg", "-c"), ("arg", script), ("arg", "sh")]
    lines += [("arg", arg) for arg in args]
    result = run(init, tmp_path, lines)
    assert result.status == 0, result.err
    assert result.out == "".join(f"<{a}>" for a in args) + "[a b\nc\\d]"


def test_hex_escapes_of_any_byte(init: Path, tmp_path: Path) -> None:
    value = b"\\x41\\x20\\x5c\\x0a\\xc3\\xa9"
    config = (
        MAGIC + b'\nexec /bin/sh\narg -c\narg printf %s "$1"\narg sh\narg ' + value + b"\nend\n"
    )
    assert run(init, tmp_path, config).out == "A \\\n\u00e9"


def test_writer_escape() -> None:
    assert escape("a b\\c\nd\te\x7f") == b"a b\\\\c\\nd\\x09e\\x7f"
    with pytest.raises(GuestImageError):
        escape("nul\0")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")),
                max_size=4))  # fmt: skip
def test_any_arguments_round_trip(init: Path, tmp_path: Path, args: list[str]) -> None:
    lines = [("exec", SH), ("arg", "-c"), ("arg", PRINT_ARGS), ("arg", "sh")]
    lines += [("arg", arg) for arg in args]
    result = run(init, tmp_path, lines)
    assert result.out == "".join(f"<{a}>" for a in args)


# --- PID 1 duties ----------------------------------------------------------------------------


def test_orphans_are_reaped_and_do_not_count(init: Path, tmp_path: Path) -> None:
    # the subshell leaves an orphan that exits 9 while the workload still runs; the init
    # (a subreaper in test mode, PID 1 in the guest) reaps it and reports the workload's 5
    script = '(sh -c "exit 9" &); sleep 0.3; exit 5'
    assert run(init, tmp_path, sh(script)).status == 5


def test_without_test_mode_it_refuses_unless_pid_1(init: Path) -> None:
    # run as nobody where we are root: should the guard ever break, nobody may not mount,
    # touch I/O ports or power the host off
    def drop() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    with tempfile.TemporaryDirectory() as place:  # pytest's own is closed to nobody
        os.chmod(place, 0o755)
        copy = shutil.copy(init, place)
        done = subprocess.run(
            [copy], env={}, capture_output=True, check=False, timeout=60, preexec_fn=drop
        )
    assert done.returncode == 125
    assert b"not PID 1" in done.stderr


# --- the build -------------------------------------------------------------------------------

PT_DYNAMIC, PT_INTERP = 2, 3


def test_binary_is_static(init: Path) -> None:
    data = init.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert data[4] == 2, "a 64-bit ELF"
    endian = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    types = {struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] for i in range(phnum)}
    assert PT_INTERP not in types, "the init needs a dynamic loader"
    assert PT_DYNAMIC not in types, "the init is dynamically linked"


def test_build_without_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "vmrun-no-such-cc")
    with pytest.raises(build.InitBuildError, match="no C compiler 'vmrun-no-such-cc'"):
        build.build_init(str(tmp_path / "init"))


def test_build_without_static_libc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-cc"
    fake.write_text("#!/bin/sh\necho '/usr/bin/ld: cannot find -lc: No such file' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(build.InitBuildError, match="no static C library") as caught:
        build.build_init(str(tmp_path / "init"))
    assert "libc6-dev" in str(caught.value)
    assert not (tmp_path / "init").exists()


# --- module parameters from the kernel command line -----------------------------------------

CMDLINE = (
    "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 "
    '"virtio_blk.x=a b" virtio_blk.y="c d" virtio_blk.flag quiet virtio_blkx.no=1 '
    "-- virtio_blk.after=dashes"
)


def test_module_parameters_come_from_the_command_line(init: Path, tmp_path: Path) -> None:
    (tmp_path / "config").write_bytes(
        render(
            [
                ("module", "/lib/modules/6.1.0/kernel/drivers/virtio/virtio_mmio.ko"),
                ("module", "/lib/modules/virtio-blk.ko.xz"),
                ("module", "/lib/modules/other.ko"),
                *workload("true"),
            ]
        )
    )
    done = subprocess.run(
        [str(init), str(tmp_path / "config")],
        env={"VMRUN_INIT_TEST": "1", "VMRUN_INIT_TEST_CMDLINE": CMDLINE},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout == "exit-status 0\n"
    said = re.findall(r"module (\S+): not loaded in test mode \(parameters '(.*)'\)", done.stderr)
    assert said == [
        ("/lib/modules/6.1.0/kernel/drivers/virtio/virtio_mmio.ko",
         "device=4K@0xd0000000:5 device=4K@0xd0001000:6"),
        ("/lib/modules/virtio-blk.ko.xz", 'x="a b" y="c d" flag'),
        ("/lib/modules/other.ko", ""),
    ]  # fmt: skip


def test_readme_example(init: Path, tmp_path: Path) -> None:
    readme = BUILD_SCRIPT.with_name("README.md").read_text(encoding="utf-8")
    match = re.search(r"^    (vmrun-init-config 1\n.*?^    end\n)", readme, re.M | re.S)
    assert match, "the README's example config"
    example = re.sub(r"^    ", "", match[1], flags=re.M).encode()
    # the reference writer gives the same bytes for its lines
    lines = [tuple(line.split(" ", 1)) for line in example.decode().splitlines()[1:-1]]
    unescaped = [(k, v.encode().decode("unicode_escape")) for k, v in lines]
    assert render(unescaped) == example
    # its stdio-port 2 (stderr) is a file here
    (tmp_path / "ports" / "vport0p1").mkdir(parents=True)
    (tmp_path / "ports" / "vport0p1" / "name").write_text("krun-stderr\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "vport0p1").touch()
    ports = {
        "VMRUN_INIT_TEST_PORTS": str(tmp_path / "ports"),
        "VMRUN_INIT_TEST_DEV": str(tmp_path / "dev"),
    }
    result = run(init, tmp_path, example.replace(b"workdir /root\n", b"workdir /\n"), ports)
    assert (result.status, result.out) == (0, "hello, world\n\n")
