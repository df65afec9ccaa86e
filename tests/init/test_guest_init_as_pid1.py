"""vmrun's guest init in its real mode, as PID 1 of new namespaces instead of a guest.

`unshare --user --pid --mount ...` makes the init PID 1 with root's powers over its own
namespaces only: its mounts stay in its mount namespace, ioperm fails (that needs the host's
CAP_SYS_RAWIO, so no port is written and the init says the exit status on stderr), and its
power-off ends only its PID namespace (the kernel kills a namespace's init with SIGINT).
Mounting devtmpfs is refused there too, so the init's /dev lacks device nodes. Where user
namespaces are not allowed, these tests are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from guest_init_config import render, workload

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--uts",
           "--net", "--ipc"]  # fmt: skip
HOST_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
POWERED_OFF = -signal.SIGINT  # unshare kills itself with the signal that killed its child


def _namespaces_usable() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1) here"
    probe = subprocess.run(
        [*UNSHARE, "true"], capture_output=True, text=True, check=False, timeout=60
    )
    if probe.returncode != 0:
        return f"user namespaces are not usable here: {probe.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif((why := _namespaces_usable()) is not None, reason=why or "")


@pytest.fixture
def root(tmp_path: Path, init: Path) -> Path:
    """A root for the init: /init, and the host's programs bound in by `boot`."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(init, root / "init")
    (root / "vmrun").mkdir()
    return root


def boot(root: Path, config: list[tuple[str, str]], before: str = "") -> tuple[int, str, str]:
    """Runs /init of `root` as PID 1 (the host's /usr, /bin, ... bound into `root`), after the
    shell command `before`, if any."""
    (root / "vmrun" / "config").write_bytes(render(config))
    binds = []
    for name in HOST_DIRS:
        host = Path("/") / name
        if host.is_symlink():
            (root / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            (root / name).mkdir()
            binds.append(f"mount --rbind {host} {root / name}")
    script = "set -e; " + "; ".join([*binds, *([before] if before else [])])
    script += f"; exec chroot {root} /init"
    done = subprocess.run(
        [*UNSHARE, "sh", "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


def reported(err: str) -> int:
    match = re.search(r"vmrun-init: exit status (\d+) \(no exit port", err)
    assert match, err
    return int(match[1])


def test_basics_config_and_workload(root: Path) -> None:
    script = (
        "echo $FOO; pwd; hostname; ulimit -n; echo pid $$; "
        "cat /sys/class/net/lo/flags; cut -d' ' -f2,3 /proc/mounts; "
        "sleep 1000 </dev/null >/dev/null 2>&1 & exit 7"
    )
    status, out, err = boot(
        root,
        workload(
            "sh", "-c", script, env={"FOO": "bar"}, workdir="/tmp", rlimits={"nofile": (99, 99)},
            hostname="guest-one",
        ),
    )  # fmt: skip
    assert status == POWERED_OFF, err
    assert reported(err) == 7
    lines = out.splitlines()
    assert lines[:4] == ["bar", "/tmp", "guest-one", "99"]
    assert lines[4].startswith("pid ") and lines[4] != "pid 1"  # a child of the init
    assert int(lines[5], 16) & 1, "loopback up (IFF_UP)"
    for mount in ("/proc proc", "/sys sysfs", "/run tmpfs", "/tmp tmpfs", "/dev/pts devpts",
                  "/dev/shm tmpfs"):  # fmt: skip
        assert mount in lines
    # the leftover `sleep 1000` was killed: the run did not wait for it


def test_the_workload_leads_a_process_group_in_the_inits_session(root: Path) -> None:
    # Not a session of its own: a session leader's exit would hang the console up and lose
    # the output the UART had not sent (native/init/README.md).
    script = "read pid comm state ppid pgrp sid rest < /proc/$$/stat; echo $pid $pgrp $sid"
    status, out, err = boot(root, workload("sh", "-c", script))
    assert status == POWERED_OFF, err
    pid, pgrp, sid = out.split()
    assert pgrp == pid != "1"
    assert sid == "1"
    assert "controlling terminal" not in err  # stdin is a pipe here: nothing to say
    assert reported(err) == 0


def test_missing_program_is_127(root: Path) -> None:
    status, _, err = boot(root, workload("/no/such/program"))
    assert status == POWERED_OFF
    assert reported(err) == 127


def test_missing_module_is_reported_and_boot_goes_on(root: Path) -> None:
    config = [("module", "/lib/modules/vmrun-none.ko"), *workload("true")]
    status, _, err = boot(root, config)
    assert status == POWERED_OFF
    assert "module /lib/modules/vmrun-none.ko: No such file or directory" in err
    assert reported(err) == 0


def test_root_mount_failure_is_125(root: Path) -> None:
    # a namespace may not mount virtiofs (and the host has no such share)
    status, _, err = boot(root, [("root", "fs"), ("root-tag", "nothere"), *workload("true")])
    assert status == POWERED_OFF
    assert "mount virtiofs nothere on /newroot" in err
    assert reported(err) == 125


def test_switch_root(root: Path) -> None:
    # a tmpfs as the `block` root: the switch works, and the new root is empty, so the
    # workload that the old root had is not found there
    config = [
        *[("root", "block"), ("root-device", "none"), ("root-fstype", "tmpfs")],
        *[("root-options", "mode=0755,nosuid"), *workload("/bin/sh", "-c", "exit 0")],
    ]
    status, _, err = boot(root, config)
    assert status == POWERED_OFF
    assert "switch to the root" not in err and "move " not in err, err
    assert "cannot run /bin/sh: No such file or directory" in err
    assert reported(err) == 127


CONSOLE_SCRIPT = (
    "echo out; echo err >&2; read pid comm state ppid pgrp sid rest < /proc/$$/stat; echo $sid"
)


def test_console_is_the_inits_and_the_workloads_stdio(root: Path) -> None:
    # A regular file for the console (the namespace has no devtmpfs to make an hvc0 in): no
    # terminal, so nothing to say about a controlling terminal, but the session is the init's.
    console = root / "console"
    console.touch()
    status, out, err = boot(root, [("console", "/console"), *workload("sh", "-c", CONSOLE_SCRIPT)])
    assert status == POWERED_OFF, err
    assert out == ""
    assert "ioperm" in err  # said before the console was taken
    said = console.read_text()
    assert said.splitlines()[:3] == ["out", "err", "1"]
    assert "controlling terminal" not in said + err
    assert reported(said) == 0  # the init's own messages are on its console


def test_console_that_appears_late_is_waited_for(root: Path) -> None:
    console = root / "console"
    status, _, err = boot(
        root,
        [("console", "/console"), *workload("echo", "late")],
        before=f"(sleep 0.5; touch {console}) & true",
    )
    assert status == POWERED_OFF, err
    assert console.read_text().startswith("late\n")
    assert reported(console.read_text()) == 0


def test_console_that_never_appears_is_125(root: Path) -> None:
    status, out, err = boot(root, [("console", "/nothere"), *workload("echo", "ran")])
    assert status == POWERED_OFF
    assert "vmrun-init: console /nothere: No such file or directory (waited 5000 ms)" in err
    assert "ran" not in out
    assert reported(err) == 125
