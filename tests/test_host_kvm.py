"""Detection of a /dev/kvm that can boot Linux, on fake /dev, /sys and /proc trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.host_kvm import HostChoiceError, KvmStatus, choose_host, kvm_status


def host(tmp_path: Path, *, kvm: bool = True, pvm: bool = False, flags: str = "fpu sse2") -> str:
    (tmp_path / "dev").mkdir()
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys" / "module" / "kvm").mkdir(parents=True)
    if kvm:
        (tmp_path / "dev" / "kvm").touch()
    if pvm:
        (tmp_path / "sys" / "module" / "kvm_pvm").mkdir()
    cpu = f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    (tmp_path / "proc" / "cpuinfo").write_text(cpu)
    return str(tmp_path)


def test_pvm_is_not_usable(tmp_path: Path) -> None:
    # This machine's case: /dev/kvm exists, the CPU has no vmx/svm, kvm_pvm is loaded.
    status = kvm_status(host(tmp_path, pvm=True))
    assert not status.usable
    assert status.reason == "/dev/kvm is PVM (kvm_pvm), which cannot boot a standard Linux kernel"


def test_pvm_is_not_usable_even_with_svm_flags(tmp_path: Path) -> None:
    assert not kvm_status(host(tmp_path, pvm=True, flags="fpu svm")).usable


@pytest.mark.parametrize(("flags", "kind"), [("fpu svm sse2", "svm"), ("fpu vmx sse2", "vmx")])
def test_hardware_virtualization_is_usable(tmp_path: Path, flags: str, kind: str) -> None:
    status = kvm_status(host(tmp_path, flags=flags))
    assert status.usable
    assert status.reason == f"/dev/kvm with {kind}"


def test_no_device(tmp_path: Path) -> None:
    status = kvm_status(host(tmp_path, kvm=False, flags="svm"))
    assert not status.usable
    assert status.reason == "/dev/kvm does not exist"


def test_no_virtualization_flags(tmp_path: Path) -> None:
    status = kvm_status(host(tmp_path))
    assert not status.usable
    assert status.reason == "the CPU has neither vmx nor svm (no hardware virtualization)"


def test_flag_names_are_whole_words(tmp_path: Path) -> None:
    # "svm_lock" or "vmx_ept" alone is not svm/vmx.
    assert not kvm_status(host(tmp_path, flags="svm_lock vmx_ept")).usable


USABLE = KvmStatus(True, "/dev/kvm with svm")
PVM = KvmStatus(False, "/dev/kvm is PVM (kvm_pvm), which cannot boot a standard Linux kernel")


@pytest.mark.parametrize(
    ("requested", "status", "chosen"),
    [
        ("auto", USABLE, "kvm"),
        ("auto", PVM, "emulated"),
        ("kvm", USABLE, "kvm"),
        ("emulated", USABLE, "emulated"),
        ("emulated", PVM, "emulated"),
    ],
)
def test_choose_host(requested: str, status: KvmStatus, chosen: str) -> None:
    assert choose_host(requested, status) == chosen


def test_kvm_requested_where_unusable() -> None:
    with pytest.raises(HostChoiceError) as info:
        choose_host("kvm", PVM)
    assert str(info.value) == (
        "--host kvm: /dev/kvm is PVM (kvm_pvm), which cannot boot a standard Linux kernel; "
        "use --host emulated (or auto)"
    )
