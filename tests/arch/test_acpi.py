"""The ACPI tables, parsed back with a reader written from the ACPI 6.5 spec (chapter 5.2),
found the way Linux finds them: the RSDP by its signature, everything else by address."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from guest_area import laid_out

from runner.arch.x86_64 import acpi, boot_params, layout
from runner.builder import LEGACY_DEVICES  # the devices the DSDT describes

VCPU_COUNTS = [1, 2, 4, 32]


def memory(writes: list[tuple[int, bytes]]) -> bytes:
    """The region from ACPI_START to 1 MiB as the guest sees it after the writes."""
    return laid_out(writes, layout.ACPI_START, layout.HIMEM_START)


def find_rsdp(mem: bytes) -> int:
    """Linux's legacy scan: 16-byte steps over 0xe0000-0xfffff, signature and checksums."""
    for offset in range(0, len(mem) - 36, 16):
        if mem[offset : offset + 8] != b"RSD PTR ":
            continue
        if sum(mem[offset : offset + 20]) % 256 == 0:
            return layout.ACPI_START + offset
    raise AssertionError("no RSDP found")


def read(mem: bytes, gpa: int, size: int) -> bytes:
    offset = gpa - layout.ACPI_START
    assert offset >= 0 and offset + size <= len(mem), f"{gpa:#x} is outside the ACPI region"
    return mem[offset : offset + size]


def table(mem: bytes, gpa: int) -> dict[str, Any]:
    """One SDT: its header fields and body; its whole length must sum to 0."""
    sig, length, revision, _checksum, oem, oem_table, oem_rev, creator, creator_rev = struct.unpack(
        "<4sIBB6s8sI4sI", read(mem, gpa, 36)
    )
    data = read(mem, gpa, length)
    return {
        "signature": sig,
        "length": length,
        "revision": revision,
        "sum": sum(data) % 256,
        "ids": (oem, oem_table, oem_rev, creator, creator_rev),
        "body": data[36:],
        "data": data,
    }


def chain(vcpus: int) -> dict[str, Any]:
    """RSDP -> XSDT -> (FADT -> DSDT, MADT), each by its address."""
    mem = memory(acpi.acpi_tables(vcpus, legacy=LEGACY_DEVICES))
    rsdp_at = find_rsdp(mem)
    raw = read(mem, rsdp_at, 36)
    sig, _checksum, oem, revision, rsdt, length, xsdt_at, _ext = struct.unpack("<8sB6sBIIQB3x", raw)
    rsdp = {
        "at": rsdp_at,
        "fields": (sig, oem, revision, rsdt, length),
        "sum20": sum(raw[:20]) % 256,
        "sum36": sum(raw) % 256,
    }
    xsdt = table(mem, xsdt_at)
    entries = [table(mem, a) for a in struct.unpack(f"<{len(xsdt['body']) // 8}Q", xsdt["body"])]
    by_sig = {t["signature"]: t for t in entries}
    fadt = by_sig[b"FACP"]
    (x_dsdt,) = struct.unpack_from("<Q", fadt["data"], 140)
    return {
        "mem": mem,
        "rsdp": rsdp,
        "xsdt": xsdt,
        "entries": entries,
        "fadt": fadt,
        "madt": by_sig[b"APIC"],
        "dsdt": table(mem, x_dsdt),
        "addresses": [xsdt_at, *struct.unpack(f"<{len(entries)}Q", xsdt["body"]), x_dsdt],
    }


def madt_entries(madt: dict[str, Any]) -> tuple[tuple[int, int], list[tuple[Any, ...]]]:
    body = madt["body"]
    fixed = struct.unpack_from("<II", body, 0)
    entries, offset = [], 8
    while offset < len(body):
        kind, length = body[offset], body[offset + 1]
        raw = body[offset : offset + length]
        if kind == 0:
            _, _, uid, apic_id, flags = struct.unpack("<BBBBI", raw)
            entries.append(("lapic", uid, apic_id, flags))
        elif kind == 1:
            _, _, ioapic_id, reserved, address, gsi_base = struct.unpack("<BBBBII", raw)
            entries.append(("ioapic", ioapic_id, reserved, address, gsi_base))
        elif kind == 2:
            _, _, bus, source, gsi, flags = struct.unpack("<BBBBIH", raw)
            entries.append(("override", bus, source, gsi, flags))
        elif kind == 4:
            _, _, uid, flags, lint = struct.unpack("<BBBHB", raw)
            entries.append(("lapic_nmi", uid, flags, lint))
        else:
            entries.append(("unknown", kind, length))
        assert length > 0
        offset += length
    assert offset == len(body)
    return fixed, entries


@pytest.mark.parametrize("vcpus", VCPU_COUNTS)
def test_rsdp(vcpus: int) -> None:
    t = chain(vcpus)
    rsdp = t["rsdp"]
    assert rsdp["at"] == layout.ACPI_START == 0xE0000
    assert rsdp["at"] % 16 == 0
    assert rsdp["fields"] == (b"RSD PTR ", b"VMRUN ", 2, 0, 36)  # no RSDT: XSDT only
    assert rsdp["sum20"] == 0
    assert rsdp["sum36"] == 0


@pytest.mark.parametrize("vcpus", VCPU_COUNTS)
def test_every_table_parses_back(vcpus: int) -> None:
    t = chain(vcpus)
    expected = {  # signature: (revision, length or None)
        b"XSDT": (1, 36 + 2 * 8),
        b"FACP": (6, 276),
        b"APIC": (6, 44 + 8 * vcpus + 12 + 6),
        b"DSDT": (2, None),
    }
    tables = [t["xsdt"], *t["entries"], t["dsdt"]]
    assert [x["signature"] for x in tables] == [b"XSDT", b"FACP", b"APIC", b"DSDT"]
    for x in tables:
        revision, length = expected[x["signature"]]
        assert x["revision"] == revision, x["signature"]
        if length is not None:
            assert x["length"] == length, x["signature"]
        assert x["sum"] == 0, x["signature"]
        assert x["ids"] == (b"VMRUN ", b"VMRUNVM ", 1, b"VMRN", 1), x["signature"]


def test_writes_are_the_tables_at_their_addresses() -> None:
    writes = acpi.acpi_tables(2, legacy=LEGACY_DEVICES)
    t = chain(2)
    assert [gpa for gpa, _ in writes][1:] == sorted(t["addresses"])
    assert all(gpa % 16 == 0 for gpa, _ in writes)


def test_fadt() -> None:
    fadt = chain(1)["fadt"]["data"]
    (iapc,) = struct.unpack_from("<H", fadt, 109)
    (flags,) = struct.unpack_from("<I", fadt, 112)
    minor = fadt[131]
    facs32, dsdt32 = struct.unpack_from("<II", fadt, 36)
    (x_facs,) = struct.unpack_from("<Q", fadt, 132)
    assert flags == (1 << 20) | (1 << 4) | (1 << 5)  # HW_REDUCED_ACPI, PWR_BUTTON, SLP_BUTTON
    assert not flags & (1 << 21)  # not LOW_POWER_S0_IDLE_CAPABLE
    assert iapc == (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)  # 8042, no VGA, no MSI, no ASPM
    assert not iapc & (1 << 5)  # the CMOS RTC is there
    assert minor == 5  # ACPI 6.5
    assert (facs32, dsdt32, x_facs) == (0, 0, 0)  # no FACS; the DSDT only through X_DSDT
    sci_int, smi_cmd = struct.unpack_from("<HI", fadt, 46)
    assert (sci_int, smi_cmd) == (0, 0)  # hardware-reduced: no SCI, no SMI command port
    assert fadt[268:276] == b"VMRUNKVM"


def test_x_dsdt_points_at_the_dsdt() -> None:
    writes = dict(acpi.acpi_tables(1, legacy=LEGACY_DEVICES))
    fadt = next(d for d in writes.values() if d[:4] == b"FACP")
    (x_dsdt,) = struct.unpack_from("<Q", fadt, 140)
    assert writes[x_dsdt][:4] == b"DSDT"
    assert writes[x_dsdt] == acpi.dsdt(LEGACY_DEVICES)


@pytest.mark.parametrize("vcpus", VCPU_COUNTS)
def test_madt(vcpus: int) -> None:
    fixed, entries = madt_entries(chain(vcpus)["madt"])
    assert fixed == (0xFEE0_0000, 1)  # local APIC address, PCAT_COMPAT
    cpus = entries[:vcpus]
    assert cpus == [("lapic", i, i, 1) for i in range(vcpus)]  # UID = APIC id, enabled
    assert entries[vcpus:] == [
        ("ioapic", vcpus, 0, 0xFEC0_0000, 0),
        ("lapic_nmi", 0xFF, 0, 1),  # every processor's LINT1, conforming
    ]
    # KVM's default routing sends ISA IRQ n to I/O APIC pin n: nothing to override.
    assert not [e for e in entries if e[0] == "override"]


def test_madt_without_a_legacy_pic() -> None:
    """A split irqchip has no 8259: PCAT_COMPAT is clear, the entries are the same."""
    with_pic = acpi.acpi_tables(2, legacy=LEGACY_DEVICES)
    without = acpi.acpi_tables(2, legacy_pic=False, legacy=LEGACY_DEVICES)
    assert [gpa for gpa, _ in without] == [gpa for gpa, _ in with_pic]
    assert without[:-1] == with_pic[:-1]  # only the MADT differs
    madt = table(memory(without), without[-1][0])
    assert (madt["signature"], madt["sum"]) == (b"APIC", 0)
    fixed, entries = madt_entries(madt)
    assert fixed == (0xFEE0_0000, 0)
    assert entries == madt_entries(chain(2)["madt"])[1]


def test_dsdt_legacy_devices() -> None:
    aml = chain(1)["dsdt"]["body"]
    assert aml[:1] == b"\x10"  # Scope
    assert b"\\_SB_" in aml
    assert aml.count(b"\x5b\x82") == 6  # Device
    for name in (b"COM1", b"COM2", b"COM3", b"COM4", b"PS2_", b"RTC_"):
        assert name in aml
    assert struct.pack("<I", acpi.eisa_id("PNP0501")) == bytes.fromhex("41d00501")
    assert acpi.eisa_id("PNP0A03") == 0x030AD041  # the well-known PCI host bridge id
    # COM1: IO(Decode16, 0x3f8, 0x3f8, 1, 8) and Interrupt(Consumer, Edge, High, Shared) {4}
    assert bytes.fromhex("4701f803f8030108") in aml
    assert bytes.fromhex("8906000b0104000000") in aml
    # The i8042's interrupt 1 and the RTC's 8, exclusive
    assert bytes.fromhex("890600030101000000") in aml
    assert bytes.fromhex("890600030108000000") in aml


@pytest.mark.parametrize(
    ("content", "encoded"),
    [
        (0, "01"),
        (62, "3f"),
        (63, "4104"),  # 63 + 2 = 65 = 0x41: one more byte; low nibble 1, then 0x41 >> 4
        (0xFFD, "4fff"),  # 4093 + 2 = 4095, the most that two bytes hold
        (0xFFE, "810001"),  # 4094 + 3 = 4097 = 0x1001: two more bytes
    ],
)
def test_pkg_length(content: int, encoded: str) -> None:
    data = acpi._pkg_length(content)
    assert data.hex() == encoded
    # Decode it back the way the AML parser does: the length counts the PkgLength bytes.
    follow = data[0] >> 6
    total = data[0] & (0x3F if follow == 0 else 0x0F)
    for i, byte in enumerate(data[1:]):
        total |= byte << (4 + 8 * i)
    assert total == content + len(data)


@pytest.mark.parametrize("vcpus", [1, 32, acpi.MAX_VCPUS])
def test_placement(vcpus: int) -> None:
    writes = acpi.acpi_tables(vcpus, legacy=LEGACY_DEVICES)
    assert writes[0][0] == layout.ACPI_START
    end = max(gpa + len(data) for gpa, data in writes)
    assert end <= layout.HIMEM_START
    assert acpi.acpi_size(vcpus, LEGACY_DEVICES) == end - layout.ACPI_START
    # Outside the e820 RAM (which ends at the EBDA below 1 MiB), but in the first memory slot.
    ram = boot_params.e820_map(128 * layout.MIB)
    assert not any(e.addr < end and e.end > layout.ACPI_START for e in ram)
    assert boot_params.memory_regions(128 * layout.MIB)[0][0] == 0
    # Clear of the MP table, which sits in the EBDA and may run a little past 0xa0000.
    assert layout.MPTABLE_START + 6 * 1024 < layout.ACPI_START


def test_32_vcpus_fit_in_a_page() -> None:
    assert acpi.acpi_size(32, LEGACY_DEVICES) <= 4096


@pytest.mark.parametrize("vcpus", [0, -1, acpi.MAX_VCPUS + 1])
def test_vcpu_count_out_of_range(vcpus: int) -> None:
    with pytest.raises(acpi.AcpiError):
        acpi.acpi_tables(vcpus, legacy=LEGACY_DEVICES)


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) is not installed")
@pytest.mark.parametrize("vcpus", [1, 32])
def test_iasl_disassembles_every_table(vcpus: int, tmp_path: Path) -> None:
    """ACPICA's own disassembler reads each table (not the RSDP, which `iasl -d` skips) without
    a checksum or parse complaint, and decodes the fields as meant."""
    t = chain(vcpus)
    outputs = {}
    for x in [t["xsdt"], *t["entries"], t["dsdt"]]:
        name = x["signature"].decode().lower()
        (tmp_path / f"{name}.dat").write_bytes(x["data"])
        run = subprocess.run(
            ["iasl", "-d", f"{name}.dat"], cwd=tmp_path, capture_output=True, text=True
        )
        dsl_path = tmp_path / f"{name}.dsl"
        assert run.returncode == 0 and dsl_path.exists(), run.stdout + run.stderr
        dsl = dsl_path.read_text()
        for complaint in ("Incorrect checksum", "Warning", "Error", "Invalid", "Unknown"):
            assert complaint not in run.stdout + run.stderr + dsl, (complaint, dsl)
        outputs[name] = dsl
    facp = " ".join(outputs["facp"].split())
    assert "Hardware Reduced (V5) : 1" in facp
    assert "8042 Present on ports 60/64 (V2) : 1" in facp
    assert "VGA Not Present (V4) : 1" in facp
    assert "CMOS RTC Not Present (V5) : 0" in facp
    assert "FADT Minor Revision : 05" in facp
    assert f"DSDT Address : {t['addresses'][-1]:016X}" in facp
    assert outputs["apic"].count("[Processor Local APIC]") == vcpus
    assert outputs["apic"].count("[I/O APIC]") == 1
    assert outputs["apic"].count("[Local APIC NMI]") == 1
    assert "[Interrupt Source Override]" not in outputs["apic"]
    for device in ("COM1", "COM2", "COM3", "COM4", "PS2", "RTC"):
        assert f"Device ({device})" in outputs["dsdt"]
    assert 'EisaId ("PNP0B00")' in outputs["dsdt"]
