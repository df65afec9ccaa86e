"""The Intel MultiProcessor table: how a guest without ACPI finds its vCPUs and I/O APIC.

Facts (Intel MP Specification 1.4, chapter 4; Linux arch/x86/include/asm/mpspec_def.h and
arch/x86/kernel/mpparse.c; Firecracker arch/x86_64/mptable.rs; KVM irq_comm.c):

- Linux looks for the 16-byte floating pointer ("_MP_", 16-byte aligned) in the first KiB,
  in the last KiB of conventional memory (0x9fc00), in the EBDA and in 0xf0000-0xfffff. It
  points (physptr) at the configuration table ("PCMP"): a 44-byte header and entries sorted
  by type: processors (20 bytes), buses, I/O APICs, I/O interrupt assignments, local
  interrupt assignments (8 bytes each). Linux walks the entries by the header's length.
- Each structure's bytes sum to 0 mod 256: the floating pointer's 16, and the configuration
  table's header plus all its entries.
- xAPIC ids are 8 bits and 0xff is the broadcast id; the I/O APIC takes one more id, so at
  most 254 vCPUs (ids 0..N-1) fit, with the I/O APIC at id N.
- KVM's in-kernel local APIC reports version 0x14, its I/O APIC version 0x11 with 24 pins,
  and its default GSI routing sends GSI n to I/O APIC pin n; the interrupt entries say the
  same, with polarity and trigger "conforming to the bus" (ISA: active high, edge).
- LINT0 is wired as ExtINT (the legacy PIC, on the boot CPU) and LINT1 as NMI (on all CPUs),
  the virtual-wire setup every PC firmware describes.
"""

from __future__ import annotations

import struct

from runner.arch.x86_64 import layout
from runner.errors import VmrunError

MAX_VCPUS = 254
MPTABLE_ADDRESS = layout.MPTABLE_START

# Entry types (mpspec_def.h)
MP_PROCESSOR = 0
MP_BUS = 1
MP_IOAPIC = 2
MP_INTSRC = 3
MP_LINTSRC = 4

# Interrupt types
MP_INT = 0
MP_NMI = 1
MP_EXTINT = 3

CPU_ENABLED = 1
CPU_BOOTPROCESSOR = 2
MPC_APIC_USABLE = 1
MP_IRQ_CONFORMING = 0  # polarity and trigger as the bus defines them
MP_APIC_ALL = 0xFF

SMP_MAGIC = b"_MP_"
MPC_SIGNATURE = b"PCMP"
MP_SPEC_REV = 4  # MP spec 1.4
OEM_ID = b"VMRUN   "  # 8 bytes, space padded
PRODUCT_ID = b"MICROVM     "  # 12 bytes
BUS_TYPE_ISA = b"ISA   "
ISA_BUS_ID = 0

LAPIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
IOAPIC_PINS = 24
CPU_SIGNATURE = 0x600  # family 6, model 0, stepping 0: what Firecracker announces
CPU_FEATURE_FPU = 1 << 0
CPU_FEATURE_APIC = 1 << 9

FLOATING_POINTER = struct.Struct("<4sIBBBBBBBB")
CONFIG_HEADER = struct.Struct("<4sHBB8s12sIHHII")
PROCESSOR = struct.Struct("<BBBBII8x")
BUS = struct.Struct("<BB6s")
IOAPIC = struct.Struct("<BBBBI")
INTSRC = struct.Struct("<BBHBBBB")  # also the layout of a local interrupt (LINTSRC) entry


class MptableError(VmrunError, ValueError):
    """An MP table that cannot describe the machine."""


def mptable_size(vcpus: int) -> int:
    """Bytes of the floating pointer and the configuration table for `vcpus` vCPUs."""
    return (
        FLOATING_POINTER.size
        + CONFIG_HEADER.size
        + PROCESSOR.size * vcpus
        + BUS.size
        + IOAPIC.size
        + INTSRC.size * (IOAPIC_PINS + 2)
    )


def _checksum(data: bytes) -> int:
    """The byte that makes `data` plus it sum to 0 mod 256."""
    return -sum(data) & 0xFF


def mptable(vcpus: int, start: int = MPTABLE_ADDRESS) -> bytes:
    """The floating pointer at `start`, followed by the configuration table it points to."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise MptableError(f"{vcpus} vCPUs; the MP table describes 1 to {MAX_VCPUS}")
    if start % 16 or start + mptable_size(vcpus) > layout.FIRST_ADDR_PAST_32BITS:
        raise MptableError(f"the MP table cannot start at {start:#x}")
    ioapic_id = vcpus

    entries = []
    for apic_id in range(vcpus):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if apic_id == 0 else 0)
        features = CPU_FEATURE_APIC | CPU_FEATURE_FPU
        entries.append(
            PROCESSOR.pack(MP_PROCESSOR, apic_id, LAPIC_VERSION, flags, CPU_SIGNATURE, features)
        )
    entries.append(BUS.pack(MP_BUS, ISA_BUS_ID, BUS_TYPE_ISA))
    entries.append(
        IOAPIC.pack(MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE, layout.IOAPIC_START)
    )
    for irq in range(IOAPIC_PINS):
        entries.append(
            INTSRC.pack(MP_INTSRC, MP_INT, MP_IRQ_CONFORMING, ISA_BUS_ID, irq, ioapic_id, irq)
        )
    entries.append(INTSRC.pack(MP_LINTSRC, MP_EXTINT, MP_IRQ_CONFORMING, ISA_BUS_ID, 0, 0, 0))
    entries.append(
        INTSRC.pack(MP_LINTSRC, MP_NMI, MP_IRQ_CONFORMING, ISA_BUS_ID, 0, MP_APIC_ALL, 1)
    )
    body = b"".join(entries)

    def config_header(checksum: int) -> bytes:
        return CONFIG_HEADER.pack(
            MPC_SIGNATURE,
            CONFIG_HEADER.size + len(body),
            MP_SPEC_REV,
            checksum,
            OEM_ID,
            PRODUCT_ID,
            0,  # no OEM table
            0,
            len(entries),
            layout.APIC_START,
            0,  # no extended table
        )

    table = config_header(_checksum(config_header(0) + body)) + body

    def floating_pointer(checksum: int) -> bytes:
        # length 1 (16-byte paragraphs); feature bytes 0: a configuration table is present
        # and there is no IMCR (virtual-wire mode).
        physptr = start + FLOATING_POINTER.size
        return FLOATING_POINTER.pack(SMP_MAGIC, physptr, 1, MP_SPEC_REV, checksum, 0, 0, 0, 0, 0)

    pointer = floating_pointer(_checksum(floating_pointer(0)))
    return pointer + table


def mptable_writes(vcpus: int) -> list[tuple[int, bytes]]:
    """(guest physical address, bytes) for the MP table of `vcpus` vCPUs."""
    return [(MPTABLE_ADDRESS, mptable(vcpus))]
