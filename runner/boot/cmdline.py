"""The guest kernel command line, composed like libkrun's: prolog, env, device entries, epilog."""

from __future__ import annotations

import unicodedata

from runner.arch.x86_64 import layout
from runner.config.model import VmResources
from runner.config.slots import virtio_slots
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


LINE_BREAKS = "the kernel command line cannot hold line breaks or NUL bytes"
ENV_VALUE = 'a value on the kernel command line cannot hold `"` or line breaks'


class CmdlineError(VmrunError, ValueError):
    """A command line that the kernel would not parse as meant."""


def part_problem(text: str, *, last: bool) -> str | None:
    """Why `text` cannot be a part of the command line (the prolog, the epilog: `last`) as
    written, or None. The kernel splits the line at white space outside double quotes
    (lib/cmdline.c, next_arg), and everything after a `--` parameter goes to init."""
    if any(c in text for c in "\n\r\0"):
        return LINE_BREAKS
    control = next((c for c in text if _is_control(c)), None)
    if control is not None:
        return f"holds the control character U+{ord(control):04X}; the command line is text"
    if text.count('"') % 2:
        # An open quote is closed only by the next `"`: the env entries, devices and
        # console= composed after this part would become one parameter with it.
        return (
            'has an unmatched `"`; the kernel would read the rest of the command line, '
            "the parts vmrun adds after this one included, as one parameter"
        )
    if not last and "--" in parameters(text):
        return (
            "holds `--`, after which the kernel passes everything to init: the parts vmrun "
            "adds after this one (env, devices, console=) would not reach the kernel"
        )
    return None


def env_value_problem(value: str) -> str | None:
    """Why `value` cannot be an env entry's value (it is quoted with `"` when it has white
    space, so it cannot hold one), or None."""
    if '"' in value or any(c in value for c in "\n\r\0"):
        return ENV_VALUE
    control = next((c for c in value if _is_control(c)), None)
    if control is not None:
        return f"holds the control character U+{ord(control):04X}; the command line is text"
    return None


def parameters(text: str) -> list[str]:
    """The parameters of `text` as the kernel splits them, each without the quotes around
    it (`"--"` is `--` to the kernel too)."""
    out, current, quoted = [], "", False
    for c in text + " ":
        if c == '"':
            quoted = not quoted
        elif c in _KERNEL_SPACE and not quoted:
            if current:
                out.append(current)
            current = ""
            continue
        current += c
    return [p.removeprefix('"').removesuffix('"') for p in out]


_KERNEL_SPACE = frozenset(" \t\n\v\f\r")  # the kernel's isspace() on ASCII


def _is_control(c: str) -> bool:
    # A tab separates parameters as a space does; other controls are no text.
    return c != "\t" and unicodedata.category(c) == "Cc"


def env_entry(name: str, value: str) -> str:
    """`NAME=VALUE`, quoted when the value has white space (the kernel honours double quotes)."""
    problem = env_value_problem(value)
    if problem:
        raise CmdlineError(f"{name}: {problem}")
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
    for part, last in ((cmdline.prolog, False), (cmdline.epilog, True)):
        problem = part_problem(part or "", last=last)
        if problem:
            raise CmdlineError(problem)
    return " ".join(part.strip() for part in parts if part.strip())


def fits(text: str) -> bool:
    # The boot protocol's limit counts the terminating NUL.
    return len(text.encode()) + 1 <= layout.CMDLINE_MAX_BYTES
