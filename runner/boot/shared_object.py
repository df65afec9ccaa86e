"""The dynamic symbols of an ELF64 shared object, read as data: nothing in it is loaded or run.

What a symbol's bytes are: the section headers name the dynamic symbol table (SHT_DYNSYM)
and its string table (its sh_link); a symbol's st_value is a virtual address, found in the
file through the PT_LOAD program header that maps it (p_offset + st_value - p_vaddr, within
p_filesz). Every offset and size comes from the file and is checked against it before use.
"""

from __future__ import annotations

import struct

import attrs

from runner.errors import VmrunError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB, ET_DYN, EM_X86_64 = 2, 1, 3, 62
PT_LOAD, SHT_DYNSYM = 1, 11
_EHDR = struct.Struct("<HHIQQQIHHHHHH")  # e_type .. e_shstrndx, after e_ident
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
MAX_SYMBOLS = 1 << 20


class SharedObjectError(VmrunError):
    """A file that is not the x86_64 shared object it should be; the message says why."""


@attrs.frozen
class Symbol:
    name: str
    value: int  # its virtual address
    size: int


@attrs.frozen
class SharedObject:
    data: bytes | memoryview
    loads: tuple[tuple[int, int, int], ...]  # (p_vaddr, p_offset, p_filesz) of each PT_LOAD
    symbols: dict[str, Symbol]

    def bytes_of(self, symbol: Symbol, size: int | None = None) -> bytes:
        """The first `size` (else st_size) bytes at the symbol's address, from the file."""
        length = symbol.size if size is None else size
        for vaddr, offset, filesz in self.loads:
            if vaddr <= symbol.value and symbol.value + length <= vaddr + filesz:
                start = offset + symbol.value - vaddr
                return bytes(self.data[start : start + length])
        raise SharedObjectError(
            f"{symbol.name} ({length} bytes at {symbol.value:#x}) is not in the file's "
            "loaded contents"
        )


def parse(data: bytes | memoryview) -> SharedObject:
    view = memoryview(data)
    if bytes(view[:4]) != ELF_MAGIC or len(view) < 64:
        raise SharedObjectError("not an ELF file")
    if (view[4], view[5]) != (ELFCLASS64, ELFDATA2LSB):
        raise SharedObjectError("not a 64-bit little-endian ELF")
    (
        e_type,
        e_machine,
        _,
        _,
        e_phoff,
        e_shoff,
        _,
        _,
        e_phentsize,
        e_phnum,
        e_shentsize,
        e_shnum,
        _,
    ) = _EHDR.unpack_from(view, 16)
    if (e_type, e_machine) != (ET_DYN, EM_X86_64):
        raise SharedObjectError("not an x86_64 shared object")
    if e_phentsize != _PHDR.size or e_shentsize != _SHDR.size:
        raise SharedObjectError("its program or section headers are not ELF64's size")
    phdrs = [_PHDR.unpack_from(view, at) for at in _table(view, e_phoff, e_phnum, _PHDR.size)]
    loads = tuple((p[3], p[2], p[5]) for p in phdrs if p[0] == PT_LOAD)
    for _, offset, filesz in loads:
        _range(view, offset, filesz, "a PT_LOAD segment")
    shdrs = [_SHDR.unpack_from(view, at) for at in _table(view, e_shoff, e_shnum, _SHDR.size)]
    dynsym = next((s for s in shdrs if s[1] == SHT_DYNSYM), None)
    if dynsym is None:
        raise SharedObjectError("it has no dynamic symbol table")
    if dynsym[6] >= len(shdrs):
        raise SharedObjectError("its dynamic symbol table names no string table")
    strtab = shdrs[dynsym[6]]
    strings = bytes(_range(view, strtab[4], strtab[5], "the dynamic string table"))
    table = _range(view, dynsym[4], dynsym[5], "the dynamic symbol table")
    count = min(len(table) // _SYM.size, MAX_SYMBOLS)
    symbols = {}
    for index in range(count):
        st_name, _, _, st_shndx, st_value, st_size = _SYM.unpack_from(table, index * _SYM.size)
        if st_shndx == 0 or st_name >= len(strings):  # undefined: from another library
            continue
        name = strings[st_name : strings.find(b"\0", st_name)].decode("ascii", "replace")
        symbols[name] = Symbol(name, st_value, st_size)
    return SharedObject(view, loads, symbols)


def _table(view: memoryview, offset: int, count: int, size: int) -> range:
    _range(view, offset, count * size, "a header table")
    return range(offset, offset + count * size, size)


def _range(view: memoryview, offset: int, size: int, what: str) -> memoryview:
    if offset + size > len(view):
        raise SharedObjectError(
            f"{what} (bytes {offset:#x}-{offset + size:#x}) runs past the end of the file"
        )
    return view[offset : offset + size]
