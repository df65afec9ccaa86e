"""Each vCPU as the kernel's entry wants it: CPUID, MSRs, local APIC LINT pins, and on the
boot vCPU the registers of the 64-bit or the PVH entry (the others wait for INIT/SIPI in the
in-kernel local APIC)."""

from __future__ import annotations

import attrs

from runner.arch.x86_64 import cpuid, gdt, layout, msrs, page_tables, pvh
from runner.boot.loader import LoadedKernel
from runner.config.model import MachineConfig
from runner.kvm.vcpu import Vcpu
from runner.kvm.vm import Vm

KVM_CPUID_FEATURES = 0x4000_0001
KVM_FEATURE_NOP_IO_DELAY = 1 << 1  # the guest skips port-0x80 delays: fewer exits
APIC_LVT_LINT0, APIC_LVT_LINT1 = 0x350, 0x360
APIC_MODE_EXTINT, APIC_MODE_NMI = 0x7, 0x4


def create_vcpu(
    vm: Vm,
    supported: list[cpuid.CpuidEntry],
    machine: MachineConfig,
    index: int,
    kernel: LoadedKernel,
) -> Vcpu:
    """vCPU `index` of `vm`, ready to run; raises cpuid.CpuidError for a machine whose CPUID
    cannot be made (a template for another vendor)."""
    table = cpuid.vcpu_cpuid(
        supported, index, machine.vcpu_count,
        ht_enabled=machine.ht_enabled, nested=machine.nested, template=machine.cpu_template,
    )  # fmt: skip
    vcpu = vm.create_vcpu(index)
    vcpu.set_cpuid2([_with_kvm_features(e) for e in table])
    vcpu.set_msrs({int(msr): value for msr, value in msrs.boot_msrs().items()})
    _set_lint(vcpu)
    if index == 0:  # the others wait for INIT/SIPI in the in-kernel local APIC
        _set_boot_registers(vcpu, kernel)
    return vcpu


def _with_kvm_features(entry: cpuid.CpuidEntry) -> cpuid.CpuidEntry:
    if entry.function == KVM_CPUID_FEATURES:
        return attrs.evolve(entry, eax=entry.eax | KVM_FEATURE_NOP_IO_DELAY)
    return entry


def _set_lint(vcpu: Vcpu) -> None:
    """LINT0 delivers the PIC's ExtINT, LINT1 NMIs: what the MP table says and Linux expects."""
    lapic = vcpu.get_lapic()
    for offset, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
        value = int.from_bytes(lapic[offset : offset + 4], "little")
        value = (value & ~0x700) | (mode << 8)
        lapic[offset : offset + 4] = value.to_bytes(4, "little")
    vcpu.set_lapic(lapic)


def _set_boot_registers(vcpu: Vcpu, kernel: LoadedKernel) -> None:
    """The 64-bit entry: long mode, flat segments, the boot page tables, rsi at the zero page.
    The PVH entry: 32-bit protected mode without paging, flat segments, ebx at the
    hvm_start_info."""
    pvh_entry = kernel.kind == "pvh"
    sregs = vcpu.get_sregs()
    segments = gdt.boot_segments(gdt.PVH_GDT if pvh_entry else gdt.BOOT_GDT)
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr"):
        target = getattr(sregs, name)
        for field, value in attrs.asdict(getattr(segments, name)).items():
            setattr(target, field, value)
    sregs.gdt.base, sregs.gdt.limit = segments.gdt.base, segments.gdt.limit
    sregs.idt.base, sregs.idt.limit = segments.idt.base, segments.idt.limit
    if pvh_entry:
        control = pvh.ENTRY_CONTROL
    else:
        control = page_tables.long_mode_registers(sregs.cr0, sregs.cr4, sregs.efer)
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = (
        control.cr0,
        control.cr3,
        control.cr4,
        control.efer,
    )
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rflags = 0x2  # bit 1 is always set; IF, TF and VM clear
    regs.rip = kernel.entry
    if pvh_entry:
        regs.rbx = layout.PVH_INFO_START
    else:
        regs.rsp = regs.rbp = layout.BOOT_STACK_POINTER
        regs.rsi = layout.ZERO_PAGE_START
    vcpu.set_regs(regs)
    fpu = vcpu.get_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    vcpu.set_fpu(fpu)
