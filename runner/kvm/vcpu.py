"""A vCPU: its fd, its mmap'd struct kvm_run, its registers, and `run`.

Kernel facts (STYLE 15, Documentation/virt/kvm/api.rst):

- The vCPU fd's mmap (KVM_GET_VCPU_MMAP_SIZE bytes, offset 0) is struct kvm_run, shared with
  the kernel. After KVM_RUN returns, exit_reason and the matching union member describe the
  exit. For KVM_EXIT_IO the data is inside the same mapping at io.data_offset, size * count
  bytes; for KVM_EXIT_MMIO it is mmio.data. The answer to a read (an IN, an MMIO read) is
  written there by user space and handed to the guest by the NEXT KVM_RUN, which completes the
  instruction first. So an exit's data is valid only until the next `run`: VcpuExit checks it.
- KVM_RUN and signals: a pending signal makes KVM_RUN return -EINTR (also when it arrives while
  the guest runs: the CPU leaves the guest), and kvm_run.immediate_exit set makes it return
  -EINTR without entering the guest. `run` reports both as ExitReason.INTR; see
  native/kvm/vmrun_kvm.c for the protocol that stops a vCPU thread.
- KVM_RUN is called with the GIL released (cffi), so only the calling thread waits.
- A vCPU must be run from one thread at a time. Its fd and mapping stay valid while it runs;
  `close` refuses while `run` is in progress, since unmapping kvm_run under a running vCPU
  thread would crash it on return.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from runner.kvm.native import (
    Cdata,
    CpuidEntry,
    ExitReason,
    Ioctl,
    IoDirection,
    KvmError,
    cpuid_to_c,
    ffi,
    ioctl,
    lib,
    read_cpuid,
)

_REASONS = {reason.value: reason for reason in ExitReason}
_LAPIC_SIZE = ffi.sizeof("struct kvm_lapic_state")


class IoAccess(NamedTuple):
    """A port I/O exit: `count` accesses of `size` bytes at `port`. `data` holds what the guest
    wrote (OUT) or zeros (IN), size * count bytes."""

    port: int
    direction: IoDirection
    size: int
    count: int
    data: bytes


class MmioAccess(NamedTuple):
    """An MMIO exit: `data` holds what the guest wrote, or `len` zeros for a read."""

    address: int
    is_write: bool
    data: bytes


class Hypercall(NamedTuple):
    nr: int
    args: tuple[int, ...]
    longmode: int


class SystemEvent(NamedTuple):
    type: int  # SystemEventType where x86 defines it
    data: tuple[int, ...]  # ndata words (flags on kernels before 5.18)


class InternalErrorInfo(NamedTuple):
    suberror: int  # native.InternalError where defined
    data: tuple[int, ...]


class FailEntry(NamedTuple):
    hardware_entry_failure_reason: int
    cpu: int


class VcpuExit:
    """Why the vCPU came back to user space: `reason`, and accessors for the details of that
    reason. Usable until the vCPU runs again (or closes); after that, KvmError."""

    __slots__ = ("_serial", "_vcpu", "reason")

    def __init__(self, vcpu: Vcpu, reason: ExitReason) -> None:
        self._vcpu = vcpu
        self._serial = vcpu._serial
        self.reason = reason

    def __repr__(self) -> str:
        return f"VcpuExit({self.reason.name})"

    def _run(self, expected: ExitReason) -> Cdata:
        if self.reason is not expected:
            raise KvmError(f"exit.{expected.name.lower()}", None, f"the exit is {self.reason.name}")
        if self._serial != self._vcpu._serial:
            raise KvmError(f"exit.{expected.name.lower()}", None, "the vCPU has run since")
        return self._vcpu._run

    def _io_span(self) -> tuple[Cdata, int, int]:
        io = self._run(ExitReason.IO).io
        start, length = io.data_offset, io.size * io.count
        if start + length > self._vcpu._mmap_size:
            raise KvmError("exit.io", None, f"I/O data at {start:#x}+{length} is outside kvm_run")
        return io, start, length

    @property
    def io(self) -> IoAccess:
        io, start, length = self._io_span()
        data = self._vcpu._mmap[start : start + length]
        return IoAccess(io.port, IoDirection(io.direction), io.size, io.count, data)

    def complete_io_in(self, data: bytes) -> None:
        """The value(s) for an IN: exactly size * count bytes, given to the guest by the next
        `run`."""
        io, start, length = self._io_span()
        if io.direction != IoDirection.IN or len(data) != length:
            raise KvmError("exit.complete_io_in", None, f"needs an IN exit and {length} bytes")
        self._vcpu._mmap[start : start + length] = data

    @property
    def mmio(self) -> MmioAccess:
        mmio = self._run(ExitReason.MMIO).mmio
        length = min(mmio.len, 8)
        return MmioAccess(mmio.phys_addr, bool(mmio.is_write), ffi.buffer(mmio.data, length)[:])

    def complete_mmio_read(self, data: bytes) -> None:
        """The value for an MMIO read: exactly `len` bytes, given to the guest by the next
        `run`."""
        mmio = self._run(ExitReason.MMIO).mmio
        if mmio.is_write or len(data) != mmio.len or mmio.len > 8:
            raise KvmError("exit.complete_mmio_read", None, f"needs a read of {len(data)} bytes")
        ffi.memmove(mmio.data, data, len(data))

    @property
    def eoi(self) -> int:
        """For ExitReason.IOAPIC_EOI (split irqchip): the vector whose EOI the guest wrote, one
        that a level-triggered MSI route of a user-space I/O APIC pin names."""
        return self._run(ExitReason.IOAPIC_EOI).eoi.vector

    @property
    def hypercall(self) -> Hypercall:
        call = self._run(ExitReason.HYPERCALL).hypercall
        return Hypercall(call.nr, tuple(call.args), call.longmode)

    def complete_hypercall(self, ret: int) -> None:
        self._run(ExitReason.HYPERCALL).hypercall.ret = ret

    @property
    def system_event(self) -> SystemEvent:
        event = self._run(ExitReason.SYSTEM_EVENT).system_event
        return SystemEvent(event.type, tuple(event.data[0 : min(event.ndata, 16)]))

    @property
    def internal(self) -> InternalErrorInfo:
        info = self._run(ExitReason.INTERNAL_ERROR).internal
        return InternalErrorInfo(info.suberror, tuple(info.data[0 : min(info.ndata, 16)]))

    @property
    def fail_entry(self) -> FailEntry:
        fail = self._run(ExitReason.FAIL_ENTRY).fail_entry
        return FailEntry(fail.hardware_entry_failure_reason, fail.cpu)

    @property
    def hardware_exit_reason(self) -> int:
        """For ExitReason.UNKNOWN."""
        return self._run(ExitReason.UNKNOWN).hw.hardware_exit_reason


class Vcpu:
    """A vCPU fd and its kvm_run mapping. Made by Vm.create_vcpu; a context manager."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self._fd = fd
        self.id = vcpu_id
        self._serial = 0  # counts runs (and the close), so that stale exits are refused
        # `run` (in a vCPU thread) and `close` (in another) check and change `_running` and
        # `_fd` together, under this lock: never KVM_RUN on a closed fd, never close under a run.
        self._state = threading.Lock()
        self._running = False
        self._mmap_size = mmap_size
        try:
            self._mmap = mmap.mmap(
                fd, mmap_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            os.close(fd)
            self._fd = -1
            raise KvmError("mmap vcpu", exc.errno) from exc
        self._run = ffi.from_buffer("struct kvm_run *", self._mmap)

    @property
    def fd(self) -> int:
        return self._fd

    # ---- running ---------------------------------------------------------------------------

    def run(self, fast_mmio: tuple[Cdata, int] | None = None) -> VcpuExit:
        """KVM_RUN until the vCPU exits to user space. An interrupted run (signal, or
        immediate_exit) gives ExitReason.INTR; other failures raise KvmError. `fast_mmio`
        (a `struct vmrun_fast_mmio[]` and its length) are registers answered in C, which
        never come back here."""
        with self._state:
            if self._fd < 0:
                raise KvmError("KVM_RUN", errno.EBADF, "the vCPU is closed")
            if self._running:
                raise KvmError("KVM_RUN", errno.EBUSY, "the vCPU is running in another thread")
            self._serial += 1
            self._running = True
        try:
            if fast_mmio is None:
                result = lib.vmrun_kvm_run(self._fd)
            else:
                result = lib.vmrun_kvm_run_fast(self._fd, self._run, *fast_mmio)
        finally:
            with self._state:
                self._running = False
        if result < 0:
            # EINTR: a signal or immediate_exit. EAGAIN: KVM woke a vCPU that was waiting
            # for INIT/SIPI (an AP being started); both mean "run again".
            if result in (-errno.EINTR, -errno.EAGAIN):
                return VcpuExit(self, ExitReason.INTR)
            raise KvmError("KVM_RUN", -result)
        code = self._run.exit_reason
        reason = _REASONS.get(code)
        if reason is None:
            raise KvmError("KVM_RUN", None, f"unknown exit reason {code}")
        return VcpuExit(self, reason)

    @property
    def immediate_exit(self) -> bool:
        return bool(self._open_run().immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._open_run().immediate_exit = 1 if value else 0

    def _open_run(self) -> Cdata:
        if self._fd < 0:
            raise KvmError("kvm_run", errno.EBADF, "the vCPU is closed")
        return self._run

    # ---- registers -------------------------------------------------------------------------
    # regs, sregs and fpu are cdata structs: change fields, then set them back.

    def get_regs(self) -> Cdata:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self._fd, Ioctl.GET_REGS, regs)
        return regs

    def set_regs(self, regs: Cdata) -> None:
        ioctl(self._fd, Ioctl.SET_REGS, regs)

    def get_sregs(self) -> Cdata:
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self._fd, Ioctl.GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: Cdata) -> None:
        ioctl(self._fd, Ioctl.SET_SREGS, sregs)

    def get_fpu(self) -> Cdata:
        fpu = ffi.new("struct kvm_fpu *")
        ioctl(self._fd, Ioctl.GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: Cdata) -> None:
        ioctl(self._fd, Ioctl.SET_FPU, fpu)

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """The values of MSRs `indices`; KvmError naming the first one KVM could not read."""
        msrs = _new_msrs(len(indices))
        for entry, index in zip(msrs.entries, indices, strict=True):
            entry.index = index
        got = ioctl(self._fd, Ioctl.GET_MSRS, msrs)
        if got != len(indices):
            raise KvmError("KVM_GET_MSRS", None, f"MSR {indices[got]:#x} cannot be read")
        return {entry.index: entry.data for entry in msrs.entries}

    def set_msrs(self, values: Mapping[int, int] | Iterable[tuple[int, int]]) -> None:
        """Set MSRs (index -> value), in order; KvmError naming the first one KVM refused."""
        pairs = list(values.items() if isinstance(values, Mapping) else values)
        msrs = _new_msrs(len(pairs))
        for entry, (index, value) in zip(msrs.entries, pairs, strict=True):
            entry.index = index
            entry.data = value
        done = ioctl(self._fd, Ioctl.SET_MSRS, msrs)
        if done != len(pairs):
            raise KvmError("KVM_SET_MSRS", None, f"MSR {pairs[done][0]:#x} was refused")

    def get_cpuid2(self) -> list[CpuidEntry]:
        """The CPUID entries set on this vCPU."""
        return read_cpuid(self._fd, Ioctl.GET_CPUID2, 64)

    def set_cpuid2(self, entries: Iterable[CpuidEntry]) -> None:
        ioctl(self._fd, Ioctl.SET_CPUID2, cpuid_to_c(entries))

    def get_lapic(self) -> bytearray:
        """The local APIC's register page (struct kvm_lapic_state), needs an in-kernel one."""
        state = ffi.new("struct kvm_lapic_state *")
        ioctl(self._fd, Ioctl.GET_LAPIC, state)
        return bytearray(ffi.buffer(state))

    def set_lapic(self, data: bytes | bytearray) -> None:
        if len(data) != _LAPIC_SIZE:
            raise KvmError("KVM_SET_LAPIC", errno.EINVAL, f"needs {_LAPIC_SIZE} bytes")
        state = ffi.new("struct kvm_lapic_state *")
        ffi.memmove(state, data, _LAPIC_SIZE)
        ioctl(self._fd, Ioctl.SET_LAPIC, state)

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Unmap kvm_run and close the fd; idempotent. Refused while `run` is in progress."""
        with self._state:
            if self._fd < 0:
                return
            if self._running:
                raise KvmError("close vcpu", errno.EBUSY, "the vCPU is running in another thread")
            fd, self._fd = self._fd, -1
            self._serial += 1
        ffi.release(self._run)
        self._mmap.close()
        os.close(fd)

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Vcpu({self.id}{', closed' if self.closed else ''})"


def _new_msrs(count: int) -> Cdata:
    return ffi.new("struct kvm_msrs *", {"nmsrs": count, "entries": count})
