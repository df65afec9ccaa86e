"""/dev/kvm: the system fd, where capabilities are asked and VMs are made.

Kernel facts (STYLE 15, Documentation/virt/kvm/api.rst): KVM_GET_API_VERSION must return 12,
or nothing else in the API can be trusted. KVM_GET_SUPPORTED_CPUID and KVM_GET_MSR_INDEX_LIST
fail with E2BIG when the caller's array is too small (the latter also writes the needed count).
"""

from __future__ import annotations

import errno
import os

from runner.kvm.native import (
    KVM_API_VERSION,
    Cap,
    CpuidEntry,
    Ioctl,
    KvmError,
    ffi,
    ioctl,
    ioctl_val,
    read_cpuid,
)
from runner.kvm.vm import Vm

KVM_PATH = "/dev/kvm"


class Kvm:
    """An open /dev/kvm whose API version has been checked. A context manager."""

    def __init__(self, path: str = KVM_PATH) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmError(f"open {path}", exc.errno) from exc
        try:
            version = ioctl_val(self._fd, Ioctl.GET_API_VERSION)
            if version != KVM_API_VERSION:
                raise KvmError(
                    "KVM_GET_API_VERSION",
                    None,
                    f"{path} has KVM API version {version}; vmrun needs {KVM_API_VERSION}",
                )
        except BaseException:
            self.close()
            raise

    @property
    def fd(self) -> int:
        return self._fd

    def check_extension(self, cap: Cap) -> int:
        """KVM_CHECK_EXTENSION: 0 when `cap` is absent, else 1 or a capability's value."""
        return ioctl_val(self._fd, Ioctl.CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        """The size of a vCPU fd's mapping (struct kvm_run and what follows it)."""
        return ioctl_val(self._fd, Ioctl.GET_VCPU_MMAP_SIZE)

    def get_supported_cpuid(self) -> list[CpuidEntry]:
        """The CPUID leaves KVM can give a guest (the basis of what vCPUs are set to)."""
        return read_cpuid(self._fd, Ioctl.GET_SUPPORTED_CPUID, 128)

    def get_msr_index_list(self) -> list[int]:
        """The MSRs that KVM_GET_MSRS / KVM_SET_MSRS handle."""
        probe = ffi.new("struct kvm_msr_list *", {"nmsrs": 0, "indices": 0})
        try:
            ioctl(self._fd, Ioctl.GET_MSR_INDEX_LIST, probe)
            return []
        except KvmError as exc:
            if exc.errno != errno.E2BIG:
                raise
        count = probe.nmsrs
        msrs = ffi.new("struct kvm_msr_list *", {"nmsrs": count, "indices": count})
        ioctl(self._fd, Ioctl.GET_MSR_INDEX_LIST, msrs)
        return list(msrs.indices[0 : msrs.nmsrs])

    def create_vm(self, machine_type: int = 0) -> Vm:
        """A new VM (machine type 0: the default, on x86 the only one vmrun uses)."""
        mmap_size = self.vcpu_mmap_size()
        return Vm(ioctl_val(self._fd, Ioctl.CREATE_VM, machine_type), mmap_size)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close /dev/kvm (the VMs made from it live on); idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Kvm({self.path!r}{', closed' if self.closed else ''})"
