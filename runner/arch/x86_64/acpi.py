"""ACPI tables: how a guest kernel without MP-table parsing finds its vCPUs and I/O APIC.

Kernels built without CONFIG_X86_MPPARSE (Debian's cloud kernels among them) ignore the MP
table and boot on one CPU ("APIC: ACPI MADT or MP tables are not detected"); they read the
MADT instead. vmrun writes the smallest set Linux takes: RSDP -> XSDT -> FADT (-> DSDT) and
MADT, the set Firecracker writes.

Facts (ACPI 6.5 chapter 5.2; Linux include/acpi/actbl.h, actbl2.h, drivers/acpi/acpica/
tbxfroot.c, arch/x86/kernel/acpi/boot.c; EDK2 Acpi65.h for the revision numbers; Firecracker
src/acpi-tables and src/vmm/src/acpi; KVM irq_comm.c):

- Without EFI and without boot_params.acpi_rsdp_addr, Linux scans 0xe0000-0xfffff in 16-byte
  steps for "RSD PTR " whose first 20 bytes sum to 0 and, for revision 2, whose whole 36
  bytes (the length field) sum to 0 too. The RSDP is not a table: it has no SDT header.
- Every other table starts with the 36-byte SDT header (signature, length of the whole table,
  revision, checksum, OEM id, OEM table id, OEM revision, creator id and revision); all its
  bytes sum to 0 mod 256. The XSDT's body is 64-bit physical addresses of the other tables;
  the DSDT is found through the FADT's X_DSDT, not through the XSDT.
- ACPI 6.5 numbers: RSDP revision 2, XSDT 1, FADT 6 with minor version 5 (276 bytes, up to
  the hypervisor vendor id), MADT 6, DSDT 2 (AML integers are 64-bit).
- FADT flags: HW_REDUCED_ACPI (bit 20) says there is no fixed ACPI hardware (no PM1 event or
  control blocks, no PM timer, no SCI, no SMI command port, no FACS), which vmrun does not
  emulate; without it ACPICA requires those blocks. PWR_BUTTON and SLP_BUTTON (bits 4, 5) say
  there is no fixed power or sleep button. These three are what Firecracker sets. In this mode
  Linux replaces the legacy PIC with a null one and skips the PIT timer setup
  (acpi_generic_reduced_hw_init): the guest runs on the local APIC timer and kvm-clock.
- IAPC_BOOT_ARCH (boot_flags): Firecracker sets VGA Not Present, MSI Not Supported and PCIe
  ASPM Controls. vmrun also sets 8042 (bit 1), because it does emulate an i8042 (the reset
  line for reboot=k): Linux marks the i8042 "firmware absent" when a revision-3+ FADT lacks
  that bit. LEGACY_DEVICES (bit 0; Linux only drops the PnP BIOS probe without it) and
  CMOS RTC Not Present (bit 5; vmrun has a CMOS RTC) stay clear, as in Firecracker.
- MADT: local APIC address and flags (PCAT_COMPAT, bit 0: there is also a dual 8259, which
  KVM's in-kernel irqchip provides; clear with a split irqchip, which has none), then
  variable entries: Processor Local APIC (type 0, 8 bytes: ACPI processor UID, APIC id,
  flags bit 0 Enabled), I/O APIC (type 1, 12 bytes: id, address, GSI base), Local APIC NMI
  (type 4, 6 bytes: UID 0xff for all processors, MPS INTI flags, LINT#). The NMI entry wires
  LINT1 to NMI, as the MP table does.
- DSDT devices: in hardware-reduced mode Linux has no legacy PIC, so it reserves no IRQ
  numbers 0-15 for ISA and its I/O APIC interrupt domain is dynamic (acpi_parse_ioapic:
  "legacy" only for GSI bases below nr_legacy_irqs(), now 0): a GSI gets an IRQ number only
  when something maps it, and those numbers start above the I/O APIC's 24 pins. Drivers that
  request a fixed ISA IRQ (the 8250 ports' built-in table: IRQ 4 for ttyS0; the i8042's 1;
  rtc_cmos's 8) then fail with -EINVAL; with a header-only DSDT the serial console gives the
  workload no output. Firecracker therefore describes COM1-COM4 (PNP0501) and the i8042
  (PNP0303) in its DSDT; vmrun does the same and adds the CMOS RTC (PNP0B00), which it also
  emulates. Linux's PnP-ACPI layer maps each _CRS interrupt (acpi_register_gsi) and the PnP
  drivers (8250_pnp, rtc_cmos) take over the legacy ports with the mapped IRQ. The i8042
  driver only does so without `i8042.nopnp`.
  AML used (ACPI 6.5 chapter 20; resource descriptors 6.4): Scope(\\_SB) { Device(COMn) {
  Name(_HID, EisaId("PNP0501")), Name(_UID, n), Name(_CRS, ResourceTemplate() { IO(Decode16,
  base, base, 1, 8), Interrupt(ResourceConsumer, Edge, ActiveHigh, Shared) { irq } }) } ... }.
- virtio-mmio devices: Debian's cloud kernel has no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so
  it finds them only here, as QEMU's microvm describes them: Device(VRnn) { Name(_HID,
  "LNRO0005"), Name(_UID, n), Name(_CCA, One), Name(_CRS, ResourceTemplate() {
  Memory32Fixed(ReadWrite, base, size), Interrupt(ResourceConsumer, Edge, ActiveHigh,
  Exclusive) { gsi } }) }. Edge, because vmrun raises them through irqfd (a pulse). Kernels
  without ACPI (libkrunfw's) take `virtio_mmio.device=` entries instead, and the ones with
  both (cmdline devices and ACPI) would see each device twice, which no kernel vmrun boots
  has (tests/boot check each device appears once).
- No Interrupt Source Override. A PC's firmware says ISA IRQ 0 -> GSI 2 because its chipset
  (and QEMU, which reprograms KVM's routing that way) wires the PIT to I/O APIC pin 2. vmrun
  keeps KVM's default routing, in which GSI n goes to I/O APIC pin n (and 8259 pin n % 8)
  for n < 16, and the in-kernel PIT raises GSI 0: ISA IRQs are identity-mapped, which is
  what ACPI assumes where no override is given. An override for IRQ 0 would also be taken
  for the SCI's own override here: Linux treats any override whose source equals the FADT's
  SCI_INT (0 in a hardware-reduced FADT) as the SCI and makes it level, active low.
- xAPIC ids are 8 bits and 0xff is the broadcast id; the I/O APIC takes the id after the
  vCPUs (as in the MP table), so at most 254 vCPUs.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence

import attrs

from runner.arch.x86_64 import layout
from runner.errors import VmrunError

MAX_VCPUS = 254
ACPI_ADDRESS = layout.ACPI_START
# The tables must end below the start of the kernel's RAM at 1 MiB.
ACPI_END = layout.SMBIOS_START
TABLE_ALIGN = 16  # each table starts on a paragraph, like the RSDP must

OEM_ID = b"VMRUN "  # 6 bytes, space padded
OEM_REVISION = 1
CREATOR_ID = b"VMRN"
CREATOR_REVISION = 1
# One OEM table id for every table: the machine's model; Linux only prints it.
OEM_TABLE_ID = b"VMRUNVM "
# The FADT's Hypervisor Vendor Identity (ACPI 6.0): who made the tables; Linux ignores it.
HYPERVISOR_VENDOR_ID = b"VMRUNKVM"

# --- RSDP ------------------------------------------------------------------------------------
RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2  # ACPI 2.0+: has the length, the XSDT address and the extended checksum
RSDP = struct.Struct("<8sB6sBIIQB3x")  # 36 bytes
RSDP_V1_LENGTH = 20  # the part covered by the first checksum

# --- The common table header -----------------------------------------------------------------
SDT_HEADER = struct.Struct("<4sIBB6s8sI4sI")  # 36 bytes
SDT_CHECKSUM_OFFSET = 9

XSDT_SIGNATURE = b"XSDT"
XSDT_REVISION = 1

# --- FADT ("FACP") ---------------------------------------------------------------------------
FADT_SIGNATURE = b"FACP"
FADT_REVISION = 6
FADT_MINOR_VERSION = 5  # ACPI 6.5
FADT_LENGTH = 276
# Offsets of the fields vmrun sets (ACPI 6.5 table 5.9); all others are 0.
FADT_IAPC_BOOT_ARCH = 109  # u16
FADT_FLAGS = 112  # u32
FADT_MINOR_VERSION_OFFSET = 131  # u8
FADT_X_DSDT = 140  # u64
FADT_HYPERVISOR_VENDOR_ID = 268  # 8 bytes

# IAPC_BOOT_ARCH bits
IAPC_LEGACY_DEVICES = 1 << 0
IAPC_8042 = 1 << 1
IAPC_VGA_NOT_PRESENT = 1 << 2
IAPC_MSI_NOT_SUPPORTED = 1 << 3
IAPC_PCIE_ASPM_CONTROLS = 1 << 4
IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5
IAPC_BOOT_ARCH = IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_PCIE_ASPM_CONTROLS

# FADT flags
FADT_PWR_BUTTON = 1 << 4
FADT_SLP_BUTTON = 1 << 5
FADT_HW_REDUCED_ACPI = 1 << 20
FADT_LOW_POWER_S0_IDLE_CAPABLE = 1 << 21  # not set: Firecracker does not claim it either
FADT_FLAGS_VALUE = FADT_HW_REDUCED_ACPI | FADT_PWR_BUTTON | FADT_SLP_BUTTON

# --- DSDT ------------------------------------------------------------------------------------
DSDT_SIGNATURE = b"DSDT"
DSDT_REVISION = 2

# AML opcodes and prefixes (ACPI 6.5 section 20.2)
AML_ZERO, AML_ONE = 0x00, 0x01
AML_NAME = 0x08
AML_BYTE, AML_WORD, AML_DWORD, AML_STRING, AML_QWORD = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
AML_SCOPE = 0x10
AML_BUFFER = 0x11
AML_EXT_PREFIX, AML_DEVICE = 0x5B, 0x82
AML_ROOT = 0x5C  # the root prefix, a backslash

# Resource descriptors (ACPI 6.5 section 6.4)
RES_IO = 0x47  # small item, type 0x08, 7 bytes follow
RES_IO_DECODE16 = 0x01
RES_EXTENDED_IRQ = 0x89  # large item, type 0x09
RES_IRQ_CONSUMER = 1 << 0
RES_IRQ_EDGE = 1 << 1  # clear: level
RES_IRQ_ACTIVE_LOW = 1 << 2  # clear: active high
RES_IRQ_SHARED = 1 << 3
RES_MEMORY32_FIXED = 0x86  # large item, type 0x06, 9 bytes follow
RES_MEMORY_READ_WRITE = 1 << 0
RES_END = 0x79  # small item, type 0x0F, 1 byte follows: the checksum (0: not checked)


# --- MADT ("APIC") ---------------------------------------------------------------------------
MADT_SIGNATURE = b"APIC"
MADT_REVISION = 6
MADT_FIXED = struct.Struct("<II")  # local interrupt controller address, flags
MADT_PCAT_COMPAT = 1 << 0

MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INTERRUPT_OVERRIDE = 2  # not written (see the module docstring)
MADT_LOCAL_APIC_NMI = 4

LOCAL_APIC = struct.Struct("<BBBBI")  # type, length, ACPI processor UID, APIC id, flags
IO_APIC = struct.Struct("<BBBBII")  # type, length, I/O APIC id, reserved, address, GSI base
LOCAL_APIC_NMI = struct.Struct("<BBBHB")  # type, length, ACPI processor UID, INTI flags, LINT#

LOCAL_APIC_ENABLED = 1 << 0
ALL_PROCESSORS = 0xFF  # the ACPI processor UID meaning every processor
MPS_INTI_CONFORMING = 0  # polarity and trigger as the bus defines them
NMI_LINT = 1
IOAPIC_GSI_BASE = 0


class AcpiError(VmrunError, ValueError):
    """ACPI tables that cannot describe the machine."""


def _checksum(data: bytes) -> int:
    """The byte that makes `data` plus it sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _align(address: int) -> int:
    return (address + TABLE_ALIGN - 1) // TABLE_ALIGN * TABLE_ALIGN


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    """An SDT header for `body`, with the checksum over both, followed by `body`."""
    length = SDT_HEADER.size + len(body)

    def header(checksum: int) -> bytes:
        return SDT_HEADER.pack(
            signature,
            length,
            revision,
            checksum,
            OEM_ID,
            OEM_TABLE_ID,
            OEM_REVISION,
            CREATOR_ID,
            CREATOR_REVISION,
        )

    return header(_checksum(header(0) + body)) + body


def rsdp(xsdt_address: int) -> bytes:
    """The revision-2 RSDP pointing at the XSDT, with both checksums."""

    def pack(checksum: int, extended: int) -> bytes:
        return RSDP.pack(
            RSDP_SIGNATURE, checksum, OEM_ID, RSDP_REVISION, 0, RSDP.size, xsdt_address, extended
        )

    checksum = _checksum(pack(0, 0)[:RSDP_V1_LENGTH])
    return pack(checksum, _checksum(pack(checksum, 0)))


def xsdt(table_addresses: list[int]) -> bytes:
    return _table(
        XSDT_SIGNATURE, XSDT_REVISION, struct.pack(f"<{len(table_addresses)}Q", *table_addresses)
    )


def fadt(dsdt_address: int) -> bytes:
    body = bytearray(FADT_LENGTH - SDT_HEADER.size)

    def put(fmt: str, offset: int, *values: object) -> None:
        struct.pack_into(fmt, body, offset - SDT_HEADER.size, *values)

    put("<H", FADT_IAPC_BOOT_ARCH, IAPC_BOOT_ARCH)
    put("<I", FADT_FLAGS, FADT_FLAGS_VALUE)
    put("<B", FADT_MINOR_VERSION_OFFSET, FADT_MINOR_VERSION)
    put("<Q", FADT_X_DSDT, dsdt_address)
    put("8s", FADT_HYPERVISOR_VENDOR_ID, HYPERVISOR_VENDOR_ID)
    return _table(FADT_SIGNATURE, FADT_REVISION, bytes(body))


def _pkg_length(content: int) -> bytes:
    """The PkgLength encoding of a package with `content` bytes after the PkgLength itself:
    one byte up to 63 in all, else a lead byte (count of following bytes in bits 7-6, the
    low nibble in bits 3-0) and 1-3 bytes with the rest, the PkgLength counting itself."""
    if content + 1 < 1 << 6:
        return bytes([content + 1])
    for follow in (1, 2, 3):
        total = content + 1 + follow
        if total < 1 << (4 + 8 * follow):
            rest = (total >> 4).to_bytes(follow, "little")
            return bytes([follow << 6 | (total & 0xF)]) + rest
    raise AcpiError(f"an AML package of {content} bytes is too long")


def _name_seg(name: str) -> bytes:
    data = name.encode("ascii")
    assert len(data) == 4 and (data[:1].isupper() or data[:1] == b"_"), name
    return data


def _integer(value: int) -> bytes:
    """The shortest AML integer constant for `value`."""
    if value in (0, 1):
        return bytes([AML_ZERO if value == 0 else AML_ONE])
    for prefix, fmt in ((AML_BYTE, "<B"), (AML_WORD, "<H"), (AML_DWORD, "<I")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([prefix]) + struct.pack(fmt, value)
    return bytes([AML_QWORD]) + struct.pack("<Q", value)


def eisa_id(text: str) -> int:
    """EisaId("PNP0501"): three letters of 5 bits (A = 1) and four hex digits, stored as a
    big-endian 32-bit value (so PNP0501 is the little-endian dword 0x0105D041)."""
    assert len(text) == 7 and text[:3].isupper() and text[:3].isalpha(), text
    letters = (ord(text[0]) - 0x40) << 10 | (ord(text[1]) - 0x40) << 5 | (ord(text[2]) - 0x40)
    return int.from_bytes(struct.pack(">HH", letters, int(text[3:], 16)), "little")


def _name(name: str, data: bytes) -> bytes:
    return bytes([AML_NAME]) + _name_seg(name) + data


def _buffer(data: bytes) -> bytes:
    content = _integer(len(data)) + data
    return bytes([AML_BUFFER]) + _pkg_length(len(content)) + content


def _resource_template(*descriptors: bytes) -> bytes:
    return _buffer(b"".join(descriptors) + bytes([RES_END, 0]))


def _io(base: int, length: int) -> bytes:
    """IO(Decode16, base, base, 1, length): a fixed port range."""
    return struct.pack("<BBHHBB", RES_IO, RES_IO_DECODE16, base, base, 1, length)


def _interrupt(gsi: int, shared: bool = False) -> bytes:
    """Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive or Shared) { gsi }: how ISA
    devices signal, as a GSI (no ISA-override lookup, unlike the small IRQ descriptor)."""
    flags = RES_IRQ_CONSUMER | RES_IRQ_EDGE | (RES_IRQ_SHARED if shared else 0)
    return struct.pack("<BHBBI", RES_EXTENDED_IRQ, 2 + 4, flags, 1, gsi)


def _memory32_fixed(base: int, length: int) -> bytes:
    """Memory32Fixed(ReadWrite, base, length)."""
    return struct.pack("<BHBII", RES_MEMORY32_FIXED, 9, RES_MEMORY_READ_WRITE, base, length)


def _string(text: str) -> bytes:
    return bytes([AML_STRING]) + text.encode("ascii") + b"\0"


@attrs.frozen
class VirtioMmioWindow:
    """A virtio-mmio device as the DSDT describes it: its register window and its GSI."""

    base: int
    size: int
    gsi: int


@attrs.frozen
class LegacyDevice:
    """A PC device as the DSDT describes it: its AML name (4 characters), its EISA id, its
    I/O port ranges (base, count) and its ISA IRQ (shared when two devices are on it)."""

    name: str
    hid: str
    ports: tuple[tuple[int, int], ...]
    irq: int
    uid: int | None = None
    shared: bool = False


def _device(name: str, *objects: bytes) -> bytes:
    content = _name_seg(name) + b"".join(objects)
    return bytes([AML_EXT_PREFIX, AML_DEVICE]) + _pkg_length(len(content)) + content


def _scope(path: bytes, *objects: bytes) -> bytes:
    content = path + b"".join(objects)
    return bytes([AML_SCOPE]) + _pkg_length(len(content)) + content


def dsdt_aml(legacy: Sequence[LegacyDevice] = (), virtio: Sequence[VirtioMmioWindow] = ()) -> bytes:
    """Scope(\\_SB) with the `legacy` devices (the builder's: runner/builder.py
    `LEGACY_DEVICES`), then the `virtio` devices in slot order."""
    devices = []
    for device in legacy:
        objects = [_name("_HID", bytes([AML_DWORD]) + struct.pack("<I", eisa_id(device.hid)))]
        if device.uid is not None:
            objects.append(_name("_UID", _integer(device.uid)))
        ports = [_io(base, count) for base, count in device.ports]
        resources = _resource_template(*ports, _interrupt(device.irq, device.shared))
        objects.append(_name("_CRS", resources))
        devices.append(_device(device.name, *objects))
    for index, window in enumerate(virtio):
        devices.append(
            _device(
                f"VR{index:02X}",
                _name("_HID", _string("LNRO0005")),
                _name("_UID", _integer(index)),
                _name("_CCA", _integer(1)),  # cache-coherent: DMA needs no syncing
                _name(
                    "_CRS",
                    _resource_template(
                        _memory32_fixed(window.base, window.size), _interrupt(window.gsi)
                    ),
                ),
            )
        )
    return _scope(bytes([AML_ROOT]) + _name_seg("_SB_"), *devices)


def dsdt(legacy: Sequence[LegacyDevice] = (), virtio: Sequence[VirtioMmioWindow] = ()) -> bytes:
    return _table(DSDT_SIGNATURE, DSDT_REVISION, dsdt_aml(legacy, virtio))


def madt(vcpus: int, legacy_pic: bool = True) -> bytes:
    """Local APICs 0..vcpus-1 (ACPI processor UID = APIC id), the I/O APIC with id `vcpus`,
    and LINT1 as NMI on every processor; PCAT_COMPAT when there is a `legacy_pic`."""
    flags = MADT_PCAT_COMPAT if legacy_pic else 0
    entries = [MADT_FIXED.pack(layout.APIC_START, flags)]
    for apic_id in range(vcpus):
        entries.append(
            LOCAL_APIC.pack(MADT_LOCAL_APIC, LOCAL_APIC.size, apic_id, apic_id, LOCAL_APIC_ENABLED)
        )
    entries.append(
        IO_APIC.pack(MADT_IO_APIC, IO_APIC.size, vcpus, 0, layout.IOAPIC_START, IOAPIC_GSI_BASE)
    )
    entries.append(
        LOCAL_APIC_NMI.pack(
            MADT_LOCAL_APIC_NMI, LOCAL_APIC_NMI.size, ALL_PROCESSORS, MPS_INTI_CONFORMING, NMI_LINT
        )
    )
    return _table(MADT_SIGNATURE, MADT_REVISION, b"".join(entries))


def acpi_size(vcpus: int, legacy: Sequence[LegacyDevice] = ()) -> int:
    """Bytes from ACPI_ADDRESS to the end of the last table for `vcpus` vCPUs."""
    gpa, data = acpi_tables(vcpus, legacy=legacy)[-1]
    return gpa + len(data) - ACPI_ADDRESS


def acpi_tables(
    vcpus: int,
    legacy_pic: bool = True,
    legacy: Sequence[LegacyDevice] = (),
    virtio: Sequence[VirtioMmioWindow] = (),
) -> list[tuple[int, bytes]]:
    """(guest physical address, bytes) of the RSDP, XSDT, FADT, DSDT and MADT for `vcpus`;
    `legacy_pic` false for a machine without a dual 8259 (a split irqchip); `legacy` the PC
    devices and `virtio` the virtio-mmio devices (in slot order) that the builder attaches."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise AcpiError(f"{vcpus} vCPUs; the MADT describes 1 to {MAX_VCPUS}")

    # Fixed-size tables first, so every address but the MADT's end is the same for all vCPU
    # counts; the XSDT's size is fixed too (two entries), so its address can be known first.
    xsdt_address = _align(ACPI_ADDRESS + RSDP.size)
    fadt_address = _align(xsdt_address + SDT_HEADER.size + 2 * 8)
    dsdt_address = _align(fadt_address + FADT_LENGTH)
    dsdt_table = dsdt(legacy, virtio)
    madt_address = _align(dsdt_address + len(dsdt_table))

    writes = [
        (ACPI_ADDRESS, rsdp(xsdt_address)),
        (xsdt_address, xsdt([fadt_address, madt_address])),
        (fadt_address, fadt(dsdt_address)),
        (dsdt_address, dsdt_table),
        (madt_address, madt(vcpus, legacy_pic)),
    ]
    for (gpa, data), (next_gpa, _) in itertools.pairwise(writes):
        assert gpa + len(data) <= next_gpa, f"ACPI table at {gpa:#x} overlaps the next"
    last_gpa, last = writes[-1]
    assert last_gpa + len(last) <= ACPI_END, "the ACPI tables run into the SMBIOS area"
    return writes
