"""The boot MSRs: indices and values as msr-index.h and Firecracker's msr.rs have them."""

from __future__ import annotations

from runner.arch.x86_64.msrs import Msr, boot_msrs


def test_boot_msrs() -> None:
    assert {int(index): value for index, value in boot_msrs().items()} == {
        0x174: 0,  # IA32_SYSENTER_CS
        0x175: 0,  # IA32_SYSENTER_ESP
        0x176: 0,  # IA32_SYSENTER_EIP
        0xC000_0081: 0,  # STAR
        0xC000_0083: 0,  # CSTAR
        0xC000_0102: 0,  # KERNEL_GS_BASE
        0xC000_0084: 0,  # SYSCALL_MASK (FMASK)
        0xC000_0082: 0,  # LSTAR
        0x10: 0,  # IA32_TSC
        0x1A0: 0x1,  # IA32_MISC_ENABLE: fast strings
        0x2FF: 0x806,  # MTRRdefType: enabled, default type write-back
    }


def test_names() -> None:
    msrs = boot_msrs()
    assert [m.name for m in msrs][:3] == [
        "IA32_SYSENTER_CS",
        "IA32_SYSENTER_ESP",
        "IA32_SYSENTER_EIP",
    ]
    assert Msr(0x2FF) is Msr.IA32_MTRR_DEF_TYPE
    assert len(msrs) == len(Msr)
