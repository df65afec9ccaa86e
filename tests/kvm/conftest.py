"""Fixtures for the KVM layer: a /dev/kvm (or a skip that says why not), tiny real-mode guests,
and an fd-leak check around every test here."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest

from runner.kvm import GuestMemory, Kvm, KvmError, Vcpu, Vm

CODE_ADDR = 0x1000  # where the test guests' code goes (real mode, cs = 0)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Every test in tests/kvm leaves the process with the fds it found."""
    before = _open_fds()
    yield
    leaked = {fd: _target(fd) for fd in _open_fds() - before}
    assert not leaked, f"fds left open: {leaked}"


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    """An open /dev/kvm; the test is skipped, with the reason, where there is none.

    Any /dev/kvm does, PVM included: these tests run tiny real-mode guests, not Linux."""
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm on this host")
    try:
        handle = Kvm()
    except KvmError as exc:
        pytest.skip(f"/dev/kvm cannot be used here: {exc}")
    with handle:
        yield handle


class Guest(NamedTuple):
    memory: GuestMemory
    vm: Vm
    vcpu: Vcpu


MakeGuest = Callable[..., Guest]


@pytest.fixture
def make_guest(kvm: Kvm) -> Iterator[MakeGuest]:
    """`make_guest(code, regions=[(0, 0x4000)])`: RAM made of `regions`, a VM mapping it, `code`
    at CODE_ADDR, and one vCPU in real mode with every segment at base 0 and rip at the code.
    All of it is closed after the test (the VM before the memory it maps)."""
    made: list[Guest] = []

    def make(code: bytes, regions: list[tuple[int, int]] | None = None) -> Guest:
        memory = GuestMemory(regions or [(0, 0x4000)])
        vm = None
        try:
            memory.write(CODE_ADDR, code)
            vm = kvm.create_vm()
            vm.map_memory(memory)
            vcpu = vm.create_vcpu(0)
            sregs = vcpu.get_sregs()
            for segment in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
                segment.base = 0
                segment.selector = 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip = CODE_ADDR
            regs.rflags = 0x2  # bit 1 is reserved and must be set
            vcpu.set_regs(regs)
        except BaseException:
            if vm is not None:
                vm.close()
            memory.close()
            raise
        made.append(Guest(memory, vm, vcpu))
        return made[-1]

    yield make
    for guest in reversed(made):
        guest.vm.close()
        guest.memory.close()
