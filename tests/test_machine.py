"""Machine and Vmm without KVM: fake vCPUs (STYLE 14) whose exits are scripted, so the run
loop, the one way to end a VM and the main thread's event loop are tested on their own."""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from types import SimpleNamespace

import pytest

from runner.devices.bus import IoBus
from runner.devices.legacy import guest_ports, i8042
from runner.kvm.native import ExitReason, IoDirection
from runner.machine import REBOOT, Ending, Machine
from runner.vmm import Vmm, triple_fault


class FakeVcpu:
    """Gives its scripted exits, then waits (as a guest in HLT does) until kicked."""

    def __init__(self, vcpu_id: int, exits: list[SimpleNamespace]) -> None:
        self.id = vcpu_id
        self._exits = list(exits)
        self.immediate_exit = False
        self.runs = 0

    def run(self, fast_mmio: object = None) -> SimpleNamespace:
        self.runs += 1
        if self._exits:
            return self._exits.pop(0)
        deadline = time.monotonic() + 30
        while not self.immediate_exit:
            assert time.monotonic() < deadline, "never kicked"
            time.sleep(0.001)
        return SimpleNamespace(reason=ExitReason.INTR)


def out(port: int, size: int, value: int) -> SimpleNamespace:
    data = value.to_bytes(size, "little")
    io = SimpleNamespace(port=port, direction=IoDirection.OUT, size=size, count=1, data=data)
    return SimpleNamespace(reason=ExitReason.IO, io=io)


def machine_with(vcpus: list[FakeVcpu]) -> Machine:
    machine = Machine(None, None, vcpus, IoBus(), guest_ports.DebugPort(), [], ExitStack())  # type: ignore[arg-type]
    machine.io_bus.insert(
        guest_ports.EXIT_PORT,
        guest_ports.EXIT_PORT_WIDTH,
        guest_ports.ExitPort(lambda status: machine.end(Ending(status))),
    )
    machine.io_bus.insert(
        i8042.DATA_PORT, i8042.PORT_SPAN, i8042.I8042(lambda: machine.end(REBOOT))
    )
    return machine


def run(machine: Machine) -> Ending:
    try:
        return Vmm(machine).run()
    finally:
        machine.close()


def test_the_exit_port_ends_the_vm_with_the_status_and_stops_every_vcpu() -> None:
    reporter = FakeVcpu(0, [out(0x80, 1, 1), out(guest_ports.EXIT_PORT, 4, 0x5600 | 42)])
    idle = FakeVcpu(1, [])
    assert run(machine_with([reporter, idle])) == Ending(42)
    assert idle.immediate_exit  # kicked out of its wait


def test_the_first_ending_wins() -> None:
    vcpu = FakeVcpu(
        0, [out(i8042.COMMAND_PORT, 1, 0xFE), out(guest_ports.EXIT_PORT, 4, 0x5600 | 3)]
    )
    assert run(machine_with([vcpu])) == REBOOT


def test_a_triple_fault_ends_the_vm() -> None:
    vcpu = FakeVcpu(0, [SimpleNamespace(reason=ExitReason.SHUTDOWN)])
    assert run(machine_with([vcpu])) == triple_fault(0)


def test_a_vmm_bug_on_a_vcpu_ends_the_vm_with_a_message() -> None:
    vcpu = FakeVcpu(0, [SimpleNamespace(reason=ExitReason.IO)])  # no `io`: AttributeError
    ending = run(machine_with([vcpu]))
    assert ending.status == 125 and "internal error" in ending.reason


def test_end_from_another_thread_wakes_the_main_loop_at_once() -> None:
    machine = machine_with([FakeVcpu(0, [])])
    timer = threading.Timer(0.05, machine.end, args=(Ending(7),))
    start = time.monotonic()
    timer.start()
    assert run(machine) == Ending(7)
    assert time.monotonic() - start < 5


def test_watched_fds_are_served_by_the_main_thread_while_the_vm_runs() -> None:
    machine = machine_with([FakeVcpu(0, [])])
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    machine.resources.callback(os.close, fd)
    served: list[str] = []

    def serve() -> None:
        os.eventfd_read(fd)
        served.append(threading.current_thread().name)
        machine.end(Ending(0))

    machine.watch(fd, serve)
    threading.Timer(0.05, os.eventfd_write, args=(fd, 1)).start()
    assert run(machine) == Ending(0)
    assert served == [threading.main_thread().name]


def test_when_ended_runs_at_once_after_the_end() -> None:
    machine = machine_with([])
    machine.end(Ending(1))
    machine.end(Ending(2))
    called: list[int] = []
    machine.when_ended(lambda: called.append(1))
    assert called == [1] and machine.ending == Ending(1)
    machine.close()


@pytest.mark.parametrize("value", [0x5600 | 9, 0x1234, 0x56FF00])
def test_only_the_magic_on_the_exit_port_ends_the_vm(value: int) -> None:
    machine = machine_with([])
    machine.io_bus.write(guest_ports.EXIT_PORT, 4, value)
    assert machine.ended == (value & 0xFF00 == 0x5600 and value < 0x10000)
    machine.close()
