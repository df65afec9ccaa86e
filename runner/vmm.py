"""Running a built Machine until the guest ends: one thread per vCPU, the main thread waiting.

Kernel facts this relies on (STYLE 15):
- KVM_RUN is a C call through cffi, which releases the GIL, so vCPU threads run in parallel.
- A signal delivered to a thread inside KVM_RUN makes it return -EINTR (never restarted);
  `immediate_exit` makes the next KVM_RUN return -EINTR at once, closing the race where the
  signal lands just before the call. Stopping sets both.
- Python runs signal handlers in the main thread only, but the C-level handler it installs
  runs in whichever thread the signal is sent to, which is all the kick needs.
- Without ACPI, a guest's power-off only halts its CPUs, so the VM ends when the init reports
  its status on the exit port (it syncs first), not when the guest stops.
"""

from __future__ import annotations

import signal
import threading

from runner import timings
from runner.kvm.native import ExitReason, IoDirection, KvmError, SystemEventType, ffi
from runner.kvm.vcpu import Vcpu
from runner.machine import CRASH, POWER_OFF, REBOOT, VMM_FAILURE, Ending, Machine

KICK_SIGNAL = signal.SIGUSR1


def _kicked(_signum: int, _frame: object) -> None:
    """KICK_SIGNAL's handler: the signal's delivery is all the kick needs (KVM_RUN returns)."""


def triple_fault(vcpu_id: int) -> Ending:
    # Only the vCPU: on AMD, KVM resets a vCPU's state after its shutdown intercept, so its
    # registers no longer say where it faulted.
    return Ending(VMM_FAILURE, f"the guest triple-faulted (KVM_EXIT_SHUTDOWN on vCPU {vcpu_id})")


class Vmm:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._threads: list[threading.Thread] = []
        # The virtio devices' InterruptStatus and InterruptACK, answered by the vCPU threads
        # in C (the table lives as long as this Vmm).
        registers = [transport.fast_register for transport in machine.virtio]
        table = ffi.new("struct vmrun_fast_mmio[]", max(1, len(registers)))
        for entry, (address, status) in zip(table, registers, strict=False):
            entry.status_addr = address
            entry.status = status
        self._fast_mmio = (table, len(registers))

    def end(self, ending: Ending) -> None:
        """The first ending wins (Machine.end); every vCPU is kicked out of KVM_RUN."""
        self.machine.end(ending)

    def _kick(self) -> None:
        for vcpu, thread in zip(self.machine.vcpus, self._threads, strict=False):
            try:
                vcpu.immediate_exit = True
            except KvmError:
                continue
            if thread.ident is not None and thread.is_alive():
                signal.pthread_kill(thread.ident, KICK_SIGNAL)

    def run(self) -> Ending:
        """Run until the guest ends, Ctrl-C or SIGTERM (128 + the signal's number)."""
        # The kick's handler does nothing and stays installed after the run: a kick sent to
        # a vCPU thread as it exits can be delivered after `run` has returned, and the
        # default action would kill the process (a CI run died so).
        signal.signal(KICK_SIGNAL, _kicked)
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_signal),
            signal.SIGINT: signal.signal(signal.SIGINT, self._on_signal),
        }
        try:
            self._threads = [
                threading.Thread(target=self._vcpu_loop, args=(vcpu,), name=f"vcpu{vcpu.id}")
                for vcpu in self.machine.vcpus
            ]
            self.machine.when_ended(self._kick)
            for thread in self._threads:
                thread.start()
            timings.mark("kernel entered (vCPUs running)")
            self.machine.serve_until_ended()
        finally:
            self.end(Ending(VMM_FAILURE, "vmrun stopped"))
            for thread in self._threads:
                while thread.is_alive():
                    self.end(Ending(VMM_FAILURE, "vmrun stopped"))
                    thread.join(0.05)
            for number, handler in previous.items():
                signal.signal(number, handler)
        ending = self.machine.ending
        assert ending is not None
        return ending

    def _on_signal(self, number: int, _frame: object) -> None:
        self.end(Ending(128 + number, f"stopped by {signal.Signals(number).name}", stopped=True))

    def _vcpu_loop(self, vcpu: Vcpu) -> None:
        try:
            while not self.machine.ended:
                ending = self._handle(vcpu)
                if ending is not None:
                    self.end(ending)
        except KvmError as exc:
            self.end(Ending(VMM_FAILURE, f"vCPU {vcpu.id}: {exc}"))
        except Exception as exc:  # a VMM bug: end the VM and say so, never hang
            self.end(Ending(VMM_FAILURE, f"vCPU {vcpu.id}: internal error: {exc!r}"))

    def _handle(self, vcpu: Vcpu) -> Ending | None:
        machine = self.machine
        exit_ = vcpu.run(self._fast_mmio)
        reason = exit_.reason
        if reason is ExitReason.IO:
            io = exit_.io
            if io.direction is IoDirection.OUT:
                for i in range(io.count):
                    value = int.from_bytes(io.data[i * io.size : (i + 1) * io.size], "little")
                    machine.io_bus.write(io.port, io.size, value)
            else:
                values = b"".join(
                    machine.io_bus.read(io.port, io.size).to_bytes(io.size, "little")
                    for _ in range(io.count)
                )
                exit_.complete_io_in(values)
            return None  # the exit port and the i8042's reset end the VM themselves
        if reason is ExitReason.MMIO:
            mmio = exit_.mmio
            size = len(mmio.data)
            if mmio.is_write:
                machine.mmio_bus.write(mmio.address, size, int.from_bytes(mmio.data, "little"))
            else:  # addresses nobody claims read as zeros
                value = machine.mmio_bus.read(mmio.address, size)
                exit_.complete_mmio_read(value.to_bytes(size, "little"))
            return None
        if reason is ExitReason.IOAPIC_EOI:  # split irqchip: a level vector's EOI
            if machine.ioapic is not None:
                machine.ioapic.end_of_interrupt(exit_.eoi)
            return None
        if reason in (ExitReason.INTR, ExitReason.HLT):
            return None
        if reason is ExitReason.SHUTDOWN:
            return triple_fault(vcpu.id)
        if reason is ExitReason.SYSTEM_EVENT:
            kind = exit_.system_event.type
            if kind == SystemEventType.RESET:
                return REBOOT
            if kind == SystemEventType.SHUTDOWN:
                return POWER_OFF
            return CRASH
        if reason is ExitReason.INTERNAL_ERROR:
            info = exit_.internal
            return Ending(VMM_FAILURE, f"KVM internal error {info.suberror} on vCPU {vcpu.id}")
        if reason is ExitReason.FAIL_ENTRY:
            fail = exit_.fail_entry
            return Ending(
                VMM_FAILURE,
                f"KVM could not enter vCPU {vcpu.id} "
                f"(reason {fail.hardware_entry_failure_reason:#x})",
            )
        return Ending(VMM_FAILURE, f"vCPU {vcpu.id}: unexpected exit {reason.name}")


def run_machine(machine: Machine) -> Ending:
    ending = None
    try:
        ending = Vmm(machine).run()
        return ending
    finally:
        # Stopped by the user (or by a vmrun error): vmrun ends now, not when a reader of its
        # output that may never read again has taken what the consoles still buffer.
        machine.close(drain=ending is not None and not ending.stopped)
