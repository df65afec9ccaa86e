"""The SMBIOS tables, parsed back with a reader written from the SMBIOS 3.x spec (DSP0134
5.2.2 and 6.1), found the way Linux finds them, and read by dmidecode."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from guest_area import laid_out

from runner.arch.x86_64 import acpi, boot_params, layout, smbios
from runner.builder import LEGACY_DEVICES

SAMPLE = ["io.systemd.credential:greeting=hello", "wörld € 日本語 😀", "third"]


class Structure(NamedTuple):
    type: int
    handle: int
    formatted: bytes  # the whole formatted area, header included
    strings: list[bytes]


class Tables(NamedTuple):
    entry_point: bytes
    version: tuple[int, int, int]
    revision: int
    max_size: int
    address: int
    structures: list[Structure]
    size: int  # bytes from the table's address to the end of End-of-Table


def memory(writes: list[tuple[int, bytes]]) -> bytes:
    """The SMBIOS area (SMBIOS_START up to 1 MiB) as the guest sees it after the writes."""
    return laid_out(writes, layout.SMBIOS_START, layout.SMBIOS_END)


def find_entry_point(mem: bytes) -> int:
    """Linux's scan without EFI: 16-byte steps over 0xf0000-0xfffff for "_SM3_" with a length
    byte below 32 and that many bytes summing to 0."""
    for offset in range(0, len(mem) - 32 + 1, 16):
        length = mem[offset + 6]
        anchor = mem[offset : offset + 5] == b"_SM3_"
        if anchor and length < 32 and sum(mem[offset : offset + length]) % 256 == 0:
            return layout.SMBIOS_START + offset
    raise AssertionError("no SMBIOS 3 entry point found")


def walk(table: bytes) -> tuple[list[Structure], int]:
    """Each structure by its formatted length and its string set, up to End-of-Table."""
    structures, at = [], 0
    while True:
        kind, length, handle = struct.unpack_from("<BBH", table, at)
        assert length >= 4, f"structure at {at} is {length} bytes"
        end = table.index(b"\0\0", at + length)
        strings_area = table[at + length : end + 2]
        # A structure without strings ends with two NULs; otherwise each string ends with a
        # NUL and one more ends the set.
        strings = [] if strings_area == b"\0\0" else strings_area[:-2].split(b"\0")
        assert all(strings), "an empty string in a string set"
        structures.append(Structure(kind, handle, table[at : at + length], strings))
        at = end + 2
        if kind == 127:
            return structures, at


def tables(oem_strings: list[str]) -> Tables:
    mem = memory(smbios.smbios_writes(oem_strings))
    at = find_entry_point(mem)
    raw = mem[at - layout.SMBIOS_START :][:24]
    anchor, _checksum, length, major, minor, docrev, revision, reserved, max_size, address = (
        struct.unpack("<5sBBBBBBBIQ", raw)
    )
    assert (anchor, length, reserved) == (b"_SM3_", 0x18, 0)
    offset = address - layout.SMBIOS_START
    assert offset >= 0 and offset + max_size <= len(mem), "the table is outside the area"
    structures, size = walk(mem[offset : offset + max_size])
    return Tables(raw, (major, minor, docrev), revision, max_size, address, structures, size)


def string(s: Structure, number: int) -> bytes | None:
    """The string a field names by its number (0: none)."""
    return s.strings[number - 1] if number else None


# --- the entry point -------------------------------------------------------------------------


@pytest.mark.parametrize("oem", [[], SAMPLE], ids=["no-oem", "oem"])
def test_entry_point(oem: list[str]) -> None:
    writes = smbios.smbios_writes(oem)
    t = tables(oem)
    assert writes[0][0] == layout.SMBIOS_START == find_entry_point(memory(writes))
    assert sum(t.entry_point) % 256 == 0
    assert t.version == (3, 0, 0) and t.revision == 1
    # The table follows on the next paragraph; its maximum size is its exact size.
    assert (t.address, t.address % 16) == (writes[1][0], 0)
    assert t.address >= layout.SMBIOS_START + 24
    assert t.max_size == t.size == len(writes[1][1])


# --- the structures --------------------------------------------------------------------------


def test_structures_in_order_with_handles() -> None:
    t = tables(SAMPLE)
    assert [(s.type, s.handle) for s in t.structures] == [(0, 0), (1, 1), (11, 2), (127, 3)]
    end = t.structures[-1]
    assert (end.formatted, end.strings) == (bytes.fromhex("7f040300"), [])


def test_no_oem_strings_no_type_11() -> None:
    t = tables([])
    assert [(s.type, s.handle) for s in t.structures] == [(0, 0), (1, 1), (127, 2)]


def test_bios_information() -> None:
    bios = tables([]).structures[0]
    assert len(bios.formatted) == 0x18  # the SMBIOS 2.4-3.0 length
    vendor, version, segment, date, rom_size = struct.unpack_from("<BBHBB", bios.formatted, 4)
    characteristics, ext1, ext2, major, minor, ec_major, ec_minor = struct.unpack_from(
        "<QBBBBBB", bios.formatted, 0x0A
    )
    assert (string(bios, vendor), string(bios, version), string(bios, date)) == (
        b"vmrun",
        b"vmrun",
        None,
    )
    assert (segment, rom_size) == (0, 0)
    assert characteristics == 1 << 3  # "BIOS characteristics are not supported"
    assert (ext1, ext2) == (0, 1 << 4)  # "SMBIOS table describes a virtual machine"
    assert (major, minor, ec_major, ec_minor) == (0xFF, 0xFF, 0xFF, 0xFF)  # not given


def test_system_information() -> None:
    system = tables([]).structures[1]
    assert len(system.formatted) == 0x1B  # the SMBIOS 2.4+ length
    manufacturer, product, version, serial, uuid, wake_up, sku, family = struct.unpack_from(
        "<BBBB16sBBB", system.formatted, 4
    )
    assert (string(system, manufacturer), string(system, product)) == (b"vmrun", b"vmrun microVM")
    assert (version, serial, sku, family) == (0, 0, 0, 0)
    assert uuid == bytes(16)  # no UUID
    assert wake_up == 6  # power switch


@pytest.mark.parametrize(
    "oem",
    [
        ["one"],
        SAMPLE,
        [" leading and trailing "],
        [f"s{i}" for i in range(smbios.MAX_OEM_STRINGS)],
    ],
    ids=["one", "non-ascii", "spaces", "255"],
)
def test_oem_strings_intact_and_in_order(oem: list[str]) -> None:
    s = tables(oem).structures[2]
    assert s.formatted == bytes([11, 5, 2, 0, len(oem)])
    assert s.strings == [text.encode() for text in oem]


def test_oem_strings_fill_the_area_exactly() -> None:
    # One string that takes all the room there is (with its NUL): the table ends at 1 MiB.
    writes = smbios.smbios_writes(["x" * (smbios.OEM_ROOM - 1)])
    table_at, table = writes[1]
    assert table_at + len(table) == layout.SMBIOS_END
    assert tables(["x" * (smbios.OEM_ROOM - 1)]).size == len(table)
    # Multi-byte characters count as their UTF-8 bytes.
    smbios.smbios_writes(["é" * ((smbios.OEM_ROOM - 1) // 2)])


# --- refusals --------------------------------------------------------------------------------


def refused(oem: list[str]) -> str:
    """The message smbios_writes raises, which oem_strings_problem gives without building."""
    with pytest.raises(smbios.SmbiosError) as info:
        smbios.smbios_writes(oem)
    assert smbios.oem_strings_problem(oem) == str(info.value)
    return str(info.value)


def test_too_many_strings() -> None:
    oem = ["s"] * 256
    assert refused(oem) == (
        "256 strings; the SMBIOS OEM Strings structure holds at most 255 (its count is one byte)"
    )
    assert smbios.oem_strings_problems(oem) == [(None, refused(oem))]


def test_string_with_a_nul() -> None:
    oem = ["fine", "a\0b"]
    assert refused(oem) == (
        "OEM string 2 holds a NUL character at position 1; an SMBIOS string ends at a NUL"
    )
    assert smbios.oem_strings_problems(oem) == [
        (1, "holds a NUL character at position 1; an SMBIOS string ends at a NUL")
    ]


def test_empty_string() -> None:
    oem = ["", "fine"]
    message = "is empty; an SMBIOS string needs a character (an empty one ends the string set)"
    assert refused(oem) == f"OEM string 1 {message}"
    assert smbios.oem_strings_problems(oem) == [(0, message)]


def test_lone_surrogate() -> None:
    # The config loader refuses these before; a caller of its own gets the same refusal.
    assert refused(["\ud800"]) == "OEM string 1 holds a lone UTF-16 surrogate, which is not text"


@pytest.mark.parametrize(
    "oem",
    [
        ["x" * smbios.OEM_ROOM],
        # OEM_ROOM - 1 characters, which would fit, but one more byte in UTF-8
        ["x" * (smbios.OEM_ROOM - 2) + "é"],
        ["y" * 256] * 255,
    ],
    ids=["one-byte-over", "utf8-over", "many"],
)
def test_too_big(oem: list[str]) -> None:
    size = sum(len(text.encode()) + 1 for text in oem)
    assert size > smbios.OEM_ROOM
    assert refused(oem) == (
        f"the strings take {size} bytes in UTF-8 with their NULs; the SMBIOS tables have room "
        f"for {smbios.OEM_ROOM}"
    )


def test_every_problem_at_once() -> None:
    oem = ["", "a\0"] + ["z" * 300] * 254
    assert [index for index, _ in smbios.oem_strings_problems(oem)] == [0, 1, None, None]
    assert smbios.oem_strings_problem(oem) == refused(oem)
    assert refused(oem).startswith("OEM string 1 is empty;")


def test_no_problem() -> None:
    assert smbios.oem_strings_problems(SAMPLE) == []
    assert smbios.oem_strings_problem(SAMPLE) is None
    assert smbios.oem_strings_problem([]) is None


# --- where the tables go ---------------------------------------------------------------------


@pytest.mark.parametrize("vcpus", [1, acpi.MAX_VCPUS])
def test_after_the_acpi_tables(vcpus: int) -> None:
    tables = acpi.acpi_tables(vcpus, legacy=LEGACY_DEVICES)
    acpi_end = max(gpa + len(data) for gpa, data in tables)
    for oem in ([], ["x" * (smbios.OEM_ROOM - 1)]):
        for gpa, data in smbios.smbios_writes(oem):
            assert acpi_end <= layout.SMBIOS_START <= gpa
            assert gpa + len(data) <= layout.SMBIOS_END == layout.HIMEM_START


def test_outside_ram() -> None:
    area = range(layout.SMBIOS_START, layout.SMBIOS_END)
    for entry in boot_params.e820_map(128 * layout.MIB):
        assert entry.end <= area.start or area.stop <= entry.addr, entry


# --- dmidecode -------------------------------------------------------------------------------


def dmidecode() -> str:
    path = shutil.which("dmidecode", path=os.pathsep.join([os.defpath, "/usr/sbin", "/sbin"]))
    if path is None:
        message = "dmidecode is not installed: apt-get install dmidecode"
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the SMBIOS tables with dmidecode: {message}")
        pytest.skip(message)
    return path


def dump(oem: list[str], path: Path) -> Path:
    """The file `dmidecode --dump-bin` would write: the entry point at offset 0 with its table
    address rewritten to 32 (and the checksum to match), the table at offset 32."""
    (_, entry_point), (_, table) = smbios.smbios_writes(oem)
    raw = bytearray(entry_point)
    struct.pack_into("<Q", raw, 0x10, 32)
    raw[5] = 0
    raw[5] = -sum(raw) & 0xFF
    path.write_bytes(bytes(raw).ljust(32, b"\0") + table)
    return path


def run_dmidecode(file: Path, *args: str) -> str:
    run = subprocess.run(
        [dmidecode(), "--from-dump", str(file), *args], capture_output=True, text=True
    )
    assert (run.returncode, run.stderr) == (0, "")
    # dmidecode marks what it cannot decode in its output.
    for mark in ("Invalid", "Wrong", "<BAD INDEX>", "<TRUNCATED>", "<OUT OF SPEC>", "broken"):
        assert mark not in run.stdout, run.stdout
    return run.stdout


def test_dmidecode_reads_the_tables(tmp_path: Path) -> None:
    file = dump(SAMPLE, tmp_path / "smbios.bin")
    out = run_dmidecode(file)
    assert "SMBIOS 3.0.0 present." in out
    handles = re.findall(r"^Handle (0x[0-9A-F]{4}), DMI type (\d+), (\d+) bytes$", out, re.M)
    assert handles == [
        ("0x0000", "0", "24"),
        ("0x0001", "1", "27"),
        ("0x0002", "11", "5"),
        ("0x0003", "127", "4"),
    ]


def test_dmidecode_bios_information(tmp_path: Path) -> None:
    out = run_dmidecode(dump(SAMPLE, tmp_path / "smbios.bin"), "-t", "0")
    assert "\tVendor: vmrun\n\tVersion: vmrun\n\tRelease Date: Not Specified\n" in out
    characteristics = out.split("\tCharacteristics:\n")[1]
    assert re.findall(r"^\t\t(.+)$", characteristics, re.M) == [
        "BIOS characteristics not supported",
        "System is a virtual machine",
    ]
    assert "BIOS Revision" not in out and "Firmware Revision" not in out


def test_dmidecode_system_information(tmp_path: Path) -> None:
    out = run_dmidecode(dump(SAMPLE, tmp_path / "smbios.bin"), "-t", "1")
    for line in (
        "Manufacturer: vmrun",
        "Product Name: vmrun microVM",
        "UUID: Not Settable",  # dmidecode's words for all zeros: there is none
        "Wake-up Type: Power Switch",
    ):
        assert f"\t{line}\n" in out


def test_dmidecode_oem_strings(tmp_path: Path) -> None:
    file = dump(SAMPLE, tmp_path / "smbios.bin")
    out = run_dmidecode(file, "-t", "11")
    # dmidecode shows each byte outside printable ASCII as a dot.
    shown = [re.sub(rb"[^\x20-\x7e]", b".", s.encode()).decode() for s in SAMPLE]
    assert re.findall(r"^\tString (\d+): (.*)$", out, re.M) == [
        (str(n), text) for n, text in enumerate(shown, 1)
    ]
    assert run_dmidecode(file, "--oem-string", "count") == f"{len(SAMPLE)}\n"
    # Its hex dump (-u) has the strings' bytes: UTF-8, NUL-terminated.
    dumped = run_dmidecode(file, "-u", "-t", "11")
    hex_rows = re.findall(r"^\t\t((?:[0-9A-F]{2} ?)+)$", dumped, re.M)
    assert bytes.fromhex(" ".join(hex_rows)) == bytes([11, 5, 2, 0, 3]) + b"".join(
        s.encode() + b"\0" for s in SAMPLE
    )


def test_dmidecode_without_oem_strings(tmp_path: Path) -> None:
    file = dump([], tmp_path / "smbios.bin")
    assert "DMI type 11" not in run_dmidecode(file)
    assert run_dmidecode(file, "-t", "11").endswith("SMBIOS 3.0.0 present.\n\n")
