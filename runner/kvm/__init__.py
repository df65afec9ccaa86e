"""KVM for vmrun: thin objects over the compiled bindings (runner.kvm._native, from native/kvm/).

One class per fd level (STYLE 7): `Kvm` (/dev/kvm) makes a `Vm`, which makes `Vcpu`s; guest RAM
is a `GuestMemory`. Every one is a context manager that closes its fd. Errors are `KvmError`
(an ioctl and its errno) and `GuestMemoryError` (a guest range out of bounds).
"""

from runner.kvm.memory import GuestMemory, GuestMemoryError, Region
from runner.kvm.native import Cap, ExitReason, IoDirection, KvmError, NativeModuleError
from runner.kvm.system import Kvm
from runner.kvm.vcpu import IoAccess, MmioAccess, Vcpu, VcpuExit
from runner.kvm.vm import Vm

__all__ = [
    "Cap",
    "ExitReason",
    "GuestMemory",
    "GuestMemoryError",
    "IoAccess",
    "IoDirection",
    "Kvm",
    "KvmError",
    "MmioAccess",
    "NativeModuleError",
    "Region",
    "Vcpu",
    "VcpuExit",
    "Vm",
]
