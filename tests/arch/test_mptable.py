"""The MP table, parsed back field by field with a reader written from the MP spec."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from runner.arch.x86_64 import layout
from runner.arch.x86_64 import mptable as mp

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def parse(data: bytes, start: int) -> dict[str, Any]:
    """Floating pointer, configuration header and typed entries, as a guest would read them."""
    sig, physptr, length, spec, checksum, *features = struct.unpack_from("<4sIBBB5B", data, 0)
    table = data[physptr - start :]
    (csig, clen, cspec, ccheck, oem, product, oemptr, oemsize, count, lapic, ext) = (
        struct.unpack_from("<4sHBB8s12sIHHII", table, 0)
    )
    entries = []
    offset = 44
    while offset < clen:
        kind = table[offset]
        raw = table[offset : offset + ENTRY_SIZES[kind]]
        if kind == 0:
            _, apicid, apicver, flags, signature, feature_flags, r1, r2 = struct.unpack(
                "<BBBBIIII", raw
            )
            entries.append(("cpu", apicid, apicver, flags, signature, feature_flags, r1, r2))
        elif kind == 1:
            entries.append(("bus", raw[1], raw[2:8]))
        elif kind == 2:
            _, apicid, apicver, flags, addr = struct.unpack("<BBBBI", raw)
            entries.append(("ioapic", apicid, apicver, flags, addr))
        else:
            _, irqtype, irqflag, bus, busirq, apic, pin = struct.unpack("<BBHBBBB", raw)
            name = "intsrc" if kind == 3 else "lintsrc"
            entries.append((name, irqtype, irqflag, bus, busirq, apic, pin))
        offset += ENTRY_SIZES[kind]
    return {
        "floating": (sig, physptr, length, spec, features),
        "floating_sum": sum(data[:16]) % 256,
        "floating_checksum": checksum,
        "header": (csig, clen, cspec, oem, product, oemptr, oemsize, count, lapic, ext),
        "table_sum": sum(table[:clen]) % 256,
        "table_checksum": ccheck,
        "entries": entries,
        "trailing": data[16 + clen :],
    }


@pytest.mark.parametrize("vcpus", [1, 2, 32])
def test_parsed_back(vcpus: int) -> None:
    data = mp.mptable(vcpus)
    assert len(data) == mp.mptable_size(vcpus) == 16 + 44 + 20 * vcpus + 8 + 8 + 26 * 8
    t = parse(data, layout.MPTABLE_START)

    assert t["floating"] == (b"_MP_", layout.MPTABLE_START + 16, 1, 4, [0, 0, 0, 0, 0])
    assert t["floating_sum"] == 0
    assert t["table_sum"] == 0
    clen = len(data) - 16
    count = vcpus + 1 + 1 + 24 + 2
    oem = (b"VMRUN   ", b"MICROVM     ", 0, 0)  # ids, no OEM table
    assert t["header"] == (b"PCMP", clen, 4, *oem, count, 0xFEE0_0000, 0)
    assert t["trailing"] == b""

    entries = t["entries"]
    assert len(entries) == count
    cpus, rest = entries[:vcpus], entries[vcpus:]
    for apic_id, cpu in enumerate(cpus):
        flags = 0x3 if apic_id == 0 else 0x1  # enabled, and BSP on the first
        assert cpu == ("cpu", apic_id, 0x14, flags, 0x600, 0x201, 0, 0)
    assert rest[0] == ("bus", 0, b"ISA   ")
    assert rest[1] == ("ioapic", vcpus, 0x11, 1, 0xFEC0_0000)
    for irq, entry in enumerate(rest[2:26]):
        assert entry == ("intsrc", 0, 0, 0, irq, vcpus, irq)
    assert rest[26] == ("lintsrc", 3, 0, 0, 0, 0, 0)  # LINT0: ExtINT on the BSP
    assert rest[27] == ("lintsrc", 1, 0, 0, 0, 0xFF, 1)  # LINT1: NMI on every CPU


def test_known_bytes_one_vcpu() -> None:
    data = mp.mptable(1)
    # "_MP_", physptr 0x9fc10, 1 paragraph, spec 1.4, checksum 0x8b, no features.
    assert data[:16].hex() == "5f4d505f10fc090001048b0000000000"
    body = data[16 + 44 :]
    assert body[:20].hex() == "0000140300060000010200000000000000000000"  # BSP
    assert body[20:28].hex() == "0100495341202020"  # bus 0, "ISA   "
    assert body[28:36].hex() == "020111010000c0fe"  # I/O APIC id 1, v0x11, usable, 0xfec00000
    assert body[36 + 5 * 8 : 36 + 6 * 8].hex() == "0300000000050105"  # IRQ 5 -> pin 5
    assert body[-16:] == bytes.fromhex("0403000000000000 040100000000ff01")
    assert data[16:20] == b"PCMP"
    assert struct.unpack_from("<H", data, 20) == (len(data) - 16,)


def test_placement() -> None:
    assert mp.mptable_writes(2) == [(layout.MPTABLE_START, mp.mptable(2))]
    assert layout.MPTABLE_START == 0x9FC00
    # Even the largest table stays in the EBDA/BIOS area that the e820 map leaves out.
    assert layout.MPTABLE_START + mp.mptable_size(mp.MAX_VCPUS) <= layout.HIMEM_START
    t = parse(mp.mptable(2, start=0x8_0000), 0x8_0000)
    assert t["floating"][1] == 0x8_0010
    assert t["floating_sum"] == 0 and t["table_sum"] == 0


def test_largest() -> None:
    t = parse(mp.mptable(254), layout.MPTABLE_START)
    assert t["table_sum"] == 0
    assert t["entries"][254][0] == "bus"
    assert t["entries"][255] == ("ioapic", 254, 0x11, 1, 0xFEC0_0000)


@pytest.mark.parametrize("vcpus", [0, -1, 255, 1000])
def test_vcpus_out_of_range(vcpus: int) -> None:
    with pytest.raises(mp.MptableError, match="1 to 254"):
        mp.mptable(vcpus)


def test_misaligned_start() -> None:
    with pytest.raises(mp.MptableError):
        mp.mptable(1, start=0x9FC08)
