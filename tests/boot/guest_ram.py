"""Guest RAM seen from the host: a VM that talks over its serial console (so a test can
wait for it while it holds its memory), and what /proc says of vmrun's mappings of guest RAM
(the memfd of runner/kvm/memory.py)."""

from __future__ import annotations

from pathlib import Path


def serial_console_vm(mem_mib: int) -> str:
    """A one-vCPU VM of `mem_mib` whose console is the serial port on vmrun's stdin and
    stdout (no virtio console: nothing else reads stdin)."""
    return (
        "disable_implicit_console = true\n"
        'serial_consoles = [{ input = "stdin", output = "stdout" }]\n\n'
        f"[machine]\nvcpu_count = 1\nmem_size_mib = {mem_mib}\n"
    )


def guest_ram_kib(pid: int, field: str = "Rss") -> int:
    """The sum of `field` (smaps(5): Rss, ShmemPmdMapped, ...), in KiB, over process `pid`'s
    mappings of guest RAM."""
    total, in_ram = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if "-" in words[0] and not words[0].endswith(":"):  # a mapping's first line
            in_ram = "memfd:vmrun-guest-ram" in line
        elif in_ram and words[0] == f"{field}:":
            total += int(words[1])
    return total
