"""VmResources -> Machine: the one place that knows every device (STYLE 3).

`build` reads top to bottom: the VM and its interrupt controller, guest memory, the kernel,
the initramfs and command line, the boot tables, the vCPUs, then the devices. Parts of a
VM file that this build cannot run yet are refused before anything is created.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import attrs

from runner.arch.x86_64 import acpi, boot_params, cpuid, gdt, layout, mptable, msrs, page_tables
from runner.boot import cmdline
from runner.boot.loader import KernelImageError, LoadedKernel, load_kernel
from runner.config.model import InitramfsRoot, VmResources
from runner.config.problems import Problem
from runner.devices.bus import IoBus
from runner.devices.legacy import cmos, guest_ports, i8042, pci_absent, serial
from runner.guest.initramfs import GuestImageError, guest_initramfs
from runner.guest.kernel import default_kernel
from runner.kvm.memory import GuestMemory
from runner.kvm.native import CpuidEntry
from runner.kvm.system import Kvm
from runner.kvm.vcpu import Vcpu
from runner.kvm.vm import Vm

# Intel VMX needs three pages for real mode's TSS and one for its identity map, outside RAM
# and MMIO: just below the 4 GiB line's firmware area, as Firecracker places them.
TSS_ADDRESS = 0xFFFB_D000
IDENTITY_MAP_ADDRESS = 0xFFFB_C000
KVM_CPUID_FEATURES = 0x4000_0001
KVM_FEATURE_NOP_IO_DELAY = 1 << 1  # the guest skips port-0x80 delays: fewer exits
APIC_LVT_LINT0, APIC_LVT_LINT1 = 0x350, 0x360
APIC_MODE_EXTINT, APIC_MODE_NMI = 0x7, 0x4


class BuildError(Exception):
    """The machine cannot be built; the message says what and why."""


@attrs.define
class Machine:
    """A built VM, ready to run: owns its fds through `resources` (closed by `close`)."""

    vm: Vm
    memory: GuestMemory
    vcpus: list[Vcpu]
    io_bus: IoBus
    exit_port: list[int]  # the status the init reported, once
    events: list[str]  # what ended the VM, from devices (reset)
    debug: guest_ports.DebugPort
    serials: list[serial.Serial8250]
    resources: ExitStack

    def close(self) -> None:
        for uart in self.serials:
            uart.flush()
        self.resources.close()


def not_built_yet(resources: VmResources) -> list[Problem]:
    """What this build cannot run yet, located in the file."""
    problems = []
    unbuilt = {
        "fs": "virtio-fs", "block": "virtio-blk", "net": "virtio-net",
        "virtio_consoles": "virtio consoles",
    }  # fmt: skip
    for section, what in unbuilt.items():
        if getattr(resources, section):
            problems.append(Problem((section,), f"{what} is not built yet"))
    if resources.vsock:
        problems.append(Problem(("vsock",), "virtio-vsock is not built yet"))
    if not resources.disable_implicit_console:
        problems.append(
            Problem(
                ("disable_implicit_console",),
                "the implicit virtio console is not built yet: set disable_implicit_console "
                "= true and add a serial console",
            )
        )
    if resources.machine.split_irqchip:
        problems.append(
            Problem(("machine", "split_irqchip"), "a user-space IOAPIC is not built yet")
        )
    if not isinstance(resources.root, InitramfsRoot):
        problems.append(Problem(("root",), "only the initramfs root is built yet"))
    if resources.firmware:
        problems.append(Problem(("firmware",), "booting through firmware is not built yet"))
    for index, port in enumerate(resources.serial_consoles):
        if port.input != "null":
            problems.append(
                Problem(("serial_consoles", index, "input"), "serial input is not built yet")
            )
    return problems


def build(resources: VmResources, argv: Sequence[str]) -> Machine:
    """A machine for `resources` that runs `argv`; raises BuildError."""
    with ExitStack() as stack:
        kvm = stack.enter_context(_open(Kvm))
        vm = stack.enter_context(kvm.create_vm())
        mem_size = resources.machine.mem_size_mib * layout.MIB
        _create_irqchip(vm)
        memory = stack.enter_context(GuestMemory(boot_params.memory_regions(mem_size)))
        vm.map_memory(memory)

        kernel = _load_kernel(resources)
        for segment in kernel.segments:
            _write(
                memory, segment.guest_addr, segment.data.ljust(segment.mem_size, b"\0"), "kernel"
            )
        initrd = _place_initramfs(memory, resources, argv, kernel, mem_size)
        text = _command_line(resources)
        if len(text) > kernel.cmdline_size:
            raise BuildError(
                f"the kernel takes {kernel.cmdline_size} bytes of command line, not {len(text)}"
            )
        _write(memory, layout.CMDLINE_START, text.encode() + b"\0", "command line")
        zero_page = boot_params.zero_page(
            kernel.setup_header,
            e820=boot_params.e820_map(mem_size),
            cmdline_len=len(text),
            initrd=initrd,
        )
        writes = [(layout.ZERO_PAGE_START, zero_page), *gdt.boot_gdt_writes()]
        vcpu_count = resources.machine.vcpu_count
        writes += page_tables.page_table_writes() + mptable.mptable_writes(vcpu_count)
        # Kernels without MP-table parsing (Debian's cloud kernel) find the vCPUs, the IOAPIC
        # and the legacy devices' interrupts only in the ACPI tables.
        writes += acpi.acpi_tables(vcpu_count)
        for gpa, data in writes:
            _write(memory, gpa, data, "boot tables")

        # One KVM_GET_SUPPORTED_CPUID for all vCPUs: each gets its own copy filtered from it.
        supported = [cpuid.CpuidEntry(*entry) for entry in kvm.get_supported_cpuid()]
        vcpus = [
            _create_vcpu(supported, vm, resources, index, kernel)
            for index in range(resources.machine.vcpu_count)
        ]
        machine = Machine(
            vm, memory, vcpus, IoBus(), [], [], guest_ports.DebugPort(), [], stack.pop_all()
        )
    try:
        _attach_devices(machine, resources)
    except BaseException:
        machine.close()
        raise
    return machine


def _open(kvm_class: type[Kvm]) -> Kvm:
    try:
        return kvm_class()
    except Exception as exc:
        raise BuildError(f"cannot open /dev/kvm: {exc}") from exc


def _create_irqchip(vm: Vm) -> None:
    vm.set_tss_addr(TSS_ADDRESS)
    vm.set_identity_map_addr(IDENTITY_MAP_ADDRESS)
    vm.create_irqchip()
    vm.create_pit2()


def _write(memory: GuestMemory, gpa: int, data: bytes, what: str) -> None:
    try:
        memory.write(gpa, data)
    except Exception as exc:
        raise BuildError(f"the {what} does not fit in guest memory at {gpa:#x}: {exc}") from exc


def _load_kernel(resources: VmResources) -> LoadedKernel:
    path = Path(resources.kernel.path) if resources.kernel.path else default_kernel().image
    try:
        kernel = load_kernel(path.read_bytes(), resources.kernel.format, name=str(path))
    except (KernelImageError, OSError) as exc:
        raise BuildError(str(exc)) from exc
    if kernel.kind == "pvh":
        raise BuildError(f"{path}: booting through the PVH entry is not built yet")
    return kernel


def _place_initramfs(
    memory: GuestMemory,
    resources: VmResources,
    argv: Sequence[str],
    kernel: LoadedKernel,
    mem_size: int,
) -> boot_params.Initrd:
    try:
        image = guest_initramfs(resources, argv)
    except (GuestImageError, OSError) as exc:
        raise BuildError(str(exc)) from exc
    top = min(mem_size, layout.MMIO_GAP_START)
    address = (top - len(image)) & ~(layout.KIB * 4 - 1)
    kernel_end = layout.KERNEL_START + kernel.init_size
    if address < kernel_end:
        need = -(-(kernel_end + len(image) + layout.GUEST_WORKING_SET) // layout.MIB)
        raise BuildError(
            f"{resources.machine.mem_size_mib} MiB is too small for the kernel and the "
            f"initramfs ({len(image) // layout.KIB} KiB); give machine.mem_size_mib >= {need}"
        )
    _write(memory, address, image, "initramfs")
    return boot_params.Initrd(address, len(image))


def _command_line(resources: VmResources) -> str:
    try:
        return cmdline.compose(resources)
    except cmdline.CmdlineError as exc:
        raise BuildError(str(exc)) from exc


def _create_vcpu(
    supported: list[cpuid.CpuidEntry],
    vm: Vm,
    resources: VmResources,
    index: int,
    kernel: LoadedKernel,
) -> Vcpu:
    machine = resources.machine
    vcpu = vm.create_vcpu(index)
    try:
        table = cpuid.vcpu_cpuid(
            supported, index, machine.vcpu_count,
            ht_enabled=machine.ht_enabled, nested=machine.nested, template=machine.cpu_template,
        )  # fmt: skip
    except cpuid.CpuidError as exc:
        raise BuildError(f"machine: {exc}") from exc
    vcpu.set_cpuid2([_with_kvm_features(CpuidEntry(*attrs.astuple(e))) for e in table])
    vcpu.set_msrs({int(msr): value for msr, value in msrs.boot_msrs().items()})
    _set_lint(vcpu)
    if index == 0:  # the others wait for INIT/SIPI in the in-kernel local APIC
        _set_boot_registers(vcpu, kernel)
    return vcpu


def _with_kvm_features(entry: CpuidEntry) -> CpuidEntry:
    if entry.function == KVM_CPUID_FEATURES:
        return entry._replace(eax=entry.eax | KVM_FEATURE_NOP_IO_DELAY)
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
    """Long mode, flat segments, the boot page tables; rsi points at the zero page."""
    sregs = vcpu.get_sregs()
    segments = gdt.boot_segments()
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr"):
        target = getattr(sregs, name)
        for field, value in attrs.asdict(getattr(segments, name)).items():
            setattr(target, field, value)
    sregs.gdt.base, sregs.gdt.limit = segments.gdt.base, segments.gdt.limit
    sregs.idt.base, sregs.idt.limit = segments.idt.base, segments.idt.limit
    control = page_tables.long_mode_registers(sregs.cr0, sregs.cr4, sregs.efer)
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = (
        control.cr0,
        control.cr3,
        control.cr4,
        control.efer,
    )
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rflags = 0x2
    regs.rip = kernel.entry
    regs.rsp = regs.rbp = layout.BOOT_STACK_POINTER
    regs.rsi = layout.ZERO_PAGE_START
    vcpu.set_regs(regs)
    fpu = vcpu.get_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    vcpu.set_fpu(fpu)


def _attach_devices(machine: Machine, resources: VmResources) -> None:
    bus, vm = machine.io_bus, machine.vm
    for index, port in enumerate(resources.serial_consoles):
        base, irq = serial.COM_PORTS[index]
        sink = _output(port.output, machine.resources)
        uart = serial.Serial8250(sink, _edge(vm, irq))
        machine.serials.append(uart)
        bus.insert(base, serial.PORT_COUNT, uart)
    bus.insert(
        i8042.DATA_PORT, i8042.PORT_SPAN, i8042.I8042(lambda: machine.events.append("reset"))
    )
    mem = resources.machine.mem_size_mib * layout.MIB
    below = min(mem, layout.MMIO_GAP_START)
    bus.insert(0x70, 2, cmos.Cmos(below, mem - below))
    bus.insert(pci_absent.CONFIG_ADDRESS, pci_absent.PORT_SPAN, pci_absent.PciAbsent())
    bus.insert(
        guest_ports.EXIT_PORT,
        guest_ports.EXIT_PORT_WIDTH,
        guest_ports.ExitPort(machine.exit_port.append),
    )
    bus.insert(guest_ports.DEBUG_PORT, 1, machine.debug)


def _edge(vm: Vm, irq: int) -> Callable[[], None]:
    """An ISA interrupt: a rising edge on the in-kernel PIC and IOAPIC pin."""

    def pulse() -> None:
        vm.irq_line(irq, 1)
        vm.irq_line(irq, 0)

    return pulse


def _output(name: str, stack: ExitStack) -> BinaryIO | None:
    if name == "stdout":
        return sys.stdout.buffer
    if name == "stderr":
        return sys.stderr.buffer
    if name == "null":
        return None
    return stack.enter_context(open(name, "ab"))
