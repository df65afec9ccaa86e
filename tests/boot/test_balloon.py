"""The implicit virtio-balloon gives memory the guest freed back to the host.

Marked `boot`. The guest touches 256 MiB (busybox dd's buffer, filled from /dev/zero) and
holds it; vmrun's mapping of guest RAM then holds those pages. Once dd exits, the guest's
free page reporting (virtio_balloon with F_REPORTING: free 2 MiB blocks, about 2 s after
they are freed) hands them to the device, whose worker punches them out of the memfd, and
the mapping's resident size falls back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest_ram import guest_ram_kib, serial_console_vm

pytestmark = pytest.mark.boot

MIB = 1024  # in KiB, as /proc says
ALLOCATION = 256 * MIB
VM = serial_console_vm(512)
# dd reads 256 MiB of zeros into one buffer (every page touched), then blocks writing it to
# a pipe whose reader says "held" at the first byte and waits for the test before it drains:
# dd holds the buffer until then. Each `read` waits for a line from the test (fd 3: the
# console, which the pipeline's reader no longer has on its stdin).
SCRIPT = (
    "echo start; read go; exec 3<&0; "
    "dd if=/dev/zero bs=256M count=1 2>/dev/null | "
    "{ head -c 1 >/dev/null; echo held; read go <&3; cat >/dev/null; }; "
    "echo freed; read go; echo done"
)


def test_memory_the_guest_frees_goes_back_to_the_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = tmp_path / "vm.toml"
    vm.write_text(VM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", str(vm),
         "--", "/bin/sh", "-c", SCRIPT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    seen: list[str] = []

    def wait_for_line(marker: str) -> None:
        for line in proc.stdout:  # the tty echoes each "go" too
            seen.append(line)
            if line.strip() == marker:
                return
        raise AssertionError(f"no {marker!r} from the guest: {seen[-10:]}")

    def go() -> None:
        proc.stdin.write("go\n")
        proc.stdin.flush()

    try:
        wait_for_line("start")
        before = guest_ram_kib(proc.pid)
        go()
        wait_for_line("held")
        held = guest_ram_kib(proc.pid)
        go()
        wait_for_line("freed")
        # Reporting starts about 2 s after the free and goes a zone at a time; the emulated
        # host is slow and shared: wait until most of the allocation is back, at most 3 min.
        deadline = time.monotonic() + 180
        after = guest_ram_kib(proc.pid)
        while held - after < ALLOCATION * 3 // 4 and time.monotonic() < deadline:
            time.sleep(1)
            after = guest_ram_kib(proc.pid)
        settled = time.monotonic() - (deadline - 180)
        go()
        wait_for_line("done")
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    figures = (
        f"guest RAM resident: {before // MIB} MiB at the start, {held // MIB} MiB with the "
        f"allocation held, {after // MIB} MiB {settled:.0f} s after it was freed"
    )
    with capsys.disabled():
        print(f"\n{figures}", file=sys.stderr)
    assert status == 0, (stderr, seen[-10:])
    # The allocation was resident (most of it: the guest may reuse pages it had touched and
    # freed, not reported yet), and most of it left the host once freed. Pages in blocks the
    # guest does not report (below 2 MiB, or in use again) may stay: a quarter is left for
    # them. Measured: 113 MiB at the start, 349 held, 137 four seconds after the free.
    assert held - before >= ALLOCATION * 3 // 4, figures
    assert held - after >= ALLOCATION * 3 // 4, figures
