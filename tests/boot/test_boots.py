"""Real boots: vmrun runs a VM file on KVM and exits with what the guest did.

Marked `boot`: where /dev/kvm cannot boot Linux, these run inside the emulated host.
Each boots the default guest kernel with vmrun's init and busybox as the root.
"""

from __future__ import annotations

import array
import fcntl
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.boot

VM = """\
disable_implicit_console = true
serial_consoles = [{{ output = "stdout" }}]

[machine]
vcpu_count = {vcpus}
mem_size_mib = {mem}
{extra}
"""


def vm_file(tmp_path: Path, vcpus: int = 1, mem: int = 256, extra: str = "") -> str:
    path = tmp_path / "vm.toml"
    path.write_text(VM.format(vcpus=vcpus, mem=mem, extra=extra))
    return str(path)


def vmrun(vm: str, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", vm, "--", *argv],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["/bin/sh", "-c", "exit 0"], 0),
        (["/bin/sh", "-c", "exit 1"], 1),
        (["/bin/sh", "-c", "echo forty-two; exit 42"], 42),
        (["/vmrun/config"], 126),  # a file that is not executable
        (["/no/such/program"], 127),
        (["/bin/sh", "-c", "kill -9 $$"], 137),
    ],
    ids=["0", "1", "42", "126-not-executable", "127-not-found", "137-killed"],
)
def test_exit_status_is_the_workloads(tmp_path: Path, argv: list[str], status: int) -> None:
    result = vmrun(vm_file(tmp_path), *argv)
    assert result.returncode == status, result.stderr
    assert result.stderr == "" or status in (126, 127), result.stderr
    if status == 42:
        assert result.stdout == "forty-two\n"


@pytest.mark.parametrize(("vcpus", "mem"), [(1, 128), (2, 512), (4, 2048)])
def test_the_guest_sees_its_vcpus_and_memory(tmp_path: Path, vcpus: int, mem: int) -> None:
    script = "nproc; grep MemTotal /proc/meminfo"
    result = vmrun(vm_file(tmp_path, vcpus, mem), "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    cpus_line, mem_line = result.stdout.split("\n")[:2]
    assert int(cpus_line) == vcpus
    total_kib = int(mem_line.split()[1])
    # MemTotal is RAM less the kernel's image and reservations (about 35 MiB for the cloud
    # kernel) and its page structures (1/64 of RAM): never more than the VM has, and all but
    # that of it.
    reserved_kib = 48 * 1024 + mem * 1024 // 32
    assert mem * 1024 - reserved_kib < total_kib <= mem * 1024


def test_output_reaches_stdout_whole_and_as_written(tmp_path: Path) -> None:
    # With several vCPUs the UART sends from interrupts on another vCPU while the workload
    # exits: its exit must neither end the VM before the console drains nor flush it. And
    # the console does not turn "\n" into "\r\n": the bytes are the workload's. 2000 lines
    # (8.9 KB) overflow the tty's 4 KiB transmit buffer, so the workload also waits for room;
    # more only costs time, and this test's exits and interrupts are what has crashed the
    # emulated host's own kernel in CI (see docs/architecture.md).
    script = "seq 1 2000; printf end"
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", vm_file(tmp_path, vcpus=2),
         "--", "/bin/sh", "-c", script],
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(b"%d\n" % n for n in range(1, 2001)) + b"end"


def test_serial_input_from_stdin_and_from_a_file(tmp_path: Path) -> None:
    # ttyS0 reads vmrun's stdin (a pipe here), ttyS1 a file beside the VM file. The guest's
    # tty echoes what it reads on ttyS0, as a serial line's would.
    (tmp_path / "typed.txt").write_text("from a file\n")
    vm = tmp_path / "vm.toml"
    vm.write_text(
        VM.format(vcpus=2, mem=256, extra="").replace(
            '[{ output = "stdout" }]',
            '[{ input = "stdin", output = "stdout" }, { input = "typed.txt", output = "null" }]',
        )
    )
    script = 'read a; read b < /dev/ttyS1; echo "[$a] [$b]"'
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", str(vm),
         "--", "/bin/sh", "-c", script],
        input="hello\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[hello] [from a file]"


def test_split_irqchip_sends_the_serial_interrupts_through_vmrun_s_ioapic(tmp_path: Path) -> None:
    # Local APICs in KVM, the I/O APIC in vmrun: the console's output is interrupt-driven
    # (THRE), so all of it arriving says the I/O APIC's messages reach the guest, and the
    # UART's line in /proc/interrupts is on the IO-APIC, pin 4, and has fired.
    # The virtio-rng's interrupt, which its native worker raises on an eventfd, reaches the
    # guest the same way, relayed by a thread of vmrun: on pin 5, once the guest has read it.
    vm = vm_file(tmp_path, vcpus=2, extra="split_irqchip = true\n")
    script = "head -c 64 /dev/hwrng | wc -c; cat /proc/interrupts; echo done"
    result = vmrun(vm, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("64\n"), result.stdout
    assert result.stdout.endswith("\ndone\n"), result.stdout
    for name, expected_pin in (("ttyS0", "4-edge"), ("virtio0", "5-edge")):
        line = next(line for line in result.stdout.splitlines() if line.endswith(f" {name}"))
        _irq, cpu0, cpu1, chip, pin, *_ = line.split()
        assert (chip, pin) == ("IO-APIC", expected_pin), line
        assert int(cpu0) + int(cpu1) > 0, line


def test_the_implicit_virtio_rng_gives_the_guest_random_bytes(tmp_path: Path) -> None:
    # Found once (from the DSDT: this kernel has no virtio_mmio.device= support), bound to
    # virtio_rng (the init loaded the modules), the hwrng core's current source, and
    # /dev/hwrng reads give host randomness: 2 x 64 bytes that differ.
    script = (
        "ls /sys/bus/virtio/devices; cat /sys/bus/virtio/devices/*/device;"
        "cat /sys/class/misc/hw_random/rng_current;"
        "for i in 1 2; do head -c 64 /dev/hwrng | od -An -v -tx1 | tr -d ' \\n'; echo; done"
    )
    result = vmrun(vm_file(tmp_path), "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    *devices, current, first, second = result.stdout.split()
    # virtio0 the rng, virtio1 the implicit balloon (device 5), in the DSDT's order.
    expected = ["virtio0", "virtio1", "0x0004", "0x0005"]
    assert (devices, current) == (expected, "virtio_rng.0"), result.stdout
    assert len(first) == len(second) == 128, result.stdout
    assert first != second and len(set(first)) > 4, result.stdout


def test_smbios_oem_strings_reach_the_guest(tmp_path: Path) -> None:
    # Linux finds the SMBIOS 3.0 entry point in the 0xF0000 segment (no BIOS, no EFI): the
    # type 11 structure's raw bytes hold the strings in order, and types 0 and 1 name vmrun.
    strings = ["io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888", "two words", "ünï"]
    vm = tmp_path / "vm.toml"
    vm.write_text(
        f"smbios_oem_strings = {strings!r}\n".replace("'", '"')
        + VM.format(vcpus=1, mem=256, extra="")
    )
    script = (
        "cat /sys/class/dmi/id/bios_vendor /sys/class/dmi/id/sys_vendor "
        "/sys/class/dmi/id/product_name; od -An -tx1 -v /sys/firmware/dmi/entries/11-0/raw"
    )
    result = vmrun(str(vm), "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["vmrun", "vmrun", "vmrun microVM"]
    raw = bytes.fromhex("".join(lines[3:]))
    kind, length, _handle, count = raw[0], raw[1], raw[2:4], raw[4]
    assert (kind, length, count) == (11, 5, len(strings))
    assert raw[length:] == b"".join(s.encode() + b"\0" for s in strings) + b"\0"


def test_a_kernel_panic_ends_the_vm(tmp_path: Path) -> None:
    result = vmrun(vm_file(tmp_path), "/bin/sh", "-c", "echo c > /proc/sysrq-trigger")
    assert result.returncode == 125
    assert "vmrun: the guest rebooted (a kernel panic reboots, with panic=-1)" in result.stderr


def test_a_guest_reboot_ends_the_vm(tmp_path: Path) -> None:
    result = vmrun(vm_file(tmp_path), "/bin/reboot", "-f")
    assert result.returncode == 125
    assert "vmrun: the guest rebooted" in result.stderr


def test_a_triple_fault_ends_the_vm(tmp_path: Path) -> None:
    # reboot=t makes the kernel reboot by triple-faulting: KVM_EXIT_SHUTDOWN.
    vm = vm_file(tmp_path, extra='[kernel_cmdline]\nepilog = "reboot=t"\n')
    result = vmrun(vm, "/bin/reboot", "-f")
    assert result.returncode == 125
    assert "vmrun: the guest triple-faulted (KVM_EXIT_SHUTDOWN on vCPU 0)" in result.stderr


def test_an_elf_vmlinux_boots_through_its_pvh_entry(tmp_path: Path, pvh_vmlinux: Path) -> None:
    # The default kernel's own vmlinux, which carries the PVH note. Its boot_params are then
    # the ones Linux's PVH code fills from the hvm_start_info: protocol 2.12 and loader type
    # 0xb0 (PVH, not Xen), where a zero page from vmrun would say 0xff. nproc shows that it
    # found the ACPI tables through rsdp_paddr, MemTotal that it read the memory map.
    script = (
        "cat /sys/kernel/boot_params/version; od -An -tx1 -j 528 -N1 /sys/kernel/boot_params/data;"
        " nproc; grep MemTotal /proc/meminfo; echo pvh; exit 7"
    )
    extra = f'[kernel]\npath = "{pvh_vmlinux}"\nformat = "elf"\n'
    result = vmrun(vm_file(tmp_path, vcpus=2, mem=256, extra=extra), "/bin/sh", "-c", script)
    assert result.returncode == 7, result.stderr
    version, loader, cpus, mem_line, said = result.stdout.split("\n")[:5]
    assert (version, loader.strip(), cpus, said) == ("0x020c", "b0", "2", "pvh")
    total_kib = int(mem_line.split()[1])
    assert 256 * 1024 - (48 + 256 // 32) * 1024 < total_kib <= 256 * 1024


def test_a_corrupt_kernel_is_a_clear_error(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + bytes(range(256)) * 16)  # no image inside
    vm = vm_file(tmp_path, extra=f'[kernel]\npath = "{kernel}"\n')
    result = vmrun(vm, "/bin/true")
    assert result.returncode == 125
    assert result.stderr.startswith(f"vmrun: loading the kernel: {kernel}: ")
    assert "Traceback" not in result.stderr


def test_a_missing_initramfs_is_a_clear_error(tmp_path: Path) -> None:
    vm = vm_file(tmp_path, extra='[kernel]\ninitramfs = "missing.cpio"\n')
    result = vmrun(vm, "/bin/true")
    assert result.returncode == 125
    assert f"kernel.initramfs: no such file: {tmp_path / 'missing.cpio'}" in result.stderr


def test_ctrl_c_stops_a_running_vm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", vm_file(tmp_path),
         "--", "/bin/sh", "-c", "echo up; sleep 600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    # Within a second on a host's KVM; the room is for the emulated host on a loaded machine
    # (what is tested is that it stops at all, not after the workload's 600 s).
    assert proc.wait(timeout=60) == 130
    assert time.monotonic() - start < 30
    assert proc.stderr is not None
    assert "vmrun: stopped by SIGINT" in proc.stderr.read()


def test_kernel_messages_stay_off_the_workload_s_console(tmp_path: Path) -> None:
    # The serial console that carries the workload's output is also the kernel's console.
    # A VMM that the host does not run for a while (a loaded machine, the emulated host, a
    # stopped process: here SIGSTOP for 30 s) is what a guest's soft-lockup watchdog reports,
    # at emergency level, in the middle of that output; nowatchdog in vmrun's prolog turns
    # that watchdog off. A kernel message below emergency level (here an error) stays in the
    # kernel's log (loglevel=1).
    script = (
        "echo ready; sleep 40; echo '<3>vmrun-test: an error' > /dev/kmsg; "
        "dmesg | grep -c vmrun-test; cat /proc/sys/kernel/watchdog"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "--host", "kvm", vm_file(tmp_path),
         "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGSTOP)
    time.sleep(30)
    proc.send_signal(signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert (stdout, stderr) == ("1\n0\n", "")


@pytest.mark.parametrize("console", ["serial", "virtio"])
def test_a_stdout_reader_that_stops_does_not_make_vmrun_unkillable(
    tmp_path: Path, console: str
) -> None:
    # The workload floods the console; nobody reads vmrun's stdout, so the pipe fills. The
    # vCPU that writes the UART must not block on it (the virtio console's worker holds the
    # guest back instead), and vmrun, stopped, does not wait for the reader to take what is
    # still buffered: SIGTERM ends vmrun at once.
    vm = vm_file(tmp_path)
    if console == "virtio":  # the implicit console: the workload's stdout is a port
        Path(vm).write_text(VM.format(vcpus=1, mem=256, extra="").split("\n", 2)[2])
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # one page: it fills soon, even emulated
    errors = tmp_path / "stderr"
    with open(errors, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", "--host", "kvm", vm,
             "--", "/bin/sh", "-c", "yes flood"],
            stdout=write_end, stderr=stderr,
        )  # fmt: skip
    os.close(write_end)
    try:
        # Full: the pipe holds output that no longer grows (the writer's next batch does not
        # fit), while the guest writes on into vmrun's bounded buffer.
        deadline, seen = time.monotonic() + 240, [-1, -2]
        while not (seen[-1] == seen[-2] > 0) and time.monotonic() < deadline:
            assert proc.poll() is None, errors.read_text()
            time.sleep(2)
            seen.append(_unread(read_end))
        assert seen[-1] == seen[-2] > 0, f"the guest's flood never filled the pipe: {seen}"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 30
    finally:
        proc.kill()
        os.close(read_end)
    assert errors.read_text().endswith("vmrun: stopped by SIGTERM\n"), errors.read_text()


def _unread(fd: int) -> int:
    buffer = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buffer)
    return buffer[0]
