"""Every error reaches the user as one `vmrun: ...` line and the command's failure status:
each error type injected into each command, in process, and a vmrun bug as a one-line
report with its traceback in a file."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import cli
from runner.boot.krunfw import KrunfwError
from runner.boot.loader import KernelImageError
from runner.builder import BuildError
from runner.devices.bus import BusError
from runner.emulated.host import HarnessError
from runner.guest.debian import PackageError
from runner.guest.initramfs import GuestImageError
from runner.host_kvm import KvmStatus
from runner.kvm.memory import GuestMemoryError
from runner.kvm.native import KvmError

ROOT = Path(__file__).resolve().parents[1]
DEV = str(ROOT / "configs" / "dev.toml")

ERRORS: dict[str, Exception] = {
    "package": PackageError("cannot download linux-image-cloud-amd64: no network"),
    "image": GuestImageError("cannot build the guest init: gcc failed"),
    "build": BuildError("creating the vCPUs: KVM_CREATE_VCPU: Invalid argument"),
    "kvm": KvmError("KVM_CREATE_IRQCHIP", errno.EINVAL),
    "memory": GuestMemoryError("0x1000+16 is outside guest memory"),
    "bus": BusError("ports 0x3f8+8 overlap ports 0x3f8+8"),
    "harness": HarnessError("writable directory /nowhere does not exist"),
    "kernel": KernelImageError("vmlinuz: not a kernel image"),
    "krunfw": KrunfwError("libkrunfw.so.5 is not installed on this host"),
    "io": OSError(errno.EACCES, "Permission denied", "/var/cache/vmrun"),
}
MESSAGES = {
    **{name: f"vmrun: {error}" for name, error in ERRORS.items()},
    "kvm": "vmrun: KVM_CREATE_IRQCHIP: Invalid argument",
    "io": "vmrun: /var/cache/vmrun: Permission denied",
}

# Each command, with where its work starts (the function an error is raised from).
COMMANDS: dict[str, tuple[list[str], str, int]] = {
    "validate": (["validate", DEV], "runner.config.load.load", 1),
    "show": (["show", DEV], "runner.config.load.load", 1),
    "schema": (["schema"], "runner.config.schema.schema_text", 1),
    "run: loading": (["run", DEV], "runner.config.load.load", 125),
    "run: provisioning": (
        ["run", "--host", "emulated", DEV],
        "runner.guest.provision.provision_guest",
        125,
    ),
    "run: emulated host": (
        ["run", "--host", "emulated", DEV],
        "runner.emulated.delegate.run_in_emulated_host",
        125,
    ),
    "run: building": (["run", "--host", "kvm", DEV], "runner.builder.build", 125),
    "run: running": (["run", "--host", "kvm", DEV], "runner.vmm.run_machine", 125),
    "emulated-host": (["emulated-host", "--", "true"], "runner.emulated.image.provision", 125),
}


# What the steps before the injected one must do instead of their real work.
BEFORE: dict[str, dict[str, Callable[..., object]]] = {
    "run: emulated host": {"runner.guest.provision.provision_guest": lambda _resources: None},
    "run: running": {"runner.builder.build": lambda _resources, _argv: object()},
}


def _raiser(error: BaseException) -> Callable[..., None]:
    def raise_it(*_args: object, **_kwargs: object) -> None:
        raise error

    return raise_it


@pytest.fixture(autouse=True)
def usable_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    # `--host kvm` must get as far as the build on any host (nothing is booted here).
    monkeypatch.setattr("runner.host_kvm.kvm_status", lambda *_: KvmStatus(True, "/dev/kvm (test)"))


@pytest.mark.parametrize("error", ERRORS, ids=list(ERRORS))
@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_an_error_is_one_line_and_the_commands_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, error: str
) -> None:
    argv, where, status = COMMANDS[command]
    for name, stand_in in BEFORE.get(command, {}).items():
        monkeypatch.setattr(name, stand_in)
    monkeypatch.setattr(where, _raiser(ERRORS[error]))
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    assert err == MESSAGES[error] + "\n"


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_a_vmrun_bug_is_one_line_with_the_traceback_in_a_file(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
) -> None:
    argv, where, status = COMMANDS[command]
    monkeypatch.setenv("VMRUN_CACHE", str(tmp_path))
    monkeypatch.delenv("VMRUN_DEBUG", raising=False)
    for name, stand_in in BEFORE.get(command, {}).items():
        monkeypatch.setattr(name, stand_in)
    monkeypatch.setattr(where, _raiser(ZeroDivisionError("a bug")))
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("vmrun: internal error (a vmrun bug): ZeroDivisionError: a bug; ")
    (report,) = (tmp_path / "bug-reports").iterdir()
    assert f"its traceback is in {report} (VMRUN_DEBUG=1 shows it here)" in err
    text = report.read_text()
    assert text.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: a bug" in text
    assert report.stat().st_mode & 0o077 == 0  # only the user reads it


def test_vmrun_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VMRUN_DEBUG", "1")
    monkeypatch.setattr("runner.config.load.load", _raiser(ZeroDivisionError("a bug")))
    assert cli.main(["show", DEV]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("vmrun: internal error (a vmrun bug): ZeroDivisionError: a bug\n")


def test_a_refused_file_is_refused_before_the_emulated_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Refusals (here a virtio-net interface, not built yet) come before any host is booted.
    vm = tmp_path / "vm.toml"
    vm.write_text(
        '[[net]]\nid = "n"\nbackend = { type = "tap", tap_name = "tap0" }\n'
        + '[workload]\nexec = "/bin/true"\n'
    )
    monkeypatch.setattr(
        "runner.guest.provision.provision_guest", _raiser(AssertionError("provisioned"))
    )
    assert cli.main(["run", "--host", "emulated", str(vm)]) == 125
    assert ": net: virtio-net is not built yet" in capsys.readouterr().err


@pytest.mark.parametrize("error", ERRORS, ids=list(ERRORS))
def test_an_error_inside_the_emulated_host_is_one_line_and_125(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    error: str,
) -> None:
    # The vmrun inside runs the VM the outside prepared; its errors end the same way.
    from runner.config.load import load
    from runner.emulated import inside, prepared_vm

    prepared = prepared_vm.write(load(DEV).resources, str(tmp_path))
    monkeypatch.setattr("runner.builder.build", _raiser(ERRORS[error]))
    assert inside.main([prepared]) == 125
    assert capsys.readouterr().err == MESSAGES[error] + "\n"


def test_a_damaged_prepared_vm_is_one_line_and_125(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from runner.emulated import inside

    (tmp_path / "vm.pickle").write_bytes(b"\x80\x05junk")
    assert inside.main([str(tmp_path / "vm.pickle"), "--", "true"]) == 125
    err = capsys.readouterr().err
    assert err.startswith(f"vmrun: {tmp_path / 'vm.pickle'}: not a VM prepared by vmrun (")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv", [[], ["a", "b"], ["a", "--"], ["--timings"]], ids=["none", "two", "empty-cmd", "flag"]
)
def test_the_inside_entry_says_its_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from runner.emulated import inside

    assert inside.main(argv) == 2
    assert capsys.readouterr().err.startswith("usage: python -m runner.emulated.inside PREPARED")
