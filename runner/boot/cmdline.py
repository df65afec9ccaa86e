"""The guest kernel command line, composed like libkrun's: prolog, env, device entries, epilog."""

from __future__ import annotations

from runner.arch.x86_64 import layout
from runner.config.model import VmResources
from runner.devices.slots import virtio_slots
from runner.errors import VmrunError

# reboot=k: a guest reboot goes through the i8042 reset line, which ends the VM.
# panic=-1: a panic reboots at once (so it ends the VM) instead of hanging.
# pci=off and the i8042 flags: there is no PCI bus and only a minimal keyboard controller,
# so the kernel does not spend exits probing them.
# quiet loglevel=1: the console is the workload's too, and every byte of it is a VM exit;
# only emergencies are printed. nowatchdog: the one emergency a healthy guest prints is the
# soft-lockup watchdog's, and in a VM it reports the host not running the vCPU (a loaded
# machine, a stopped VMM), not the guest; that leaves a panic as the only kernel message
# that reaches the workload's console.
DEFAULT_PROLOG = (
    "reboot=k panic=-1 panic_print=0 pci=off i8042.noaux i8042.nomux i8042.dumbkbd"
    " quiet loglevel=1 nowatchdog"
)


class CmdlineError(VmrunError, ValueError):
    """A command line that the kernel would not parse as meant."""


def env_entry(name: str, value: str) -> str:
    """`NAME=VALUE`, quoted when the value has white space (the kernel honours double quotes)."""
    if '"' in value or any(c in value for c in "\n\r\0"):
        raise CmdlineError(
            f'{name}: a value on the kernel command line cannot hold `"` or line breaks'
        )
    if not value or any(c.isspace() for c in value):
        return f'{name}="{value}"'
    return f"{name}={value}"


def kernel_console(resources: VmResources) -> str | None:
    """The console= device: the file's choice, else the first serial port, else hvc0."""
    if resources.kernel_console:
        return resources.kernel_console
    if resources.serial_consoles:
        return "ttyS0"
    if not resources.disable_implicit_console or resources.virtio_consoles:
        return "hvc0"
    return None


def compose(resources: VmResources) -> str:
    """The whole command line; raises CmdlineError when a part cannot be represented
    (the length limit is checked by the caller, which knows where to report it)."""
    cmdline = resources.kernel_cmdline
    parts = [DEFAULT_PROLOG if cmdline.prolog is None else cmdline.prolog]
    parts += [env_entry(name, value) for name, value in cmdline.env.items()]
    parts += [slot.cmdline_entry for slot in virtio_slots(resources)]
    console = kernel_console(resources)
    if console:
        parts.append(f"console={console}")
    if cmdline.epilog:
        parts.append(cmdline.epilog)
    text = " ".join(part.strip() for part in parts if part.strip())
    if any(c in text for c in "\n\r\0"):
        raise CmdlineError("the kernel command line cannot hold line breaks or NUL bytes")
    return text


def fits(text: str) -> bool:
    # The boot protocol's limit counts the terminating NUL.
    return len(text.encode()) + 1 <= layout.CMDLINE_MAX_BYTES
