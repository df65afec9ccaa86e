"""The typed door to the compiled module `runner.kvm._native` (built from native/kvm/).

Only `runner.kvm` imports the compiled module, and only through this file (STYLE 9). What it
adds: the version check of the compiled module, one errno check (`check`) that turns the
helpers' `-errno` results into `KvmError`, the ioctl calls on top of it, and enums whose values
come from the compiler reading <linux/kvm.h>: `Ioctl`, `Cap`, `ExitReason` and a few more.

Who owns what, across the boundary (STYLE 15): a cdata passed to an ioctl is owned by the
Python caller and used by the kernel only during the call. The GIL is released for the length
of every call into the compiled module (cffi does that in API mode), so an ioctl that blocks,
KVM_RUN above all, holds up only its own thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

from runner.arch.x86_64.cpuid import CpuidEntry  # one type for the table, pure and KVM's
from runner.errors import VmrunError

# The version string the compiled module must carry: native/kvm/vmrun_kvm.c says the same.
# A mismatch means the module was built from other sources than this Python code expects.
NATIVE_VERSION = "vmrun-kvm 8"

# KVM_GET_API_VERSION: 12 since Linux 2.6.22, and the kernel documents that it will not change.
KVM_API_VERSION = 12


class NativeModuleError(ImportError):
    """The compiled module is missing, or was built from other sources than this code."""


try:
    from runner.kvm._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise NativeModuleError(
        f"the KVM bindings (runner.kvm._native) are not built: {exc}; "
        "build them with `pip install -e .` (needs gcc, cffi and the Linux headers)"
    ) from exc


def check_version(found: str) -> None:
    """Raise NativeModuleError unless `found` is the compiled module's expected version."""
    if found != NATIVE_VERSION:
        raise NativeModuleError(
            f"runner.kvm._native is version {found!r} but this code needs {NATIVE_VERSION!r}; "
            "rebuild it with `pip install -e .`"
        )


def native_version() -> str:
    """The version string compiled into runner.kvm._native."""
    return ffi.string(lib.vmrun_kvm_version).decode("ascii")


check_version(native_version())

Cdata = Any  # a cffi cdata object (cffi ships no type stubs)


class KvmError(VmrunError):
    """A KVM operation failed. `op` names it (usually the ioctl), `errno` says why, or is None
    where the failure is no system error (a wrong API version, a short MSR write ...)."""

    def __init__(self, op: str, errno: int | None, detail: str | None = None) -> None:
        self.op = op
        self.errno = errno
        self.strerror = os.strerror(errno) if errno else None
        text = detail or self.strerror or "failed"
        if detail and self.strerror:
            text = f"{detail}: {self.strerror}"
        super().__init__(f"{op}: {text}")


def check(op: str, result: int) -> int:
    """THE errno check: `result` is what a helper in native/kvm returned (>= 0, or -errno).
    Returns it when it is not an error, else raises KvmError(op, errno)."""
    if result < 0:
        raise KvmError(op, -result)
    return result


class Ioctl(IntEnum):
    """The KVM ioctl request numbers vmrun uses, as the compiler computed them."""

    GET_API_VERSION = lib.KVM_GET_API_VERSION
    CREATE_VM = lib.KVM_CREATE_VM
    GET_MSR_INDEX_LIST = lib.KVM_GET_MSR_INDEX_LIST
    CHECK_EXTENSION = lib.KVM_CHECK_EXTENSION
    GET_VCPU_MMAP_SIZE = lib.KVM_GET_VCPU_MMAP_SIZE
    GET_SUPPORTED_CPUID = lib.KVM_GET_SUPPORTED_CPUID
    SET_TSS_ADDR = lib.KVM_SET_TSS_ADDR
    SET_IDENTITY_MAP_ADDR = lib.KVM_SET_IDENTITY_MAP_ADDR
    CREATE_IRQCHIP = lib.KVM_CREATE_IRQCHIP
    CREATE_PIT2 = lib.KVM_CREATE_PIT2
    ENABLE_CAP = lib.KVM_ENABLE_CAP
    SET_USER_MEMORY_REGION = lib.KVM_SET_USER_MEMORY_REGION
    IRQ_LINE = lib.KVM_IRQ_LINE
    IRQFD = lib.KVM_IRQFD
    IOEVENTFD = lib.KVM_IOEVENTFD
    SIGNAL_MSI = lib.KVM_SIGNAL_MSI
    SET_GSI_ROUTING = lib.KVM_SET_GSI_ROUTING
    CREATE_VCPU = lib.KVM_CREATE_VCPU
    RUN = lib.KVM_RUN
    GET_REGS = lib.KVM_GET_REGS
    SET_REGS = lib.KVM_SET_REGS
    GET_SREGS = lib.KVM_GET_SREGS
    SET_SREGS = lib.KVM_SET_SREGS
    GET_FPU = lib.KVM_GET_FPU
    SET_FPU = lib.KVM_SET_FPU
    GET_MSRS = lib.KVM_GET_MSRS
    SET_MSRS = lib.KVM_SET_MSRS
    GET_CPUID2 = lib.KVM_GET_CPUID2
    SET_CPUID2 = lib.KVM_SET_CPUID2
    GET_LAPIC = lib.KVM_GET_LAPIC
    SET_LAPIC = lib.KVM_SET_LAPIC

    @property
    def op(self) -> str:
        """The name the kernel documentation uses, for error messages."""
        return f"KVM_{self.name}"


def ioctl(fd: int, request: Ioctl, arg: Cdata = ffi.NULL) -> int:
    """ioctl(fd, request, pointer): its result, or KvmError."""
    result = lib.vmrun_kvm_ioctl(fd, request, arg)
    if result < 0:
        raise KvmError(request.op, -result)
    return result


def ioctl_val(fd: int, request: Ioctl, value: int = 0) -> int:
    """ioctl(fd, request, integer): its result, or KvmError."""
    result = lib.vmrun_kvm_ioctl_val(fd, request, value)
    if result < 0:
        raise KvmError(request.op, -result)
    return result


class Cap(IntEnum):
    """Capabilities for KVM_CHECK_EXTENSION and KVM_ENABLE_CAP (KVM_CAP_*)."""

    IRQCHIP = lib.KVM_CAP_IRQCHIP
    HLT = lib.KVM_CAP_HLT
    USER_MEMORY = lib.KVM_CAP_USER_MEMORY
    SET_TSS_ADDR = lib.KVM_CAP_SET_TSS_ADDR
    EXT_CPUID = lib.KVM_CAP_EXT_CPUID
    NR_VCPUS = lib.KVM_CAP_NR_VCPUS
    NR_MEMSLOTS = lib.KVM_CAP_NR_MEMSLOTS
    NOP_IO_DELAY = lib.KVM_CAP_NOP_IO_DELAY
    MP_STATE = lib.KVM_CAP_MP_STATE
    SYNC_MMU = lib.KVM_CAP_SYNC_MMU
    IRQ_ROUTING = lib.KVM_CAP_IRQ_ROUTING
    IRQFD = lib.KVM_CAP_IRQFD
    PIT2 = lib.KVM_CAP_PIT2
    IOEVENTFD = lib.KVM_CAP_IOEVENTFD
    SET_IDENTITY_MAP_ADDR = lib.KVM_CAP_SET_IDENTITY_MAP_ADDR
    ADJUST_CLOCK = lib.KVM_CAP_ADJUST_CLOCK
    VCPU_EVENTS = lib.KVM_CAP_VCPU_EVENTS
    XSAVE = lib.KVM_CAP_XSAVE
    MAX_VCPUS = lib.KVM_CAP_MAX_VCPUS
    TSC_DEADLINE_TIMER = lib.KVM_CAP_TSC_DEADLINE_TIMER
    KVMCLOCK_CTRL = lib.KVM_CAP_KVMCLOCK_CTRL
    READONLY_MEM = lib.KVM_CAP_READONLY_MEM
    IRQFD_RESAMPLE = lib.KVM_CAP_IRQFD_RESAMPLE
    CHECK_EXTENSION_VM = lib.KVM_CAP_CHECK_EXTENSION_VM
    SPLIT_IRQCHIP = lib.KVM_CAP_SPLIT_IRQCHIP
    IOEVENTFD_ANY_LENGTH = lib.KVM_CAP_IOEVENTFD_ANY_LENGTH
    MAX_VCPU_ID = lib.KVM_CAP_MAX_VCPU_ID
    X2APIC_API = lib.KVM_CAP_X2APIC_API
    IMMEDIATE_EXIT = lib.KVM_CAP_IMMEDIATE_EXIT
    X86_DISABLE_EXITS = lib.KVM_CAP_X86_DISABLE_EXITS
    GET_MSR_FEATURES = lib.KVM_CAP_GET_MSR_FEATURES
    X86_USER_SPACE_MSR = lib.KVM_CAP_X86_USER_SPACE_MSR
    EXIT_HYPERCALL = lib.KVM_CAP_EXIT_HYPERCALL


class ExitReason(IntEnum):
    """kvm_run.exit_reason: one value per KVM_EXIT_* (as of the Linux 6.1 headers)."""

    UNKNOWN = lib.KVM_EXIT_UNKNOWN
    EXCEPTION = lib.KVM_EXIT_EXCEPTION
    IO = lib.KVM_EXIT_IO
    HYPERCALL = lib.KVM_EXIT_HYPERCALL
    DEBUG = lib.KVM_EXIT_DEBUG
    HLT = lib.KVM_EXIT_HLT
    MMIO = lib.KVM_EXIT_MMIO
    IRQ_WINDOW_OPEN = lib.KVM_EXIT_IRQ_WINDOW_OPEN
    SHUTDOWN = lib.KVM_EXIT_SHUTDOWN
    FAIL_ENTRY = lib.KVM_EXIT_FAIL_ENTRY
    INTR = lib.KVM_EXIT_INTR
    SET_TPR = lib.KVM_EXIT_SET_TPR
    TPR_ACCESS = lib.KVM_EXIT_TPR_ACCESS
    S390_SIEIC = lib.KVM_EXIT_S390_SIEIC
    S390_RESET = lib.KVM_EXIT_S390_RESET
    DCR = lib.KVM_EXIT_DCR
    NMI = lib.KVM_EXIT_NMI
    INTERNAL_ERROR = lib.KVM_EXIT_INTERNAL_ERROR
    OSI = lib.KVM_EXIT_OSI
    PAPR_HCALL = lib.KVM_EXIT_PAPR_HCALL
    S390_UCONTROL = lib.KVM_EXIT_S390_UCONTROL
    WATCHDOG = lib.KVM_EXIT_WATCHDOG
    S390_TSCH = lib.KVM_EXIT_S390_TSCH
    EPR = lib.KVM_EXIT_EPR
    SYSTEM_EVENT = lib.KVM_EXIT_SYSTEM_EVENT
    S390_STSI = lib.KVM_EXIT_S390_STSI
    IOAPIC_EOI = lib.KVM_EXIT_IOAPIC_EOI
    HYPERV = lib.KVM_EXIT_HYPERV
    ARM_NISV = lib.KVM_EXIT_ARM_NISV
    X86_RDMSR = lib.KVM_EXIT_X86_RDMSR
    X86_WRMSR = lib.KVM_EXIT_X86_WRMSR
    DIRTY_RING_FULL = lib.KVM_EXIT_DIRTY_RING_FULL
    AP_RESET_HOLD = lib.KVM_EXIT_AP_RESET_HOLD
    X86_BUS_LOCK = lib.KVM_EXIT_X86_BUS_LOCK
    XEN = lib.KVM_EXIT_XEN
    RISCV_SBI = lib.KVM_EXIT_RISCV_SBI
    RISCV_CSR = lib.KVM_EXIT_RISCV_CSR
    NOTIFY = lib.KVM_EXIT_NOTIFY


class IoDirection(IntEnum):
    """kvm_run.io.direction."""

    IN = lib.KVM_EXIT_IO_IN
    OUT = lib.KVM_EXIT_IO_OUT


class SystemEventType(IntEnum):
    """kvm_run.system_event.type (the ones x86 produces)."""

    SHUTDOWN = lib.KVM_SYSTEM_EVENT_SHUTDOWN
    RESET = lib.KVM_SYSTEM_EVENT_RESET
    CRASH = lib.KVM_SYSTEM_EVENT_CRASH


class InternalError(IntEnum):
    """kvm_run.internal.suberror for KVM_EXIT_INTERNAL_ERROR."""

    EMULATION = lib.KVM_INTERNAL_ERROR_EMULATION
    SIMUL_EX = lib.KVM_INTERNAL_ERROR_SIMUL_EX
    DELIVERY_EV = lib.KVM_INTERNAL_ERROR_DELIVERY_EV
    UNEXPECTED_EXIT_REASON = lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON


def new_cpuid2(count: int) -> Cdata:
    """A zeroed struct kvm_cpuid2 with room for `count` entries (nent = count)."""
    return ffi.new("struct kvm_cpuid2 *", {"nent": count, "entries": count})


def cpuid_from_c(cpuid: Cdata) -> list[CpuidEntry]:
    return [
        CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        for e in (cpuid.entries[i] for i in range(cpuid.nent))
    ]


MAX_CPUID_ENTRIES = 4096


def read_cpuid(fd: int, request: Ioctl, first_guess: int) -> list[CpuidEntry]:
    """A CPUID list from an ioctl that answers E2BIG while the buffer is too small
    (KVM_GET_SUPPORTED_CPUID, KVM_GET_CPUID2): the buffer doubles until it fits."""
    count = first_guess
    while True:
        cpuid = new_cpuid2(count)
        try:
            ioctl(fd, request, cpuid)
        except KvmError as exc:
            if exc.errno != errno.E2BIG or count >= MAX_CPUID_ENTRIES:
                raise
            count *= 2
            continue
        return cpuid_from_c(cpuid)


def cpuid_to_c(entries: Iterable[CpuidEntry]) -> Cdata:
    entries = list(entries)
    cpuid = new_cpuid2(len(entries))
    for slot, entry in zip(cpuid.entries, entries, strict=True):
        (slot.function, slot.index, slot.flags) = (entry.function, entry.index, entry.flags)
        (slot.eax, slot.ebx, slot.ecx, slot.edx) = (entry.eax, entry.ebx, entry.ecx, entry.edx)
    return cpuid


def host_address(buffer: Any) -> int:
    """The address of a writable Python buffer (an mmap): where KVM or C code reaches it. The
    caller keeps the buffer alive and mapped for as long as the address is in use."""
    pointer = ffi.from_buffer(buffer, require_writable=True)
    try:
        return int(ffi.cast("uintptr_t", pointer))
    finally:
        ffi.release(pointer)  # the buffer export; an mmap with one cannot be closed
