"""libkrunfw kernel bundles: libkrun's guest kernel, carried in a shared library, which
vmrun reads as data: the library is never loaded, so nothing in it runs (a VM file that names
a library cannot run code as the user that way, not even one `vmrun run` then refuses).

Facts this module relies on (libkrunfw's bin2cbundle.py and Makefile; libkrun's
src/libkrun/src/lib.rs, src/vmm/src/builder.rs and src/arch/src/x86_64/mod.rs):

- The library exports the data symbol `KERNEL_BUNDLE` (a C string literal: `sizeof` counts
  its NUL) and `char *krunfw_get_kernel(size_t *load_addr, size_t *entry_addr, size_t
  *size)`, which stores three constants and returns `&KERNEL_BUNDLE[0]`. Its soname carries
  its ABI version (libkrunfw.so.4, libkrunfw.so.5; current libkrun loads libkrunfw.so.5).
- libkrunfw builds that function without optimisation, so each constant is one
  `movq $imm32, (%rax)` (48 c7 00 imm32), in the order load_addr, entry_addr, size; an
  optimising compiler stores them through the argument registers instead (48 c7 07/06/02:
  rdi, rsi, rdx). vmrun reads the three constants out of those instructions; a function of
  any other shape is refused.
- The bytes: a vmlinux's PT_LOAD segments laid end to end from load_addr (the first
  segment's physical address), the gaps zero-filled, padded to 64 KiB. A raw image: no setup
  header, no ELF headers, and no .bss (guest RAM starts zeroed, which is all .bss needs).
- libkrun enters it on x86_64 through the 64-bit boot protocol at entry_addr (the vmlinux's
  e_entry) with RSI at a zero page whose setup header it makes up (boot flag, "HdrS",
  type_of_loader, a 16 MiB kernel_alignment, command line and initrd pointers): what
  boot_params.zero_page writes for a kernel without a header.
- libkrun maps the library's pages into the guest as a memory slot of their own and puts the
  VM's RAM around them; vmrun copies the image into RAM instead, so it counts against
  mem_size_mib.
- The 64-bit entry (startup_64) runs from any 2 MiB-aligned physical address: it computes
  its load offset and fixes up its page tables. A `guest_addr` moves the image and its entry
  together.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from runner.arch.x86_64 import layout
from runner.boot import shared_object
from runner.boot.loader import ELF_CMDLINE_SIZE, LoadedKernel, Segment
from runner.errors import VmrunError
from runner.host_files import HostFileError, read_regular

GET_KERNEL = "krunfw_get_kernel"
BUNDLE = "KERNEL_BUNDLE"
# The entry's page-table fix-up works in 2 MiB pages (startup_64: "Is the address not 2M
# aligned?" halts the CPU).
ENTRY_ALIGNMENT = 2 * layout.MIB
MAX_LIBRARY_SIZE = 1 << 30
# movq $imm32, (reg): REX.W, C7 /0, ModRM mod=00 with rax, rdx, rsi or rdi.
_STORE = re.compile(rb"\x48\xc7([\x00\x02\x06\x07])(.{4})", re.DOTALL)
_ARGUMENT_ORDER = {0x07: 0, 0x06: 1, 0x02: 2}  # rdi: load_addr, rsi: entry_addr, rdx: size
# Where the dynamic linker looks for a soname when no ld.so.cache entry names it.
SYSTEM_LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib",
    "/usr/lib", "/usr/local/lib",
)  # fmt: skip
INSTALL_HINT = (
    "install libkrunfw (libkrun's guest kernel: a distribution package or a build from "
    "https://github.com/containers/libkrunfw), give kernel_bundle.library as a path to it, "
    "or boot another kernel with kernel.path instead of [kernel_bundle]"
)


class KrunfwError(VmrunError):
    """A kernel bundle that cannot be loaded; the message names the library and what."""


def find_library(library: str) -> str:
    """The file of `library`: a path (with a `/`) as given; a soname where the dynamic linker
    would find it ($LD_LIBRARY_PATH, ld.so.cache, the system's library directories)."""
    if "/" in library:
        return library
    directories = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for directory in directories:
        if os.path.isfile(os.path.join(directory, library)):
            return os.path.join(directory, library)
    cached = _ld_so_cache().get(library)
    if cached:
        return cached
    for directory in SYSTEM_LIBRARY_DIRS:
        if os.path.isfile(os.path.join(directory, library)):
            return os.path.join(directory, library)
    raise KrunfwError(f"{library} is not installed on this host (no such library): {INSTALL_HINT}")


def _ld_so_cache() -> dict[str, str]:
    """soname -> path for x86_64 libraries, from `ldconfig -p` (the system's own tool)."""
    ldconfig = shutil.which("ldconfig") or shutil.which("ldconfig", path="/sbin:/usr/sbin")
    if ldconfig is None:
        return {}
    try:
        listing = subprocess.run(
            [ldconfig, "-p"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in listing.splitlines():
        name, _, rest = line.strip().partition(" (")
        if "x86-64" in rest and " => " in rest:
            found.setdefault(name, rest.split(" => ", 1)[1])
    return found


def check_library(library: str) -> None:
    """Raise KrunfwError unless `library` is a libkrunfw bundle vmrun can read."""
    read_bundle(library)


def read_bundle(library: str) -> tuple[bytes, int, int]:
    """The kernel image in `library`, its load address and its entry address, read from the
    file: KERNEL_BUNDLE's bytes, and the constants krunfw_get_kernel would return."""
    path = find_library(library)
    try:
        data = read_regular(path, "kernel_bundle.library", MAX_LIBRARY_SIZE)
        library_file = shared_object.parse(data)
    except (HostFileError, shared_object.SharedObjectError) as exc:
        raise KrunfwError(f"{library}: {exc}; {INSTALL_HINT}") from exc
    symbols = library_file.symbols
    if GET_KERNEL not in symbols or BUNDLE not in symbols:
        missing = GET_KERNEL if GET_KERNEL not in symbols else BUNDLE
        raise KrunfwError(
            f"{library} exports no {missing}: it is not a libkrunfw library; {INSTALL_HINT}"
        )
    try:
        code = library_file.bytes_of(symbols[GET_KERNEL])
        load_addr, entry_addr, size = _stored_constants(library, code)
        bundle = symbols[BUNDLE]
        if not 0 < size <= bundle.size:
            raise KrunfwError(
                f"{library}: {GET_KERNEL} returned no kernel"
                if size == 0
                else f"{library}: {GET_KERNEL} gives {size} bytes of a {bundle.size}-byte bundle"
            )
        return library_file.bytes_of(bundle, size), load_addr, entry_addr
    except shared_object.SharedObjectError as exc:
        raise KrunfwError(f"{library}: {exc}") from exc


def _stored_constants(library: str, code: bytes) -> tuple[int, int, int]:
    stores = [
        (m.group(1)[0], int.from_bytes(m.group(2), "little", signed=True))
        for m in _STORE.finditer(code)
    ]
    if len(stores) == 3 and all(reg == 0x00 for reg, _ in stores):
        values = [value for _, value in stores]
    elif len(stores) == 3 and sorted(_ARGUMENT_ORDER.get(reg, -1) for reg, _ in stores) == [
        0,
        1,
        2,
    ]:
        values = [0, 0, 0]
        for reg, value in stores:
            values[_ARGUMENT_ORDER[reg]] = value
    else:
        raise KrunfwError(
            f"{library}: {GET_KERNEL} is not the function libkrunfw generates (three stored "
            "constants: load address, entry address, size); vmrun reads them without running "
            f"it; {INSTALL_HINT}"
        )
    if any(value < 0 for value in values):
        raise KrunfwError(f"{library}: {GET_KERNEL} stores a negative address or size")
    return values[0], values[1], values[2]


def load_bundle(library: str, guest_addr: int | None = None) -> LoadedKernel:
    """The kernel that `library` carries, read out of it, at `guest_addr` if given (else
    where the bundle says), entered through the 64-bit boot protocol."""
    image, load_addr, entry_addr = read_bundle(library)
    return bundle_kernel(
        library, image=image, load_addr=load_addr, entry_addr=entry_addr, guest_addr=guest_addr
    )


def bundle_kernel(
    library: str, *, image: bytes, load_addr: int, entry_addr: int, guest_addr: int | None
) -> LoadedKernel:
    """What krunfw_get_kernel returned, checked, as a kernel to copy and enter."""
    if not image:
        raise KrunfwError(f"{library}: {GET_KERNEL} returned no kernel")
    if not load_addr <= entry_addr < load_addr + len(image):
        raise KrunfwError(
            f"{library}: the kernel's entry {entry_addr:#x} is outside its image "
            f"({load_addr:#x}-{load_addr + len(image):#x})"
        )
    address = load_addr if guest_addr is None else guest_addr
    where = "its load address" if guest_addr is None else "kernel_bundle.guest_addr"
    if address < layout.KERNEL_START:
        raise KrunfwError(
            f"{library}: {where} {address:#x} lies below 1 MiB, where vmrun puts the zero page "
            "and the real-mode area"
        )
    if address % ENTRY_ALIGNMENT:
        raise KrunfwError(
            f"{library}: {where} {address:#x} is not 2 MiB-aligned, which the kernel's 64-bit "
            "entry needs"
        )
    end = address + len(image)
    if end > layout.MMIO_GAP_START:
        raise KrunfwError(
            f"{library}: the kernel ({len(image) // layout.KIB} KiB at {address:#x}) runs into "
            f"the MMIO gap at {layout.MMIO_GAP_START:#x}"
        )
    return LoadedKernel(
        kind="krunfw",
        segments=(Segment(address, image, len(image)),),
        entry=address + (entry_addr - load_addr),
        setup_header=None,
        protocol=None,
        cmdline_size=ELF_CMDLINE_SIZE,
        init_size=len(image),
    )
