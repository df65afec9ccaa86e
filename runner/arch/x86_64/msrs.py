"""The MSRs each vCPU gets with KVM_SET_MSRS before its first KVM_RUN.

Facts (Intel SDM vol. 4 "Model-Specific Registers"; Linux arch/x86/include/asm/msr-index.h;
Firecracker arch/x86_64/msr.rs create_boot_msr_entries):

- The SYSENTER and SYSCALL MSRs, KERNEL_GS_BASE and the TSC are zeroed so every vCPU starts
  from the same known state (the kernel programs the system-call MSRs itself).
- IA32_MISC_ENABLE bit 0 enables fast-string operation (REP MOVS/STOS in larger chunks);
  Linux expects firmware to have set it and warns when it is off.
- IA32_MTRR_DEF_TYPE: bit 11 enables the MTRRs, bits 7:0 the default memory type for ranges
  no variable MTRR covers; 6 is write-back. With MTRRs off all memory would be uncached.
"""

from __future__ import annotations

import enum


class Msr(enum.IntEnum):
    IA32_TSC = 0x10
    IA32_SYSENTER_CS = 0x174
    IA32_SYSENTER_ESP = 0x175
    IA32_SYSENTER_EIP = 0x176
    IA32_MISC_ENABLE = 0x1A0
    IA32_MTRR_DEF_TYPE = 0x2FF
    STAR = 0xC000_0081
    LSTAR = 0xC000_0082
    CSTAR = 0xC000_0083
    SYSCALL_MASK = 0xC000_0084
    KERNEL_GS_BASE = 0xC000_0102


MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRITE_BACK = 6


def boot_msrs() -> dict[Msr, int]:
    """MSR index -> value, in the order Firecracker writes them."""
    return {
        Msr.IA32_SYSENTER_CS: 0,
        Msr.IA32_SYSENTER_ESP: 0,
        Msr.IA32_SYSENTER_EIP: 0,
        Msr.STAR: 0,
        Msr.CSTAR: 0,
        Msr.KERNEL_GS_BASE: 0,
        Msr.SYSCALL_MASK: 0,
        Msr.LSTAR: 0,
        Msr.IA32_TSC: 0,
        Msr.IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
        Msr.IA32_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRITE_BACK,
    }
