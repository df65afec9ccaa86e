"""The compiled bindings: version check, errno mapping, and that every layout and constant
Python sees is the C compiler's, not cffi's own arithmetic."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from runner.kvm.native import (
    NATIVE_VERSION,
    ExitReason,
    Ioctl,
    KvmError,
    NativeModuleError,
    check,
    check_version,
    ffi,
    ioctl,
    ioctl_val,
    native_version,
)

ROOT = Path(__file__).resolve().parents[2]
NATIVE_DIR = ROOT / "native" / "kvm"

# Every struct the cdef declares, by the name C knows it by.
STRUCTS = [
    "struct kvm_regs",
    "struct kvm_segment",
    "struct kvm_dtable",
    "struct kvm_sregs",
    "struct kvm_fpu",
    "struct kvm_msr_entry",
    "struct kvm_msrs",
    "struct kvm_msr_list",
    "struct kvm_cpuid_entry2",
    "struct kvm_cpuid2",
    "struct kvm_lapic_state",
    "struct kvm_pit_config",
    "struct kvm_userspace_memory_region",
    "struct kvm_irq_level",
    "struct kvm_irqfd",
    "struct kvm_ioeventfd",
    "struct kvm_enable_cap",
    "struct kvm_msi",
    "struct kvm_irq_routing_msi",
    "vmrun_irq_routing_u",
    "struct kvm_irq_routing_entry",
    "struct kvm_irq_routing",
    "struct kvm_run",
    "vmrun_run_hw",
    "vmrun_run_fail_entry",
    "vmrun_run_ex",
    "vmrun_run_io",
    "vmrun_run_mmio",
    "vmrun_run_hypercall",
    "vmrun_run_internal",
    "vmrun_run_system_event",
    "vmrun_run_msr",
    "vmrun_run_eoi",
    "struct vmrun_guest_region",
]


# ---- version ------------------------------------------------------------------------------


def test_compiled_module_has_the_expected_version() -> None:
    assert native_version() == NATIVE_VERSION


def test_version_mismatch_is_refused_with_how_to_rebuild() -> None:
    with pytest.raises(NativeModuleError, match=r"pip install -e \.") as info:
        check_version("vmrun-kvm 0")
    assert "'vmrun-kvm 0'" in str(info.value)
    assert isinstance(info.value, ImportError)
    check_version(NATIVE_VERSION)  # no error


def test_the_c_source_carries_the_version_python_expects() -> None:
    source = (NATIVE_DIR / "vmrun_kvm.c").read_text(encoding="utf-8")
    assert f'vmrun_kvm_version[] = "{NATIVE_VERSION}";' in source


# ---- errno mapping ------------------------------------------------------------------------


def test_check_passes_results_through() -> None:
    assert check("KVM_CREATE_VM", 0) == 0
    assert check("KVM_CREATE_VM", 7) == 7


@pytest.mark.parametrize("code", [errno.EINTR, errno.EINVAL, errno.ENOENT, errno.E2BIG])
def test_check_turns_minus_errno_into_kvm_error(code: int) -> None:
    with pytest.raises(KvmError) as info:
        check("KVM_SET_REGS", -code)
    error = info.value
    assert (error.op, error.errno, error.strerror) == ("KVM_SET_REGS", code, os.strerror(code))
    assert str(error) == f"KVM_SET_REGS: {os.strerror(code)}"


def test_kvm_error_without_errno_and_with_detail() -> None:
    plain = KvmError("KVM_GET_MSRS", None, "MSR 0x10 cannot be read")
    assert (plain.errno, plain.strerror) == (None, None)
    assert str(plain) == "KVM_GET_MSRS: MSR 0x10 cannot be read"
    both = KvmError("close vcpu", errno.EBUSY, "the vCPU is running")
    assert str(both) == f"close vcpu: the vCPU is running: {os.strerror(errno.EBUSY)}"


def test_ioctl_on_a_bad_fd_names_the_request_and_errno() -> None:
    with pytest.raises(KvmError) as info:
        ioctl(-1, Ioctl.GET_REGS, ffi.new("struct kvm_regs *"))
    assert (info.value.op, info.value.errno) == ("KVM_GET_REGS", errno.EBADF)


def test_ioctl_on_a_file_that_is_not_kvm() -> None:
    fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(KvmError) as info:
            ioctl_val(fd, Ioctl.GET_API_VERSION)
    finally:
        os.close(fd)
    assert (info.value.op, info.value.errno) == ("KVM_GET_API_VERSION", errno.ENOTTY)


# ---- constants and layouts come from the compiler -------------------------------------------


def test_ioctl_numbers_match_the_kernel_encoding() -> None:
    # _IO(KVMIO=0xAE, nr) = 0xAE00 | nr; _IOW/_IOR/_IOWR add direction and size bits.
    assert Ioctl.GET_API_VERSION == 0xAE00
    assert Ioctl.CREATE_VM == 0xAE01
    assert Ioctl.RUN == 0xAE80
    size = ffi.sizeof("struct kvm_userspace_memory_region")
    write_with_size = (1 << 30) | (size << 16) | 0xAE46  # _IOW(KVMIO, 0x46, ...)
    assert write_with_size == Ioctl.SET_USER_MEMORY_REGION


def test_exit_reasons_are_one_per_value() -> None:
    values = [reason.value for reason in ExitReason]
    assert len(values) == len(set(values)) == max(values) + 1  # 0..N, none missing
    assert (ExitReason.IO, ExitReason.HLT, ExitReason.MMIO) == (2, 5, 6)


def _load_builder():  # native/kvm/build.py, which is not part of the package
    spec = importlib.util.spec_from_file_location("vmrun_kvm_build", NATIVE_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layout_lines() -> list[tuple[str, str]]:
    """(label, C expression printing 'offset size') for every field of every declared struct,
    and the size of each struct."""
    lines = []
    for name in STRUCTS:
        lines.append((f"{name}", f"0, sizeof({name})"))
        for field_name, field in ffi.typeof(name).fields:
            flexible = field.type.kind == "array" and field.type.length is None
            size = "0" if flexible else f"sizeof((({name} *)0)->{field_name})"
            lines.append((f"{name}.{field_name}", f"offsetof({name}, {field_name}), {size}"))
    return lines


def _python_layout() -> dict[str, tuple[int, int]]:
    found = {}
    for name in STRUCTS:
        found[name] = (0, ffi.sizeof(name))
        for field_name, field in ffi.typeof(name).fields:
            flexible = field.type.kind == "array" and field.type.length is None
            size = 0 if flexible else ffi.sizeof(field.type)
            found[f"{name}.{field_name}"] = (field.offset, size)
    return found


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_every_declared_layout_is_the_compilers(tmp_path: Path) -> None:
    """Compile a separate program against <linux/kvm.h> and compare each struct size, field
    offset and field size with what the cffi module uses."""
    builder = _load_builder()
    program = [builder.PREAMBLE, "#include <stdio.h>", "#include <stddef.h>", "int main(void) {"]
    for label, expression in _layout_lines():
        program.append(f'    printf("%s %zu %zu\\n", "{label}", {expression});')
    program.append("    return 0;\n}\n")
    source = tmp_path / "layout.c"
    source.write_text("\n".join(program), encoding="utf-8")
    binary = tmp_path / "layout"
    subprocess.run(
        [
            "gcc",
            f"-I{NATIVE_DIR}",
            f"-I{NATIVE_DIR.parent / 'virtio'}",
            "-o",
            str(binary),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    output = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    from_c = {}
    for line in output.splitlines():
        label, offset, size = line.rsplit(" ", 2)
        from_c[label] = (int(offset), int(size))
    assert from_c == _python_layout()
    assert len(from_c) > 150  # the comparison covered the declarations


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_c_helpers_compile_cleanly_with_all_warnings() -> None:
    subprocess.run(
        ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]
        + [str(NATIVE_DIR / "vmrun_kvm.c")],
        check=True,
    )


def test_the_header_is_the_cdef() -> None:
    builder = _load_builder()
    header = (NATIVE_DIR / "vmrun_kvm.h").read_text(encoding="utf-8")
    cdef = builder.header_cdef(header)
    assert "#" not in "".join(line.lstrip()[:1] for line in cdef.splitlines())
    for name in ("vmrun_kvm_run", "vmrun_guest_ptr", "vmrun_kvm_ioctl", "vmrun_kvm_version"):
        assert name in cdef
