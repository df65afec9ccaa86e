"""A VM fd: memory slots, the interrupt controllers, irqfd/ioeventfd, and its vCPUs.

Kernel facts (STYLE 15, Documentation/virt/kvm/api.rst):

- Order matters on x86: KVM_SET_TSS_ADDR (and KVM_SET_IDENTITY_MAP_ADDR) before the first
  vCPU runs; KVM_CREATE_IRQCHIP, or KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP), before any vCPU is
  created; KVM_CREATE_PIT2 after the irqchip. The two irqchip kinds exclude each other.
- KVM_SET_USER_MEMORY_REGION takes a host address: KVM reads and writes that memory as the
  guest's until the slot is removed or the VM closes, so the mapping (GuestMemory) must outlive
  the VM.
- irqfd and ioeventfd take eventfds that stay owned by the caller: KVM holds its own
  reference while the binding exists.
- With a split irqchip (KVM_CAP_SPLIT_IRQCHIP, N pins) user space delivers I/O APIC
  interrupts as MSIs (KVM_SIGNAL_MSI), and KVM reports the EOI of a level-triggered one as
  KVM_EXIT_IOAPIC_EOI only for vectors it finds by scanning the GSI routing table: MSI routes
  of GSIs 0..N-1 with the level trigger bit (arch/x86/kvm kvm_scan_ioapic_routes, rescanned on
  every KVM_SET_GSI_ROUTING). So the user-space I/O APIC keeps such routes mirroring its
  redirection table even though it never raises those GSIs.
- KVM_SIGNAL_MSI returns how many local APICs took the interrupt; 0 when it was coalesced with
  one still pending, and -1 (read by user space as EPERM) when no local APIC matched.
- Every fd KVM hands out (VM, vCPU) is already O_CLOEXEC.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from runner.kvm.memory import GuestMemory
from runner.kvm.native import Cap, Ioctl, KvmError, ffi, ioctl, ioctl_val, lib
from runner.kvm.vcpu import Vcpu

IOAPIC_PINS = 24  # the pins of the (user-space) IOAPIC with a split irqchip


class Vm:
    """A VM fd. Made by Kvm.create_vm; a context manager that closes its vCPUs, then itself."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self._fd = fd
        self._vcpu_mmap_size = vcpu_mmap_size
        self._vcpus: list[Vcpu] = []

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def vcpus(self) -> tuple[Vcpu, ...]:
        return tuple(self._vcpus)

    def check_extension(self, cap: Cap) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (KVM_CAP_CHECK_EXTENSION_VM): this VM's answer,
        which can differ from /dev/kvm's."""
        return ioctl_val(self._fd, Ioctl.CHECK_EXTENSION, cap)

    def enable_cap(self, cap: Cap, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP with up to four arguments."""
        if len(args) > 4:
            raise KvmError("KVM_ENABLE_CAP", errno.EINVAL, "at most 4 arguments")
        request = ffi.new("struct kvm_enable_cap *")
        request.cap = cap
        request.flags = flags
        for i, value in enumerate(args):
            request.args[i] = value
        ioctl(self._fd, Ioctl.ENABLE_CAP, request)

    # ---- x86 setup ---------------------------------------------------------------------------

    def set_tss_addr(self, addr: int) -> None:
        """Three pages of guest physical space that Intel VMX needs for real mode; outside RAM
        and MMIO."""
        ioctl_val(self._fd, Ioctl.SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """One page for the EPT identity map of real mode (Intel VMX)."""
        address = ffi.new("__u64 *", addr)
        ioctl(self._fd, Ioctl.SET_IDENTITY_MAP_ADDR, address)

    def create_irqchip(self) -> None:
        """In-kernel PIC, IOAPIC and local APICs."""
        ioctl(self._fd, Ioctl.CREATE_IRQCHIP)

    def enable_split_irqchip(self, pins: int = IOAPIC_PINS) -> None:
        """In-kernel local APICs only; PIC and IOAPIC are user space's, with `pins` routes."""
        self.enable_cap(Cap.SPLIT_IRQCHIP, pins)

    def create_pit2(self, flags: int = 0) -> None:
        """In-kernel i8254 PIT (flags: KVM_PIT_SPEAKER_DUMMY for a dummy speaker port)."""
        config = ffi.new("struct kvm_pit_config *")
        config.flags = flags
        ioctl(self._fd, Ioctl.CREATE_PIT2, config)

    # ---- memory ----------------------------------------------------------------------------

    def set_user_memory_region(
        self, slot: int, guest_addr: int, size: int, host_addr: int, flags: int = 0
    ) -> None:
        """Map guest physical [guest_addr, guest_addr + size) to host memory at host_addr (size
        0 removes the slot)."""
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guest_addr
        region.memory_size = size
        region.userspace_addr = host_addr
        ioctl(self._fd, Ioctl.SET_USER_MEMORY_REGION, region)

    def map_memory(self, memory: GuestMemory, first_slot: int = 0) -> list[int]:
        """One slot per region of `memory`, numbered from first_slot; returns the slots."""
        slots = []
        for slot, (region, host) in enumerate(memory.host_regions(), start=first_slot):
            self.set_user_memory_region(slot, region.guest_addr, region.size, host)
            slots.append(slot)
        return slots

    # ---- interrupts and notifications ------------------------------------------------------

    def irq_line(self, irq: int, level: int) -> None:
        """Set an in-kernel irqchip input (GSI) to `level` (KVM_IRQ_LINE)."""
        request = ffi.new("struct kvm_irq_level *")
        request.irq = irq
        request.level = level
        ioctl(self._fd, Ioctl.IRQ_LINE, request)

    def signal_msi(self, address: int, data: int) -> int:
        """Deliver one MSI (KVM_SIGNAL_MSI; needs an in-kernel or split irqchip): the number
        of local APICs that took it, 0 when none did (coalesced, or no APIC matched)."""
        msi = ffi.new("struct kvm_msi *")
        msi.address_lo = address & 0xFFFF_FFFF
        msi.address_hi = address >> 32
        msi.data = data
        try:
            return ioctl(self._fd, Ioctl.SIGNAL_MSI, msi)
        except KvmError as exc:
            if exc.errno == errno.EPERM:  # KVM's -1: no local APIC matched the destination
                return 0
            raise

    def set_gsi_routing(self, routes: Iterable[tuple[int, int, int]]) -> None:
        """Replace the whole GSI routing table (KVM_SET_GSI_ROUTING) with MSI routes, each
        (gsi, address, data)."""
        routes = list(routes)
        table = ffi.new("struct kvm_irq_routing *", {"nr": len(routes), "entries": len(routes)})
        for entry, (gsi, address, data) in zip(table.entries, routes, strict=True):
            entry.gsi = gsi
            entry.type = lib.KVM_IRQ_ROUTING_MSI
            entry.u.msi.address_lo = address & 0xFFFF_FFFF
            entry.u.msi.address_hi = address >> 32
            entry.u.msi.data = data
        ioctl(self._fd, Ioctl.SET_GSI_ROUTING, table)

    def irqfd(self, eventfd: int, gsi: int, *, resample_fd: int | None = None) -> None:
        """A write to `eventfd` raises `gsi`; with resample_fd, level-triggered: KVM signals
        resample_fd when the guest acknowledges, and the line stays up until then."""
        self._irqfd(eventfd, gsi, resample_fd, 0)

    def remove_irqfd(self, eventfd: int, gsi: int) -> None:
        self._irqfd(eventfd, gsi, None, lib.KVM_IRQFD_FLAG_DEASSIGN)

    def _irqfd(self, eventfd: int, gsi: int, resample_fd: int | None, flags: int) -> None:
        request = ffi.new("struct kvm_irqfd *")
        request.fd = eventfd
        request.gsi = gsi
        if resample_fd is not None:
            flags |= lib.KVM_IRQFD_FLAG_RESAMPLE
            request.resamplefd = resample_fd
        request.flags = flags
        ioctl(self._fd, Ioctl.IRQFD, request)

    def ioeventfd(
        self, eventfd: int, addr: int, length: int, *, pio: bool, datamatch: int | None = None
    ) -> None:
        """A guest write of `length` bytes (0: any length, with KVM_CAP_IOEVENTFD_ANY_LENGTH)
        to port (pio) or MMIO address `addr` signals `eventfd` inside KVM, with no exit to user
        space; with `datamatch`, only writes of that value."""
        self._ioeventfd(eventfd, addr, length, pio, datamatch, 0)

    def remove_ioeventfd(
        self, eventfd: int, addr: int, length: int, *, pio: bool, datamatch: int | None = None
    ) -> None:
        self._ioeventfd(eventfd, addr, length, pio, datamatch, lib.KVM_IOEVENTFD_FLAG_DEASSIGN)

    def _ioeventfd(
        self, eventfd: int, addr: int, length: int, pio: bool, datamatch: int | None, flags: int
    ) -> None:
        request = ffi.new("struct kvm_ioeventfd *")
        request.fd = eventfd
        request.addr = addr
        request.len = length
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
            request.datamatch = datamatch
        request.flags = flags
        ioctl(self._fd, Ioctl.IOEVENTFD, request)

    # ---- vCPUs -----------------------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """A new vCPU, closed with this VM (or earlier, by its own close)."""
        fd = ioctl_val(self._fd, Ioctl.CREATE_VCPU, vcpu_id)
        vcpu = Vcpu(fd, vcpu_id, self._vcpu_mmap_size)
        self._vcpus.append(vcpu)
        return vcpu

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close every vCPU, then the VM fd, even if a vCPU refuses (it is running): that
        KvmError is raised afterwards. Idempotent."""
        refused: KvmError | None = None
        for vcpu in self._vcpus:
            try:
                vcpu.close()
            except KvmError as exc:
                refused = refused or exc
        self._vcpus = [vcpu for vcpu in self._vcpus if not vcpu.closed]
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if refused is not None:
            raise refused

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"Vm({len(self._vcpus)} vCPUs{state})"
