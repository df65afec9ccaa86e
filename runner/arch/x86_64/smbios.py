"""SMBIOS tables: how a guest reads the VM file's OEM strings, and who made its machine.

Facts (DMTF DSP0134, the SMBIOS reference specification 3.x: 5.2.2 the 64-bit entry point,
6.1 structures and text strings, 7.1 BIOS Information, 7.2 System Information, 7.12 OEM
Strings, 7.45 End-of-Table; Linux drivers/firmware/dmi_scan.c; dmidecode):

- Without EFI, Linux (CONFIG_DMI_SCAN_MACHINE_NON_EFI_FALLBACK, on for x86) scans
  0xf0000-0xfffff in 16-byte steps for a 64-bit entry point: "_SM3_", a length byte (offset
  6) below 32, and that many bytes summing to 0 mod 256; only if there is none does it look
  for a 32-bit "_SM_" one. The entry point gives the version, the structure table's maximum
  size (u32) and its 64-bit address, but no structure count: the table ends with an
  End-of-Table structure (type 127), where Linux and dmidecode stop.
- A structure is a formatted area (type, the formatted area's length, a 16-bit handle, then
  the type's fields) followed by its string set: each string NUL-terminated, the set ended by
  one more NUL, so a structure without strings ends with two NULs. Fields name a string by
  its number in the set, from 1; 0 means none. A string can hold no NUL and cannot be empty
  (its NUL would end the set early). SMBIOS 3.5 says strings are UTF-8 (earlier versions
  leave the encoding open); dmidecode shows bytes outside printable ASCII as dots.
- BIOS Information (type 0) as of SMBIOS 2.4-3.0 is 0x18 bytes. Characteristics bit 3 says
  the characteristics are not supported (there is no BIOS to have any); extension byte 2 bit
  4 says the tables describe a virtual machine. 0xff in both BIOS release bytes and both
  embedded controller release bytes means "not given". Address segment 0: no BIOS image below
  1 MiB. The release date is left out (string 0): Linux looks at the BIOS year for a few
  legacy choices (i8237 DMA, PCI _CRS, ACPI sleep); without a date it makes them as it did
  before vmrun wrote SMBIOS tables.
- System Information (type 1) as of 2.4 is 0x1b bytes. A UUID of all zeros means there is
  none and none can be set (dmidecode: "Not Settable"; all 0xff would mean none yet, but
  settable); Linux then gives no product_uuid.
- OEM Strings (type 11): a count byte, then that many strings. Linux keeps each string for
  dmi_find_device (except strings of spaces only, which it treats as empty);
  /sys/firmware/dmi/entries/11-0/raw holds the structure as written.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from runner.arch.x86_64 import layout
from runner.errors import VmrunError

MAX_OEM_STRINGS = 255  # the OEM Strings structure's count is one byte
TABLE_ALIGN = 16

# --- The 64-bit entry point ------------------------------------------------------------------
ANCHOR = b"_SM3_"
# anchor, checksum, length, major, minor, docrev, entry point revision, reserved, structure
# table maximum size, structure table address: 24 bytes
ENTRY_POINT = struct.Struct("<5sBBBBBBBIQ")
SMBIOS_MAJOR, SMBIOS_MINOR, SMBIOS_DOCREV = 3, 0, 0
ENTRY_POINT_REVISION = 1  # the 3.0 entry point's layout

ENTRY_POINT_ADDRESS = layout.SMBIOS_START
# The table follows the entry point, on the next paragraph.
TABLE_ADDRESS = -(-(ENTRY_POINT_ADDRESS + ENTRY_POINT.size) // TABLE_ALIGN) * TABLE_ALIGN
MAX_TABLE_SIZE = layout.SMBIOS_END - TABLE_ADDRESS

# --- Structures ------------------------------------------------------------------------------
HEADER = struct.Struct("<BBH")  # type, formatted area length, handle

BIOS_INFORMATION = 0
# vendor, version (strings), starting address segment, release date (string), ROM size,
# characteristics, extension bytes 1 and 2, BIOS major and minor release, embedded
# controller major and minor release
BIOS_FIELDS = struct.Struct("<BBHBBQBBBBBB")
BIOS_CHARACTERISTICS_NOT_SUPPORTED = 1 << 3
BIOS_EXT2_VIRTUAL_MACHINE = 1 << 4
ROM_SIZE_64K = 0  # 64 KiB * (n + 1); the field cannot say "no ROM"
RELEASE_NOT_GIVEN = 0xFF

SYSTEM_INFORMATION = 1
# manufacturer, product name, version, serial number (strings), UUID, wake-up type, SKU
# number, family (strings)
SYSTEM_FIELDS = struct.Struct("<BBBB16sBBB")
UUID_NOT_PRESENT = bytes(16)
WAKE_UP_POWER_SWITCH = 6

OEM_STRINGS = 11
OEM_FIELDS = struct.Struct("<B")  # count

END_OF_TABLE = 127

VENDOR = "vmrun"
BIOS_VERSION = "vmrun"
PRODUCT_NAME = "vmrun microVM"
NO_STRING = 0


class SmbiosError(VmrunError, ValueError):
    """OEM strings that the SMBIOS tables cannot hold."""


def _checksum(data: bytes) -> int:
    """The byte that makes `data` plus it sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _structure(kind: int, handle: int, fields: bytes, strings: Sequence[bytes] = ()) -> bytes:
    """The header, the formatted area's `fields`, then the string set."""
    header = HEADER.pack(kind, HEADER.size + len(fields), handle)
    string_set = (b"".join(text + b"\0" for text in strings) + b"\0") if strings else b"\0\0"
    return header + fields + string_set


def _bios_information(handle: int) -> bytes:
    fields = BIOS_FIELDS.pack(
        1,  # vendor
        2,  # BIOS version
        0,  # starting address segment
        NO_STRING,  # release date
        ROM_SIZE_64K,
        BIOS_CHARACTERISTICS_NOT_SUPPORTED,
        0,
        BIOS_EXT2_VIRTUAL_MACHINE,
        RELEASE_NOT_GIVEN,
        RELEASE_NOT_GIVEN,
        RELEASE_NOT_GIVEN,
        RELEASE_NOT_GIVEN,
    )
    return _structure(BIOS_INFORMATION, handle, fields, [VENDOR.encode(), BIOS_VERSION.encode()])


def _system_information(handle: int) -> bytes:
    fields = SYSTEM_FIELDS.pack(
        1,  # manufacturer
        2,  # product name
        NO_STRING,  # version
        NO_STRING,  # serial number
        UUID_NOT_PRESENT,
        WAKE_UP_POWER_SWITCH,
        NO_STRING,  # SKU number
        NO_STRING,  # family
    )
    return _structure(SYSTEM_INFORMATION, handle, fields, [VENDOR.encode(), PRODUCT_NAME.encode()])


def _oem_strings(handle: int, encoded: Sequence[bytes]) -> bytes:
    return _structure(OEM_STRINGS, handle, OEM_FIELDS.pack(len(encoded)), encoded)


def _end_of_table(handle: int) -> bytes:
    return _structure(END_OF_TABLE, handle, b"")


# Everything but the OEM strings' own bytes (with their NULs): the other structures, the OEM
# Strings header and count, and the NUL that ends its string set.
FIXED_SIZE = (
    len(_bios_information(0))
    + len(_system_information(1))
    + HEADER.size
    + OEM_FIELDS.size
    + 1
    + len(_end_of_table(3))
)
# How many bytes the OEM strings can take, each with its NUL.
OEM_ROOM = MAX_TABLE_SIZE - FIXED_SIZE


def oem_string_problem(text: str) -> str | None:
    """Why `text` cannot be an SMBIOS string, or None."""
    if not text:
        return "is empty; an SMBIOS string needs a character (an empty one ends the string set)"
    if "\0" in text:
        position = text.index("\0")
        return f"holds a NUL character at position {position}; an SMBIOS string ends at a NUL"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "holds a lone UTF-16 surrogate, which is not text"
    return None


def oem_strings_problems(strings: Sequence[str]) -> list[tuple[int | None, str]]:
    """Every reason `strings` cannot be the OEM Strings structure: (the string's index, or None
    for the whole list; the message), each string's first, then the count's and the size's."""
    problems: list[tuple[int | None, str]] = []
    for index, text in enumerate(strings):
        problem = oem_string_problem(text)
        if problem is not None:
            problems.append((index, problem))
    if len(strings) > MAX_OEM_STRINGS:
        problems.append(
            (
                None,
                f"{len(strings)} strings; the SMBIOS OEM Strings structure holds at most "
                f"{MAX_OEM_STRINGS} (its count is one byte)",
            )
        )
    size = sum(len(text.encode("utf-8", "surrogatepass")) + 1 for text in strings)
    if size > OEM_ROOM:
        problems.append(
            (
                None,
                f"the strings take {size} bytes in UTF-8 with their NULs; the SMBIOS tables "
                f"have room for {OEM_ROOM}",
            )
        )
    return problems


def oem_strings_problem(strings: Sequence[str]) -> str | None:
    """The first reason `strings` cannot be the OEM Strings structure, as one message (a
    string is named by its SMBIOS number, from 1), or None."""
    for index, message in oem_strings_problems(strings):
        return message if index is None else f"OEM string {index + 1} {message}"
    return None


def entry_point(table_address: int, table_size: int) -> bytes:
    """The 24-byte SMBIOS 3.0 entry point for a table of `table_size` bytes at `table_address`."""

    def pack(checksum: int) -> bytes:
        return ENTRY_POINT.pack(
            ANCHOR,
            checksum,
            ENTRY_POINT.size,
            SMBIOS_MAJOR,
            SMBIOS_MINOR,
            SMBIOS_DOCREV,
            ENTRY_POINT_REVISION,
            0,
            table_size,
            table_address,
        )

    return pack(_checksum(pack(0)))


def structure_table(oem_strings: Sequence[str]) -> bytes:
    """BIOS Information, System Information, OEM Strings (when there are any) and
    End-of-Table, with handles 0, 1, ... in that order."""
    problem = oem_strings_problem(oem_strings)
    if problem is not None:
        raise SmbiosError(problem)
    structures = [_bios_information(0), _system_information(1)]
    if oem_strings:
        structures.append(_oem_strings(2, [text.encode() for text in oem_strings]))
    structures.append(_end_of_table(len(structures)))
    return b"".join(structures)


def smbios_writes(oem_strings: Sequence[str]) -> list[tuple[int, bytes]]:
    """(guest physical address, bytes) of the entry point and the structure table."""
    table = structure_table(oem_strings)
    assert len(table) <= MAX_TABLE_SIZE, "the SMBIOS table runs past 1 MiB"
    return [
        (ENTRY_POINT_ADDRESS, entry_point(TABLE_ADDRESS, len(table))),
        (TABLE_ADDRESS, table),
    ]
