"""VmResources -> Machine: the one place that knows every device (STYLE 3).

`build` reads top to bottom: the VM and its interrupt controller, guest memory, the kernel,
the initramfs and command line, the boot tables, the vCPUs, then the devices. Parts of a
VM file that this build cannot run yet are refused before anything is created.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import attrs

from runner import terminal, timings, vcpu_boot
from runner.arch.x86_64 import (
    acpi,
    boot_params,
    cpuid,
    gdt,
    layout,
    mptable,
    page_tables,
    pvh,
    smbios,
)
from runner.boot import bzimage, cmdline
from runner.boot.loader import KernelImageError, LoadedKernel, load_kernel
from runner.config.devices import BlockDevice
from runner.config.model import VmResources
from runner.config.slots import VirtioSlot, virtio_slots
from runner.devices.bus import IoBus
from runner.devices.ioapic import MMIO_SIZE as IOAPIC_MMIO_SIZE
from runner.devices.ioapic import IoApic
from runner.devices.legacy import cmos, guest_ports, i8042, pci_absent, serial, serial_input
from runner.devices.legacy.serial_output import SerialOutput, open_output_file
from runner.devices.virtio import console_plan
from runner.devices.virtio.balloon import VirtioBalloon
from runner.devices.virtio.console_endpoints import build_console
from runner.devices.virtio.interrupt import InterruptLine
from runner.devices.virtio.mmio import MmioTransport, VirtioBackend
from runner.devices.virtio.rng import VirtioRng
from runner.emulated import output_ports
from runner.errors import VmrunError, describe
from runner.guest.initramfs import guest_initramfs_parts
from runner.guest.kernel import default_kernel
from runner.host_files import open_regular
from runner.kvm.memory import GuestMemory
from runner.kvm.native import Cap
from runner.kvm.system import Kvm
from runner.kvm.vm import Vm
from runner.machine import REBOOT, Ending, Machine

# Intel VMX needs three pages for real mode's TSS and one for its identity map, outside RAM
# and MMIO: just below the 4 GiB line's firmware area, as Firecracker places them.
TSS_ADDRESS = 0xFFFB_D000
IDENTITY_MAP_ADDRESS = 0xFFFB_C000


KERNEL_CHUNK = 2 * layout.MIB


class BuildError(VmrunError):
    """The machine cannot be built; the message says what and why."""


def workload_argv(resources: VmResources, given: Sequence[str] | None) -> list[str]:
    """What the init runs: `given` (after `--` on vmrun's command line), else the file's."""
    if given:
        return list(given)
    workload = resources.workload
    return [workload.exec, *workload.args] if workload else []


def build(resources: VmResources, argv: Sequence[str]) -> Machine:
    """A machine for `resources` that runs `argv`; raises BuildError, naming the step."""
    # Which ports the consoles have depends on which of vmrun's stdio are terminals: decided
    # once, for the devices and for the init that puts the ports on the workload's fds.
    consoles = console_plan.console_plans(resources, terminal.stdio_terminals())
    with ExitStack() as stack:
        mem_size = resources.machine.mem_size_mib * layout.MIB
        with _step("setting up guest memory"):
            # Entered first, so closed last: after the VM, which must not find the memory of
            # its slots unmapped (runner/kvm/memory.py).
            memory = stack.enter_context(GuestMemory(boot_params.memory_regions(mem_size)))
        with _step("opening /dev/kvm"):
            kvm = stack.enter_context(Kvm())
        with _step("creating the VM"):
            vm = stack.enter_context(kvm.create_vm())
        split_irqchip = resources.machine.split_irqchip
        with _step("creating the interrupt controller"):
            _create_irqchip(vm, split_irqchip)
        with _step("setting up guest memory"):
            vm.map_memory(memory)

        with _step("loading the kernel"):
            kernel = _load_kernel(resources)
            _write_kernel(memory, kernel)
        # Let go of the image's megabytes before the initramfs is built: they would add up
        # in the VMM's peak memory.
        placed = tuple(attrs.evolve(segment, data=b"") for segment in kernel.segments)
        kernel = attrs.evolve(kernel, segments=placed)
        with _step("placing the initramfs"):
            stdio = console_plan.init_stdio(resources, consoles)
            initrd = _place_initramfs(memory, resources, argv, stdio, kernel, mem_size)
        timings.mark("initramfs ready")
        with _step("writing the command line"):
            text = cmdline.compose(resources)
            if len(text) > kernel.cmdline_size:
                raise BuildError(
                    f"the kernel takes {kernel.cmdline_size} bytes of command line, not {len(text)}"
                )
            _write(memory, layout.CMDLINE_START, text.encode() + b"\0", "command line")
        with _step("writing the boot tables"):
            writes = _entry_writes(kernel, mem_size, len(text), initrd)
            vcpu_count = resources.machine.vcpu_count
            writes += mptable.mptable_writes(vcpu_count)
            # Kernels without MP-table parsing (Debian's cloud kernel) find the vCPUs, the
            # IOAPIC and the legacy devices' interrupts only in the ACPI tables.
            windows = [
                acpi.VirtioMmioWindow(slot.mmio_base, layout.VIRTIO_MMIO_SIZE, slot.irq)
                for slot in virtio_slots(resources)
            ]
            writes += acpi.acpi_tables(vcpu_count, not split_irqchip, LEGACY_DEVICES, windows)
            writes += smbios.smbios_writes(resources.smbios_oem_strings)
            for gpa, data in writes:
                _write(memory, gpa, data, "boot tables")

        with _step("creating the vCPUs"):
            # One KVM_GET_SUPPORTED_CPUID for all vCPUs: each gets its own copy filtered
            # from it.
            supported = kvm.get_supported_cpuid()
            if kvm.check_extension(Cap.TSC_DEADLINE_TIMER):
                supported = cpuid.with_tsc_deadline(supported)
            vcpus = [
                vcpu_boot.create_vcpu(vm, supported, resources.machine, index, kernel)
                for index in range(vcpu_count)
            ]
        machine = Machine(
            vm, memory, vcpus, IoBus(), guest_ports.DebugPort(timings.mark), [], stack.pop_all()
        )
        if split_irqchip:  # the I/O APIC's id is the one the MADT gives it
            machine.ioapic = IoApic(vm, apic_id=vcpu_count)
    try:
        with _step("attaching the devices"):
            _attach_devices(machine, resources, consoles)
    except BaseException:
        machine.close()
        raise
    return machine


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """One build step: any error a user can meet in it (KVM, memory, packages, images, I/O)
    becomes a BuildError that names the step."""
    try:
        yield
    except (VmrunError, OSError) as exc:
        raise BuildError(f"{what}: {describe(exc)}") from exc


def _create_irqchip(vm: Vm, split: bool) -> None:
    """The in-kernel PIC, I/O APIC and PIT; or, split, only the local APICs (the I/O APIC is
    vmrun's). No PIT then: KVM_CREATE_PIT2 is documented for an in-kernel irqchip, its
    interrupt would bypass the user-space I/O APIC through GSI 0's route and its reinjection
    waits for in-kernel EOIs; the guest (hardware-reduced ACPI) runs on the local APIC timer
    and kvm-clock anyway."""
    vm.set_tss_addr(TSS_ADDRESS)
    vm.set_identity_map_addr(IDENTITY_MAP_ADDRESS)
    if split:
        vm.enable_split_irqchip()
        return
    vm.create_irqchip()
    vm.create_pit2()


def _write(memory: GuestMemory, gpa: int, data: bytes, what: str) -> None:
    try:
        memory.write(gpa, data)
    except Exception as exc:
        raise BuildError(f"the {what} does not fit in guest memory at {gpa:#x}: {exc}") from exc


def _load_kernel(resources: VmResources) -> LoadedKernel:
    bundle = resources.kernel_bundle
    if bundle is not None:
        from runner.boot import krunfw  # only for a bundle (each import costs inside QEMU)

        try:
            return krunfw.load_bundle(bundle.library, bundle.guest_addr)
        except krunfw.KrunfwError as exc:
            raise BuildError(f"kernel_bundle: {exc}") from exc
    path = Path(resources.kernel.path) if resources.kernel.path else default_kernel().image
    key = "kernel.path" if resources.kernel.path else "the default kernel"
    mem_size = resources.machine.mem_size_mib * layout.MIB
    try:
        data = _kernel_file(path, key, resources.kernel.format, mem_size)
        return load_kernel(data, resources.kernel.format, name=str(path), mem_limit=mem_size)
    except (KernelImageError, OSError, ValueError) as exc:
        raise BuildError(str(exc)) from exc


def _kernel_file(path: Path, key: str, kernel_format: str, max_size: int) -> bytes | mmap.mmap:
    """The image's bytes (a regular file no larger than guest memory); a bzImage (the usual
    kernel, 10+ MiB) mapped rather than read, so that its pages can be let go while they are
    copied into guest memory (`_write_kernel`) instead of all adding up in the VMM's peak
    memory. The bzImage parser takes a mapping."""
    with open_regular(str(path), key, max_size) as file:
        head = file.read(bzimage.MAGIC_OFFSET + 4)
        if (
            kernel_format not in ("auto", "bzimage")
            or head[bzimage.MAGIC_OFFSET :] != bzimage.MAGIC
        ):
            rest = file.read(max_size + 1 - len(head))  # bounded where the size lies (/proc)
            if len(head) + len(rest) > max_size:
                raise BuildError(f"{key}: {path} is more than the guest's memory could hold")
            return head + rest
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _write_kernel(memory: GuestMemory, kernel: LoadedKernel) -> None:
    """Each segment, in chunks; where the image is a mapping, the pages copied so far are
    dropped from the VMM after each chunk (MADV_DONTNEED: they stay in the page cache)."""
    for segment in kernel.segments:
        data = memoryview(segment.data)
        source = data.obj if isinstance(data.obj, mmap.mmap) else None
        for offset in range(0, len(data), KERNEL_CHUNK):
            _write(
                memory, segment.guest_addr + offset, data[offset : offset + KERNEL_CHUNK], "kernel"
            )
            if source is not None:
                source.madvise(mmap.MADV_DONTNEED)
        data.release()
        if segment.mem_size > len(segment.data):  # fresh memory is zeros: only check that
            end = segment.guest_addr + segment.mem_size - 1  # the .bss lies in RAM
            _write(memory, end, b"\0", "kernel")


def _entry_writes(
    kernel: LoadedKernel, mem_size: int, cmdline_len: int, initrd: boot_params.Initrd
) -> list[tuple[int, bytes]]:
    """What the kernel's entry reads: for the PVH entry an hvm_start_info and a 32-bit GDT
    (the kernel builds its own page tables); for the 64-bit entry the zero page, a GDT and
    identity page tables."""
    e820 = boot_params.e820_map(mem_size)
    if kernel.kind == "pvh":
        # The RSDP is the first of the ACPI tables.
        info = pvh.start_info_writes(
            e820, cmdline_addr=layout.CMDLINE_START, rsdp_addr=acpi.ACPI_ADDRESS, initrd=initrd
        )
        return info + gdt.boot_gdt_writes(gdt.PVH_GDT)
    zero_page = boot_params.zero_page(
        kernel.setup_header, e820=e820, cmdline_len=cmdline_len, initrd=initrd
    )
    writes = [(layout.ZERO_PAGE_START, zero_page), *gdt.boot_gdt_writes()]
    return writes + page_tables.page_table_writes()


def _place_initramfs(
    memory: GuestMemory,
    resources: VmResources,
    argv: Sequence[str],
    stdio: console_plan.InitStdio,
    kernel: LoadedKernel,
    mem_size: int,
) -> boot_params.Initrd:
    parts = guest_initramfs_parts(
        resources,
        argv,
        console=stdio.console,
        stdio_ports=stdio.stdio_ports,
        virtio_ports=stdio.virtio_ports,
    )
    size = sum(len(part) for part in parts)
    top = min(mem_size, layout.MMIO_GAP_START)
    address = (top - size) & ~(layout.KIB * 4 - 1)
    # init_size counts from the kernel's lowest segment: 1 MiB for a bzImage, where its
    # headers say for an ELF vmlinux (16 MiB for Linux's), the bundle's load address.
    kernel_end = kernel.segments[0].guest_addr + kernel.init_size
    if address < kernel_end:
        need = -(-(kernel_end + size + layout.GUEST_WORKING_SET) // layout.MIB)
        raise BuildError(
            f"{resources.machine.mem_size_mib} MiB is too small for the kernel and the "
            f"initramfs ({size // layout.KIB} KiB); give machine.mem_size_mib >= {need}"
        )
    offset = address
    for part in parts:
        _write(memory, offset, part, "initramfs")
        offset += len(part)
    return boot_params.Initrd(address, size)


# The PC devices as the DSDT describes them (in hardware-reduced ACPI mode Linux finds their
# interrupts only there), at the ports and ISA IRQs `_attach_devices` gives them. All four
# COM ports, as Firecracker: Linux's 8250 driver probes the four legacy addresses anyway, and
# an absent port reads back 0xff and stays unused; COM1 and COM3 (COM2 and COM4) share an IRQ.
LEGACY_DEVICES = (
    *(
        acpi.LegacyDevice(
            f"COM{index + 1}", "PNP0501", ((base, serial.PORT_COUNT),), irq, index + 1, True
        )
        for index, (base, irq) in enumerate(serial.COM_PORTS)
    ),
    acpi.LegacyDevice(
        "PS2_", "PNP0303", ((i8042.DATA_PORT, 1), (i8042.COMMAND_PORT, 1)), i8042.IRQ
    ),
    acpi.LegacyDevice("RTC_", "PNP0B00", ((cmos.PORT, cmos.PORT_COUNT),), layout.RTC_IRQ),
)


def _attach_devices(
    machine: Machine, resources: VmResources, consoles: Sequence[console_plan.ConsolePlan]
) -> None:
    bus = machine.io_bus
    if machine.ioapic is not None:
        machine.mmio_bus.insert(layout.IOAPIC_START, IOAPIC_MMIO_SIZE, machine.ioapic)
    for index, port in enumerate(resources.serial_consoles):
        base, irq = serial.COM_PORTS[index]
        sink = _output(port.output, index, machine.resources)
        if sink is not None:
            machine.outputs.append(sink)
        uart = serial.Serial8250(sink, _edge(machine, irq))
        machine.serials.append(uart)
        bus.insert(base, serial.PORT_COUNT, uart)
        _connect_input(port.input, uart, f"ttyS{index}", machine.resources)
    bus.insert(i8042.DATA_PORT, i8042.PORT_SPAN, i8042.I8042(lambda: machine.end(REBOOT)))
    mem = resources.machine.mem_size_mib * layout.MIB
    below = min(mem, layout.MMIO_GAP_START)
    bus.insert(cmos.PORT, cmos.PORT_COUNT, cmos.Cmos(below, mem - below))
    bus.insert(pci_absent.CONFIG_ADDRESS, pci_absent.PORT_SPAN, pci_absent.PciAbsent())
    bus.insert(
        guest_ports.EXIT_PORT,
        guest_ports.EXIT_PORT_WIDTH,
        guest_ports.ExitPort(lambda status: machine.end(Ending(status))),
    )
    bus.insert(guest_ports.DEBUG_PORT, 1, machine.debug)
    for slot in virtio_slots(resources):
        make = VIRTIO_BACKENDS.get(slot.kind.name)
        if make is None:  # refused before the build (runner/unsupported.py)
            raise BuildError(f"{slot.kind.what} is not built yet")
        _attach_virtio(machine, slot, make(machine, slot, consoles))


def _console(
    machine: Machine, slot: VirtioSlot, consoles: Sequence[console_plan.ConsolePlan]
) -> VirtioBackend:
    console = build_console(consoles[slot.index], machine.resources)
    # At the end of a run (not at a stop by a signal), what the guest queued is written out
    # before the device goes: the init reports the status right after the workload's last
    # write returned, which was when the bytes were queued, not yet written.
    machine.drains.append(console.drain)
    return console


def _block(
    machine: Machine, slot: VirtioSlot, _consoles: Sequence[console_plan.ConsolePlan]
) -> VirtioBackend:
    # Only for a VM with disks: imports cost at emulated speed (the emulated host).
    from runner.devices.virtio.blk import Qcow2Disk, RawDisk, VirtioBlk

    config = slot.config
    assert isinstance(config, BlockDevice)
    # Where the sectors come from, by format: the one place a kind of disk is chosen.
    disk = (
        Qcow2Disk(config, f"block[{slot.index}]") if config.format == "qcow2" else RawDisk(config)
    )
    try:
        device = VirtioBlk(config, disk)
    except BaseException:
        disk.close()
        raise
    # Closed after the transport (registered after this), whose close stops the worker.
    machine.resources.callback(device.close)
    return device


# The built device kinds (State.BUILT in runner/config/slots.py): each slot's backend.
VIRTIO_BACKENDS: dict[
    str, Callable[[Machine, VirtioSlot, Sequence[console_plan.ConsolePlan]], VirtioBackend]
] = {
    "console": _console,
    "rng": lambda _machine, _slot, _consoles: VirtioRng(),
    "balloon": lambda _machine, _slot, _consoles: VirtioBalloon(),
    "block": _block,
}


def _attach_virtio(machine: Machine, slot: VirtioSlot, backend: VirtioBackend) -> None:
    """`backend` behind a virtio-mmio window, its interrupt on the slot's GSI; torn down
    (workers joined) before the VM and guest memory are."""
    if machine.ioapic is not None:
        raise_edge = functools.partial(machine.ioapic.raise_edge, slot.irq)
        line = InterruptLine.relayed(machine.watch, raise_edge)
    else:
        line = InterruptLine.irqfd(machine.vm, slot.irq)
    try:
        transport = MmioTransport(backend, machine.memory, machine.vm, slot.mmio_base, line)
    except BaseException:
        line.close()
        raise
    machine.resources.callback(transport.close)
    machine.mmio_bus.insert(slot.mmio_base, layout.VIRTIO_MMIO_SIZE, transport)
    machine.virtio.append(transport)


def _edge(machine: Machine, irq: int) -> Callable[[], None]:
    """An ISA interrupt: a rising edge on I/O APIC pin `irq` (ISA IRQs are identity-mapped),
    the user-space one with a split irqchip, else the in-kernel PIC and I/O APIC."""
    if machine.ioapic is not None:
        return functools.partial(machine.ioapic.raise_edge, irq)
    vm = machine.vm

    def pulse() -> None:
        vm.irq_line(irq, 1)
        vm.irq_line(irq, 0)

    return pulse


def _connect_input(name: str, uart: serial.Serial8250, port: str, stack: ExitStack) -> None:
    """The UART's input from vmrun's stdin (a terminal passes keys to the guest) or a file."""
    if name == "null":
        return
    if name == "stdin":
        fd = 0
        try:
            os.fstat(fd)
        except OSError as exc:
            raise BuildError(f"{port}'s input is stdin, which is closed") from exc
        if os.isatty(fd):
            stack.enter_context(terminal.raw_mode(fd))
    else:
        try:  # non-blocking: a FIFO without a writer yet must not hold the boot up
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise BuildError(f"{port}'s input {name}: {exc.strerror}") from exc
        stack.callback(os.close, fd)
    named_fifo = name != "stdin" and stat.S_ISFIFO(os.fstat(fd).st_mode)
    feeder = serial_input.SerialInput(fd, uart, port, wait_for_writers=named_fifo)
    stack.callback(feeder.close)
    feeder.start()


def _output(name: str, index: int, stack: ExitStack) -> SerialOutput | None:
    """Where serial console `index`'s output goes, through a writer that never blocks a vCPU
    (closed, so drained, before the stream it writes)."""
    key = f"serial_consoles[{index}].output"
    if name == "null":
        return None
    if name in ("stdout", "stderr"):
        stream = sys.stdout.buffer if name == "stdout" else sys.stderr.buffer
        what = f"vmrun's {name}"
    elif port := output_ports.port_device(key):  # the vmrun outside writes the file
        stream = stack.enter_context(open(port, "wb"))  # noqa: SIM115 (the stack closes it)
        what = name
    else:
        stream = stack.enter_context(open_output_file(name, key))
        what = name
    output = SerialOutput(stream, f"{key} ({what})")
    stack.callback(output.close)
    return output
