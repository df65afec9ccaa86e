"""Each step of the build fails as a BuildError that names the step, with the cause's
message: KVM, guest memory, packages, images, boot tables, devices."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from fake_machine import stand_in_for_kvm

from runner import builder
from runner.arch.x86_64.acpi import AcpiError
from runner.builder import BuildError
from runner.config.load import load
from runner.devices.bus import BusError
from runner.guest.debian import PackageError
from runner.guest.initramfs import GuestImageError
from runner.kvm.memory import GuestMemoryError
from runner.kvm.native import KvmError

VM = """
disable_implicit_console = true
serial_consoles = [{ output = "null" }]
[machine]
vcpu_count = 2
mem_size_mib = 128
split_irqchip = true
[workload]
exec = "/bin/true"
"""


def _raise(error: Exception) -> Callable[..., None]:
    def raise_it(*_args: object, **_kwargs: object) -> None:
        raise error

    return raise_it


Inject = Callable[[pytest.MonkeyPatch, mock.MagicMock], None]


def _kvm_call(name: str, error: Exception) -> Inject:
    """The stand-in Kvm's call `name` (`vm.NAME`: its Vm's) fails with `error`."""

    def inject(_patch: pytest.MonkeyPatch, kvm: mock.MagicMock) -> None:
        target = kvm.create_vm.return_value if name.startswith("vm.") else kvm
        getattr(target, name.removeprefix("vm.")).side_effect = error

    return inject


def _patch(name: str, error: Exception) -> Inject:
    """The function at `name` fails with `error`."""
    return lambda patch, _kvm: patch.setattr(name, _raise(error))


EINVAL = errno.EINVAL
# (step named in the message, how the failure is injected, the cause's message)
STEPS = [
    ("opening /dev/kvm", _patch("runner.builder.Kvm", KvmError("open /dev/kvm", errno.ENOENT)),
     "open /dev/kvm: No such file or directory"),
    ("creating the VM", _kvm_call("create_vm", KvmError("KVM_CREATE_VM", EINVAL)),
     "KVM_CREATE_VM: Invalid argument"),
    ("creating the interrupt controller",
     _kvm_call("vm.enable_split_irqchip", KvmError("KVM_ENABLE_CAP", EINVAL)),
     "KVM_ENABLE_CAP: Invalid argument"),
    ("setting up guest memory",
     _kvm_call("vm.map_memory", KvmError("KVM_SET_USER_MEMORY_REGION", EINVAL)),
     "KVM_SET_USER_MEMORY_REGION: Invalid argument"),
    ("setting up guest memory",
     _patch("runner.builder.GuestMemory", GuestMemoryError("cannot map 128 MiB")),
     "cannot map 128 MiB"),
    ("loading the kernel",
     _patch("runner.builder.default_kernel", PackageError("cannot download the kernel")),
     "cannot download the kernel"),
    ("placing the initramfs",
     _patch("runner.guest.initramfs.base_image", GuestImageError("cannot build the init")),
     "cannot build the init"),
    ("writing the boot tables",
     _patch("runner.arch.x86_64.acpi.acpi_tables", AcpiError("too many vCPUs")),
     "too many vCPUs"),
    ("creating the vCPUs", _kvm_call("vm.create_vcpu", KvmError("KVM_CREATE_VCPU", EINVAL)),
     "KVM_CREATE_VCPU: Invalid argument"),
    ("attaching the devices",
     _patch("runner.devices.bus.IoBus.insert", BusError("ports 0x3f8+8 overlap")),
     "ports 0x3f8+8 overlap"),
    ("attaching the devices",
     _patch("runner.builder._output", OSError(errno.EACCES, "Permission denied", "/x.log")),
     "/x.log: Permission denied"),
]  # fmt: skip


@pytest.mark.parametrize(("step", "inject", "cause"), STEPS, ids=[s[2] for s in STEPS])
def test_a_failing_step_names_itself(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    inject: Inject,
    cause: str,
) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(VM)
    resources = load(str(path)).resources
    kvm = stand_in_for_kvm(monkeypatch, tmp_path)
    inject(monkeypatch, kvm)
    with pytest.raises(BuildError) as info:
        builder.build(resources, ["/bin/true"])
    assert str(info.value) == f"{step}: {cause}"


def test_the_stand_in_builds_when_nothing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(VM)
    stand_in_for_kvm(monkeypatch, tmp_path)
    machine = builder.build(load(str(path)).resources, ["/bin/true"])
    assert len(machine.vcpus) == 2
    machine.close()


def test_the_vm_is_closed_before_the_memory_it_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KVM must not find a memory slot's pages unmapped while the VM lives: the machine's
    # teardown closes the VM (its vCPUs with it) first, then unmaps guest memory.
    path = tmp_path / "vm.toml"
    path.write_text(VM)
    kvm = stand_in_for_kvm(monkeypatch, tmp_path)
    closed: list[str] = []
    vm = kvm.create_vm.return_value
    vm.__exit__.side_effect = lambda *_: closed.append("vm")
    real_close = builder.GuestMemory.close

    def close_memory(memory: builder.GuestMemory) -> None:
        if not memory.closed:
            closed.append("memory")
        real_close(memory)

    monkeypatch.setattr(builder.GuestMemory, "close", close_memory)
    machine = builder.build(load(str(path)).resources, ["/bin/true"])
    assert closed == []
    machine.close()
    assert closed == ["vm", "memory"]
