"""Reading an ELF vmlinux: its loadable segments, its entry point and its PVH entry note.

Facts this module relies on (the ELF-64 object file format; Xen's public/elfnote.h; the
x86 PVH boot ABI, Documentation/arch/x86/boot.rst and arch/x86/platform/pvh/head.S):

- An x86_64 vmlinux is ELFCLASS64, little-endian, e_machine EM_X86_64 (62), e_type ET_EXEC.
- Its PT_LOAD segments carry both a virtual (p_vaddr, 0xffffffff81000000 and up) and a
  physical address (p_paddr, 16 MiB and up); with paging off, a loader puts them at p_paddr.
  p_memsz beyond p_filesz is zero-filled (.bss).
- e_entry is virtual in most ELF files (vmlinux itself names phys_startup_64, already
  physical); a virtual entry is made physical with the p_vaddr - p_paddr offset of the
  segment that holds it.
- A kernel built with CONFIG_PVH carries a note (in a PT_NOTE segment) named "Xen" of type
  XEN_ELFNOTE_PHYS32_ENTRY (18) whose value is the physical address of its 32-bit PVH entry
  (pvh_start_xen), 4 or 8 bytes wide (Linux writes it with _ASM_PTR: 8 on x86_64).
- A note is namesz, descsz, type (32 bits each), then the name and the value, each padded to
  the segment's alignment (4, or 8 when p_align says 8).
"""

from __future__ import annotations

import itertools
import struct

import attrs

from runner.arch.x86_64 import layout
from runner.errors import VmrunError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF  # the real count is elsewhere: never the case for a kernel
XEN_ELFNOTE_PHYS32_ENTRY = 18

_EHDR = struct.Struct("<HHIQQQIHHHHHH")  # from e_type (offset 16) to e_shstrndx
_EHDR_SIZE = 16 + _EHDR.size  # 64
# p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
_PHDR = struct.Struct("<IIQQQQQQ")
_NOTE = struct.Struct("<III")  # namesz descsz type

_TYPES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
_MACHINES = {
    3: "i386",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC 64",
    22: "s390",
    40: "ARM",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}
_ADDRESS_LIMIT = 1 << 64


class ElfError(VmrunError, ValueError):
    """What is wrong with an ELF kernel; the loader names the file."""


@attrs.frozen
class LoadSegment:
    """One PT_LOAD segment, by its index in the program header table."""

    index: int
    paddr: int
    vaddr: int
    data: bytes | memoryview  # a view of the file: nothing is copied until guest memory
    mem_size: int

    @property
    def span(self) -> str:
        return f"{self.paddr:#x}-{self.paddr + self.mem_size:#x}"


@attrs.frozen
class ElfKernel:
    segments: tuple[LoadSegment, ...]  # sorted by physical address
    entry: int  # physical
    pvh_entry: int | None


def parse(data: bytes, mem_limit: int | None = None) -> ElfKernel:
    """The kernel in `data`; raises ElfError naming the first thing wrong. Its segments
    are views of `data`, each file byte in at most one of them, and all of them together
    need at most `mem_limit` bytes of guest memory (when given)."""
    if data[:4] != ELF_MAGIC:
        raise ElfError("not an ELF file: no \\x7fELF magic")
    if len(data) < _EHDR_SIZE:
        raise ElfError(
            f"truncated: the ELF header needs {_EHDR_SIZE} bytes but the file has {len(data)}"
        )
    ei_class, ei_data = data[4], data[5]
    if ei_class == ELFCLASS32:
        raise ElfError("it is a 32-bit ELF (ELFCLASS32): vmrun loads 64-bit x86_64 kernels only")
    if ei_class != ELFCLASS64:
        raise ElfError(f"unknown ELF class {ei_class}")
    if ei_data != ELFDATA2LSB:
        raise ElfError("it is not a little-endian ELF, as an x86_64 kernel is")
    e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum, *_ = _EHDR.unpack_from(
        data, 16
    )
    if e_machine != EM_X86_64:
        machine = _MACHINES.get(e_machine, "another machine")
        raise ElfError(f"it is an ELF for {machine} (e_machine {e_machine}), not x86_64")
    if e_type != ET_EXEC:
        kind = _TYPES.get(e_type, "unknown")
        raise ElfError(f"it is an ELF of type {kind} ({e_type}), not an executable (ET_EXEC)")
    if e_phnum == 0:
        raise ElfError("it has no program headers")
    if e_phnum == PN_XNUM:
        raise ElfError("it has too many program headers (PN_XNUM)")
    if e_phentsize != _PHDR.size:
        raise ElfError(
            f"its program headers are {e_phentsize} bytes each; ELF-64 ones are {_PHDR.size}"
        )
    table_end = e_phoff + e_phnum * e_phentsize
    if table_end > len(data):
        raise ElfError(
            _truncated(
                f"the program header table ({e_phnum} entries at {e_phoff:#x})",
                table_end,
                len(data),
            )
        )

    headers = [_PHDR.unpack_from(data, e_phoff + i * e_phentsize) for i in range(e_phnum)]
    segments = _load_segments(data, headers, mem_limit)
    pvh_entry = None
    for index, (p_type, _, offset, _, _, filesz, _, align) in enumerate(headers):
        if p_type == PT_NOTE and pvh_entry is None:
            end = _file_range(data, f"note segment {index}", offset, filesz)
            pvh_entry = _pvh_entry(data[offset:end], index, 8 if align == 8 else 4)
    if pvh_entry is not None and not _holding(segments, pvh_entry, physical=True):
        raise ElfError(f"the PVH entry {pvh_entry:#x} is not inside any loadable segment")
    return ElfKernel(segments, _physical_entry(segments, e_entry), pvh_entry)


def _load_segments(
    data: bytes, headers: list[tuple[int, ...]], mem_limit: int | None
) -> tuple[LoadSegment, ...]:
    segments = []
    view = memoryview(data)
    for index, (p_type, _, offset, vaddr, paddr, filesz, memsz, _) in enumerate(headers):
        if p_type != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise ElfError(
                f"segment {index}: its file size {filesz:#x} exceeds its memory size {memsz:#x}"
            )
        end = _file_range(data, f"segment {index}", offset, filesz)
        if paddr + memsz > _ADDRESS_LIMIT or vaddr + memsz > _ADDRESS_LIMIT:
            raise ElfError(f"segment {index} runs past the end of the 64-bit address space")
        if paddr < layout.KERNEL_START:
            raise ElfError(
                f"segment {index} at {paddr:#x} lies below 1 MiB, where vmrun puts the zero "
                "page and the real-mode area"
            )
        segments.append(LoadSegment(index, paddr, vaddr, view[offset:end], memsz))
    if not segments:
        raise ElfError("it has no loadable (PT_LOAD) segment")
    _check_file_ranges(segments, headers)
    total = sum(segment.mem_size for segment in segments)
    if mem_limit is not None and total > mem_limit:
        raise ElfError(
            f"its loadable segments need {total} bytes, more than the guest's memory "
            f"({mem_limit >> 20} MiB)"
        )
    segments.sort(key=lambda s: s.paddr)
    for low, high in itertools.pairwise(segments):
        if low.paddr + low.mem_size > high.paddr:
            raise ElfError(
                f"segments {low.index} ({low.span}) and {high.index} ({high.span}) overlap"
            )
    return tuple(segments)


def _check_file_ranges(segments: list[LoadSegment], headers: list[tuple[int, ...]]) -> None:
    """No file byte in two segments: a kernel's segments are disjoint parts of its file, and
    many headers over the same bytes would ask for many times the file's size."""
    starts = {s.index: headers[s.index][2] for s in segments}
    ranges = sorted((starts[s.index], starts[s.index] + len(s.data), s.index) for s in segments)
    ranges = [r for r in ranges if r[1] > r[0]]
    for (_, low_end, low), (high_start, _, high) in itertools.pairwise(ranges):
        if high_start < low_end:
            raise ElfError(f"segments {low} and {high} load the same bytes of the file")


def _file_range(data: bytes, what: str, offset: int, size: int) -> int:
    """The end of bytes offset..offset+size of the file, checked to be in it."""
    end = offset + size
    if end > len(data):
        raise ElfError(_truncated(f"{what} (file bytes {offset:#x}-{end:#x})", end, len(data)))
    return end


def _holding(segments: tuple[LoadSegment, ...], addr: int, physical: bool) -> LoadSegment | None:
    for segment in segments:
        start = segment.paddr if physical else segment.vaddr
        if start <= addr < start + segment.mem_size:
            return segment
    return None


def _physical_entry(segments: tuple[LoadSegment, ...], e_entry: int) -> int:
    """e_entry made physical: virtual addresses first, as the ELF format means them."""
    segment = _holding(segments, e_entry, physical=False)
    if segment is not None:
        return e_entry - segment.vaddr + segment.paddr
    if _holding(segments, e_entry, physical=True) is not None:
        return e_entry
    raise ElfError(f"the entry point {e_entry:#x} is not inside any loadable segment")


def _pvh_entry(notes: bytes, index: int, align: int) -> int | None:
    """The value of the first Xen PHYS32_ENTRY note among `notes`, or None."""
    pos = 0
    while pos < len(notes):
        if pos + _NOTE.size > len(notes):
            raise ElfError(_malformed_note(index, pos))
        namesz, descsz, note_type = _NOTE.unpack_from(notes, pos)
        name_at = pos + _NOTE.size
        desc_at = name_at + _padded(namesz, align)
        if desc_at + descsz > len(notes):
            raise ElfError(_malformed_note(index, pos))
        name = notes[name_at : name_at + namesz].rstrip(b"\0")
        if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
            if descsz not in (4, 8):
                raise ElfError(
                    f"its PVH entry note (Xen, XEN_ELFNOTE_PHYS32_ENTRY) holds {descsz} "
                    "bytes; expected 4 or 8"
                )
            entry = int.from_bytes(notes[desc_at : desc_at + descsz], "little")
            if entry >= 1 << 32:
                raise ElfError(f"its PVH entry {entry:#x} does not fit in 32 bits")
            return entry
        pos = desc_at + _padded(descsz, align)
    return None


def _padded(size: int, align: int) -> int:
    return -(-size // align) * align


def _malformed_note(index: int, pos: int) -> str:
    return f"note segment {index} is malformed: the note at {pos:#x} runs past its end"


def _truncated(what: str, needed: int, size: int) -> str:
    return f"truncated: {what} needs {needed} bytes but the file has {size}"
