"""Real KVM: tiny 16-bit real-mode guests on this host's /dev/kvm (skipped where there is none).

They run on any /dev/kvm, PVM included (which cannot boot Linux but runs these)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from runner.kvm import (
    Cap,
    ExitReason,
    GuestMemory,
    IoDirection,
    Kvm,
    KvmError,
    Vcpu,
    VcpuExit,
    Vm,
)
from runner.kvm.native import ffi, lib

# 16-bit real-mode instructions
MOV_AL = b"\xb0"  # mov al, imm8
OUT = b"\xe6"  # out imm8, al
IN = b"\xe4"  # in al, imm8
HLT = b"\xf4"
JMP_SELF = b"\xeb\xfe"  # jmp $


def mov_byte_to(address: int, value: int) -> bytes:  # mov byte [address], value
    return b"\xc6\x06" + address.to_bytes(2, "little") + bytes([value])


def mov_word_to(address: int, value: int) -> bytes:  # mov word [address], value
    return b"\xc7\x06" + address.to_bytes(2, "little") + value.to_bytes(2, "little")


def mov_al_from(address: int) -> bytes:  # mov al, [address]
    return b"\xa0" + address.to_bytes(2, "little")


def set_ds(segment: int) -> bytes:  # mov ax, segment; mov ds, ax
    return b"\xb8" + segment.to_bytes(2, "little") + b"\x8e\xd8"


MMIO_ADDR = 0x8000  # outside the test guests' 16 KiB of RAM


def run_expecting(vcpu, reason: ExitReason) -> VcpuExit:
    exit_ = vcpu.run()
    assert exit_.reason is reason, f"expected {reason.name}, got {exit_}"
    return exit_


# ---- /dev/kvm -------------------------------------------------------------------------------


def test_system_queries(kvm: Kvm) -> None:
    assert kvm.check_extension(Cap.USER_MEMORY) == 1
    assert kvm.check_extension(Cap.NR_MEMSLOTS) > 0
    assert kvm.vcpu_mmap_size() >= 4096
    cpuid = kvm.get_supported_cpuid()
    assert any(entry.function == 0 for entry in cpuid)
    msrs = kvm.get_msr_index_list()
    assert 0x174 in msrs  # IA32_SYSENTER_CS, on every x86 KVM


def test_opening_what_is_not_kvm_fails_cleanly() -> None:
    with pytest.raises(KvmError) as info:
        Kvm("/nonexistent/kvm")
    assert (info.value.op, info.value.errno) == ("open /nonexistent/kvm", errno.ENOENT)
    with pytest.raises(KvmError) as info:
        Kvm("/dev/null")  # opens, then the API version ioctl fails (and the fd is closed)
    assert (info.value.op, info.value.errno) == ("KVM_GET_API_VERSION", errno.ENOTTY)


# ---- exits --------------------------------------------------------------------------------


def test_out_then_hlt(make_guest) -> None:
    guest = make_guest(MOV_AL + b"\x42" + OUT + b"\x10" + HLT)
    io = run_expecting(guest.vcpu, ExitReason.IO).io
    assert (io.port, io.direction, io.size, io.count, io.data) == (
        0x10,
        IoDirection.OUT,
        1,
        1,
        b"\x42",
    )
    run_expecting(guest.vcpu, ExitReason.HLT)
    assert guest.vcpu.get_regs().rip == 0x1000 + 5  # just past the hlt


def test_in_gets_the_value_user_space_supplies(make_guest) -> None:
    guest = make_guest(IN + b"\x12" + OUT + b"\x13" + HLT)
    exit_ = run_expecting(guest.vcpu, ExitReason.IO)
    assert (exit_.io.port, exit_.io.direction) == (0x12, IoDirection.IN)
    with pytest.raises(KvmError):
        exit_.complete_io_in(b"\x99\x99")  # an IN of one byte takes one byte
    exit_.complete_io_in(b"\x99")
    assert run_expecting(guest.vcpu, ExitReason.IO).io.data == b"\x99"
    run_expecting(guest.vcpu, ExitReason.HLT)


def test_mmio_write_and_read(make_guest) -> None:
    code = (
        mov_byte_to(MMIO_ADDR, 0x37)
        + mov_word_to(MMIO_ADDR + 2, 0xBEEF)
        + mov_al_from(MMIO_ADDR + 4)
        + OUT
        + b"\x11"
        + HLT
    )
    guest = make_guest(code)
    mmio = run_expecting(guest.vcpu, ExitReason.MMIO).mmio
    assert (mmio.address, mmio.is_write, mmio.data) == (MMIO_ADDR, True, b"\x37")
    mmio = run_expecting(guest.vcpu, ExitReason.MMIO).mmio
    assert (mmio.address, mmio.is_write, mmio.data) == (MMIO_ADDR + 2, True, b"\xef\xbe")
    exit_ = run_expecting(guest.vcpu, ExitReason.MMIO)
    assert (exit_.mmio.address, exit_.mmio.is_write, len(exit_.mmio.data)) == (
        MMIO_ADDR + 4,
        False,
        1,
    )
    exit_.complete_mmio_read(b"\x5a")
    assert run_expecting(guest.vcpu, ExitReason.IO).io.data == b"\x5a"
    run_expecting(guest.vcpu, ExitReason.HLT)


def test_ram_in_a_second_region_beyond_a_gap(make_guest) -> None:
    # RAM at 0..16K and 64K..68K; the guest writes into both and into the gap between.
    code = mov_byte_to(0x2000, 0x11) + set_ds(0x1000) + mov_byte_to(0x10, 0x22) + HLT
    guest = make_guest(code, regions=[(0, 0x4000), (0x10000, 0x1000)])
    run_expecting(guest.vcpu, ExitReason.HLT)
    assert guest.memory.read(0x2000, 1) == b"\x11"
    assert guest.memory.read(0x10010, 1) == b"\x22"

    gap = make_guest(set_ds(0x0800) + mov_byte_to(0, 0x33) + HLT, regions=[(0, 0x4000)])
    mmio = run_expecting(gap.vcpu, ExitReason.MMIO).mmio
    assert (mmio.address, mmio.data) == (0x8000, b"\x33")


def test_exit_details_are_checked(make_guest) -> None:
    guest = make_guest(MOV_AL + b"\x01" + OUT + b"\x10" + OUT + b"\x10" + HLT)
    first = run_expecting(guest.vcpu, ExitReason.IO)
    with pytest.raises(KvmError, match="the exit is IO"):
        _ = first.mmio
    run_expecting(guest.vcpu, ExitReason.IO)
    with pytest.raises(KvmError, match="has run since"):
        _ = first.io


# ---- interrupting KVM_RUN -----------------------------------------------------------------


def test_immediate_exit_gives_eintr(make_guest) -> None:
    guest = make_guest(MOV_AL + b"\x42" + OUT + b"\x10" + HLT)
    if not guest.vm.check_extension(Cap.IMMEDIATE_EXIT):
        pytest.skip("this KVM has no KVM_CAP_IMMEDIATE_EXIT")
    guest.vcpu.immediate_exit = True
    assert lib.vmrun_kvm_run(guest.vcpu.fd) == -errno.EINTR
    assert guest.vcpu.run().reason is ExitReason.INTR
    guest.vcpu.immediate_exit = False
    assert run_expecting(guest.vcpu, ExitReason.IO).io.data == b"\x42"


@pytest.fixture
def sigusr1_handler() -> Iterator[None]:
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_run_releases_the_gil_and_a_signal_stops_it(make_guest, sigusr1_handler) -> None:
    """A vCPU spinning in the guest leaves Python free to run elsewhere; immediate_exit plus a
    signal to its thread brings it back with INTR."""
    guest = make_guest(JMP_SELF)
    results: list[object] = []

    def vcpu_thread() -> None:
        try:
            results.append(guest.vcpu.run())
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    thread = threading.Thread(target=vcpu_thread, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not guest.vcpu._running and time.monotonic() < deadline:
        time.sleep(0.001)
    # This thread runs Python while the vCPU thread is inside KVM_RUN: the GIL is free.
    spins, until = 0, time.monotonic() + 0.05
    while time.monotonic() < until:
        spins += 1
    assert spins > 1000 and thread.is_alive() and not results

    with pytest.raises(KvmError, match="running"):
        guest.vcpu.close()  # refused: unmapping kvm_run under the thread would crash it
    guest.vcpu.immediate_exit = True  # for a thread about to enter KVM_RUN
    signal.pthread_kill(thread.ident, signal.SIGUSR1)  # for a thread inside it
    thread.join(5)
    assert not thread.is_alive()
    assert len(results) == 1 and getattr(results[0], "reason", results[0]) is ExitReason.INTR


def test_a_vcpu_runs_in_one_thread_at_a_time_and_never_after_close(
    make_guest, sigusr1_handler
) -> None:
    # `run` and `close` check and change the vCPU's state under one lock: a second run while
    # one is in progress is refused, and so is a run after close (never KVM_RUN on a closed,
    # maybe reused, fd).
    guest = make_guest(JMP_SELF)
    thread = threading.Thread(target=guest.vcpu.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not guest.vcpu._running and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(KvmError, match="running in another thread"):
        guest.vcpu.run()
    guest.vcpu.immediate_exit = True
    signal.pthread_kill(thread.ident, signal.SIGUSR1)
    thread.join(5)
    assert not thread.is_alive()
    guest.vcpu.close()
    with pytest.raises(KvmError, match="the vCPU is closed"):
        guest.vcpu.run()


# ---- notifications and interrupt controllers --------------------------------------------


def test_ioeventfd_signals_without_an_exit(make_guest) -> None:
    code = MOV_AL + b"\x07" + OUT + b"\x20" + OUT + b"\x10" + HLT
    guest = make_guest(code)
    event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        guest.vm.ioeventfd(event, 0x20, 1, pio=True)
        assert run_expecting(guest.vcpu, ExitReason.IO).io.port == 0x10  # not 0x20
        assert os.eventfd_read(event) == 1
        guest.vm.remove_ioeventfd(event, 0x20, 1, pio=True)
        with pytest.raises(KvmError):
            guest.vm.remove_ioeventfd(event, 0x20, 1, pio=True)  # not registered any more
    finally:
        os.close(event)


def test_in_kernel_irqchip_pit_lapic_irqfd(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        vm.set_tss_addr(0xFFFBD000)
        vm.set_identity_map_addr(0xFFFBC000)
        vm.create_irqchip()
        vm.create_pit2()
        vcpu = vm.create_vcpu(0)
        lapic = vcpu.get_lapic()
        assert len(lapic) == 1024
        vcpu.set_lapic(lapic)
        vm.irq_line(4, 1)
        vm.irq_line(4, 0)
        event = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            vm.irqfd(event, 5)
            vm.remove_irqfd(event, 5)
        finally:
            os.close(event)


def test_split_irqchip(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        assert vm.check_extension(Cap.SPLIT_IRQCHIP)
        vm.enable_split_irqchip()
        with pytest.raises(KvmError) as info:
            vm.create_irqchip()  # one kind of irqchip per VM
        assert info.value.op == "KVM_CREATE_IRQCHIP"
        vcpu = vm.create_vcpu(0)
        assert len(vcpu.get_lapic()) == 1024  # the local APIC is still in the kernel


APIC_BASE, APIC_SPIV, APIC_SOFTWARE_ENABLE = 0xFEE0_0000, 0xF0, 0x100
MSI_ADDRESS = 0xFEE0_0000  # physical destination: APIC id 0
MSI_LEVEL_ASSERT = 1 << 15 | 1 << 14  # trigger mode level, level assert


def enable_lapic(vcpu) -> None:
    """Software-enable the local APIC (SPIV bit 8): a disabled one takes no fixed interrupt."""
    lapic = vcpu.get_lapic()
    lapic[APIC_SPIV : APIC_SPIV + 4] = (APIC_SOFTWARE_ENABLE | 0xFF).to_bytes(4, "little")
    vcpu.set_lapic(lapic)


def test_split_irqchip_msi_routes(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        vm.enable_split_irqchip()
        enable_lapic(vm.create_vcpu(0))
        data = 0x40 | MSI_LEVEL_ASSERT
        vm.set_gsi_routing([(5, MSI_ADDRESS, data), (6, MSI_ADDRESS, 0x41)])
        vm.set_gsi_routing([])  # an empty table is a table too
        assert vm.signal_msi(MSI_ADDRESS, data) == 1  # local APIC 0 takes it
        assert vm.signal_msi(MSI_ADDRESS | 7 << 12, data) == 0  # there is no local APIC 7
    with kvm.create_vm() as vm, pytest.raises(KvmError) as info:
        vm.signal_msi(MSI_ADDRESS, data)  # no irqchip in the kernel at all
    assert info.value.op == "KVM_SIGNAL_MSI"


PM_CODE, GDT_ADDR, IDT_ADDR = 0x1000, 0x500, 0x600
FLAT_CODE32, FLAT_DATA32 = 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF  # base 0, 4 GiB
INTERRUPT_GATE32 = 0x8E  # present, DPL 0, 32-bit interrupt gate


def protected_mode_vcpu(vm: Vm, memory: GuestMemory, vector: int, handler: bytes) -> Vcpu:
    """`vm`'s vCPU 0, split irqchip, in flat 32-bit protected mode at PM_CODE running `sti;
    hlt` in a loop, with `handler` at PM_CODE + 0x10 for `vector` (a real-mode IVT would do,
    but QEMU's emulated SVM, where boot tests run, does not vector through it)."""
    handler_addr = PM_CODE + 0x10
    memory.write(PM_CODE, b"\xfb" + HLT + b"\xeb\xfd")  # sti; hlt; jmp back to the hlt
    memory.write(handler_addr, handler)
    memory.write(GDT_ADDR, struct.pack("<QQQ", 0, FLAT_CODE32, FLAT_DATA32))
    gate = struct.pack(
        "<HHBBH", handler_addr & 0xFFFF, 0x08, 0, INTERRUPT_GATE32, handler_addr >> 16
    )
    memory.write(IDT_ADDR + vector * 8, gate)
    vm.map_memory(memory)
    vm.enable_split_irqchip()
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    for segment, selector, kind in [(sregs.cs, 0x08, 0xB)] + [
        (seg, 0x10, 0x3) for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss)
    ]:
        segment.base, segment.limit, segment.selector, segment.type = 0, 0xFFFF_FFFF, selector, kind
        segment.present, segment.dpl, segment.db, segment.s, segment.l, segment.g = 1, 0, 1, 1, 0, 1
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, 3 * 8 - 1
    sregs.idt.base, sregs.idt.limit = IDT_ADDR, 256 * 8 - 1
    sregs.cr0 |= 1  # PE
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags, regs.rsp = PM_CODE, 0x2, 0x3000
    vcpu.set_regs(regs)
    enable_lapic(vcpu)
    return vcpu


@contextlib.contextmanager
def kicked_after(vcpu: Vcpu, seconds: float) -> Iterator[None]:
    """Kick this thread's vCPU out of KVM_RUN (INTR, and every later run too) if the block
    lasts `seconds`: a guest halted for an interrupt that never comes fails, never hangs."""
    done, thread_id = threading.Event(), threading.get_ident()

    def kick() -> None:
        if not done.wait(seconds):
            vcpu.immediate_exit = True
            signal.pthread_kill(thread_id, signal.SIGUSR1)

    watchdog = threading.Thread(target=kick, daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()


# Marked `boot`: PVM (a /dev/kvm for guests built for it) delivers the interrupt but never
# reports the EOI; this runs where boot tests do, on a KVM that behaves as hardware KVM does.
@pytest.mark.boot
@pytest.mark.parametrize("level", [True, False], ids=["level-route", "edge-route"])
def test_split_irqchip_reports_the_eoi_of_a_level_routed_vector(
    kvm: Kvm, level: bool, sigusr1_handler: None
) -> None:
    """KVM reports the EOI of an MSI's vector (KVM_EXIT_IOAPIC_EOI) when a level-triggered MSI
    route of an I/O APIC pin names it, and only then: why the user-space I/O APIC keeps such
    routes."""
    vector = 0x40
    # mov dword [APIC_BASE + 0xb0], 0 (the local APIC's EOI register); out 0x10, 0x42; hlt
    eoi = b"\xc7\x05" + (APIC_BASE + 0xB0).to_bytes(4, "little") + bytes(4)
    with GuestMemory([(0, 0x4000)]) as memory, kvm.create_vm() as vm:
        vcpu = protected_mode_vcpu(vm, memory, vector, eoi + MOV_AL + b"\x42" + OUT + b"\x10" + HLT)
        data = vector | MSI_LEVEL_ASSERT
        route = data if level else vector  # the same vector, edge-triggered
        vm.set_gsi_routing([(5, MSI_ADDRESS, route)])
        assert vm.signal_msi(MSI_ADDRESS, data) == 1
        with kicked_after(vcpu, 30):
            if level:
                exit_ = run_expecting(vcpu, ExitReason.IOAPIC_EOI)
                assert exit_.eoi == vector
                with pytest.raises(KvmError, match="the exit is IOAPIC_EOI"):
                    _ = exit_.io
            assert run_expecting(vcpu, ExitReason.IO).io.data == b"\x42"


# ---- vCPU state ---------------------------------------------------------------------------


def test_registers_msrs_and_cpuid_round_trip(kvm: Kvm, make_guest) -> None:
    vcpu = make_guest(HLT).vcpu
    regs = vcpu.get_regs()
    regs.rax, regs.r15 = 0x1234, 0xFFFF_FFFF_FFFF_FFFF
    vcpu.set_regs(regs)
    assert (vcpu.get_regs().rax, vcpu.get_regs().r15) == (0x1234, 0xFFFF_FFFF_FFFF_FFFF)

    sregs = vcpu.get_sregs()
    sregs.es.base, sregs.es.selector = 0x100, 0x10
    vcpu.set_sregs(sregs)
    assert (vcpu.get_sregs().es.base, vcpu.get_sregs().es.selector) == (0x100, 0x10)

    fpu = vcpu.get_fpu()
    fpu.fcw, fpu.xmm[3][15] = 0x27F, 0xA5  # (not mxcsr: PVM reads it back as 0)
    vcpu.set_fpu(fpu)
    assert (vcpu.get_fpu().fcw, vcpu.get_fpu().xmm[3][15]) == (0x27F, 0xA5)

    vcpu.set_msrs({0x174: 0x10, 0x175: 0x8000})  # IA32_SYSENTER_CS, _ESP
    assert vcpu.get_msrs([0x174, 0x175]) == {0x174: 0x10, 0x175: 0x8000}
    with pytest.raises(KvmError, match="MSR 0xdeadbeef"):
        vcpu.get_msrs([0x174, 0xDEADBEEF])

    supported = kvm.get_supported_cpuid()
    vcpu.set_cpuid2(supported)
    # KVM adjusts some bits at run time (APIC id, OSXSAVE ...): compare the leaves only.
    leaves = [(entry.function, entry.index) for entry in supported]
    assert [(entry.function, entry.index) for entry in vcpu.get_cpuid2()] == leaves


def test_closing_the_vm_closes_its_vcpus(kvm: Kvm) -> None:
    with GuestMemory.flat(0x4000) as memory:
        vm = kvm.create_vm()
        with vm:
            vm.map_memory(memory)
            vcpus = [vm.create_vcpu(i) for i in range(2)]
        assert vm.closed and all(vcpu.closed for vcpu in vcpus)
        vm.close()  # idempotent
        with pytest.raises(KvmError) as info:
            vcpus[0].run()
        assert info.value.errno == errno.EBADF
        with pytest.raises(KvmError):
            vcpus[0].immediate_exit = True


def test_fast_registers_are_answered_without_an_exit(make_guest) -> None:
    # A virtio-mmio InterruptStatus at 0x8060 and its InterruptACK at 0x8064, answered in C
    # by vmrun_kvm_run_fast: the guest reads 3, acknowledges bit 0, reads 2, and Python sees
    # only its port writes; an MMIO access elsewhere still exits.
    read_status = b"\x66\xa1" + (MMIO_ADDR + 0x60).to_bytes(2, "little")  # mov eax, [moffs]
    ack_bit_0 = (
        b"\x66\xc7\x06" + (MMIO_ADDR + 0x64).to_bytes(2, "little") + (1).to_bytes(4, "little")
    )
    out_eax = b"\x66\xe7"  # out imm8, eax
    code = (
        read_status + out_eax + b"\x11" + ack_bit_0 + read_status + out_eax + b"\x12"
        + mov_byte_to(MMIO_ADDR, 0x37) + HLT
    )  # fmt: skip
    guest = make_guest(code)
    status = ffi.new("uint32_t *", 3)
    table = ffi.new("struct vmrun_fast_mmio[]", 1)
    table[0].status_addr = MMIO_ADDR + 0x60
    table[0].status = status
    fast = (table, 1)
    exit_ = guest.vcpu.run(fast)
    assert (exit_.reason, exit_.io.port, exit_.io.data) == (ExitReason.IO, 0x11, b"\x03\0\0\0")
    exit_ = guest.vcpu.run(fast)
    assert (exit_.reason, exit_.io.port, exit_.io.data) == (ExitReason.IO, 0x12, b"\x02\0\0\0")
    assert status[0] == 2
    exit_ = guest.vcpu.run(fast)
    assert exit_.reason is ExitReason.MMIO and exit_.mmio.address == MMIO_ADDR
    assert guest.vcpu.run(fast).reason is ExitReason.HLT
