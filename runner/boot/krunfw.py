"""libkrunfw kernel bundles: libkrun's guest kernel, carried in a shared library.

Facts this module relies on (libkrunfw's bin2cbundle.py; libkrun's src/libkrun/src/lib.rs,
src/vmm/src/builder.rs and src/arch/src/x86_64/mod.rs):

- The library exports `char *krunfw_get_kernel(size_t *load_addr, size_t *entry_addr,
  size_t *size)` (libkrun declares the first two uint64_t: the same on x86_64) and
  `int krunfw_get_version(void)`, its ABI version, which is also its soname's
  (libkrunfw.so.4, libkrunfw.so.5; current libkrun loads libkrunfw.so.5, the default).
- The bytes are the library's static data, valid while it stays loaded and never freed:
  a vmlinux's PT_LOAD segments laid end to end from load_addr (the first segment's physical
  address), the gaps zero-filled, padded to 64 KiB. A raw image: no setup header, no ELF
  headers, and no .bss (guest RAM starts zeroed, which is all .bss needs).
- libkrun enters it on x86_64 through the 64-bit boot protocol at entry_addr (the vmlinux's
  e_entry, startup_64) with RSI at a zero page whose setup header it makes up (boot flag,
  "HdrS", type_of_loader, a 16 MiB kernel_alignment, command line and initrd pointers):
  what boot_params.zero_page writes for a kernel without a header.
- libkrun maps the library's pages into the guest as a memory slot of their own and puts the
  VM's RAM around them; vmrun copies the image into RAM instead, so it counts against
  mem_size_mib, and the library need not outlive the build.
- The 64-bit entry (startup_64) runs from any 2 MiB-aligned physical address: it computes
  its load offset and fixes up its page tables. A `guest_addr` moves the image and its entry
  together.
"""

from __future__ import annotations

import ctypes

from runner.arch.x86_64 import layout
from runner.boot.loader import ELF_CMDLINE_SIZE, LoadedKernel, Segment
from runner.errors import VmrunError

GET_KERNEL = "krunfw_get_kernel"
GET_VERSION = "krunfw_get_version"
# The entry's page-table fix-up works in 2 MiB pages (startup_64: "Is the address not 2M
# aligned?" halts the CPU).
ENTRY_ALIGNMENT = 2 * layout.MIB
INSTALL_HINT = (
    "install libkrunfw (libkrun's guest kernel: a distribution package or a build from "
    "https://github.com/containers/libkrunfw), give kernel_bundle.library as a path to it, "
    "or boot another kernel with kernel.path instead of [kernel_bundle]"
)


class KrunfwError(VmrunError):
    """A kernel bundle that cannot be loaded; the message names the library and what."""


def open_library(library: str) -> ctypes.CDLL:
    """The library, looked up as dlopen does (a soname) or at its path; with its kernel."""
    try:
        handle = ctypes.CDLL(library)
    except OSError as exc:
        raise KrunfwError(
            f"{library} is not installed on this host ({exc}): {INSTALL_HINT}"
        ) from exc
    if not hasattr(handle, GET_KERNEL):
        raise KrunfwError(
            f"{library} exports no {GET_KERNEL}: it is not a libkrunfw library; {INSTALL_HINT}"
        )
    return handle


def abi_version(handle: ctypes.CDLL) -> int | None:
    """krunfw_get_version(), or None for a library without it."""
    if not hasattr(handle, GET_VERSION):
        return None
    get_version = handle[GET_VERSION]
    get_version.restype, get_version.argtypes = ctypes.c_int, []
    return int(get_version())


def load_bundle(library: str, guest_addr: int | None = None) -> LoadedKernel:
    """The kernel that `library` carries, copied out of it, at `guest_addr` if given (else
    where the bundle says), entered through the 64-bit boot protocol."""
    handle = open_library(library)
    get_kernel = handle[GET_KERNEL]
    # c_void_p, not c_char_p: the image is binary and full of NULs.
    get_kernel.restype = ctypes.c_void_p
    get_kernel.argtypes = [
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    load_addr, entry_addr, size = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_size_t()
    pointer = get_kernel(ctypes.byref(load_addr), ctypes.byref(entry_addr), ctypes.byref(size))
    return bundle_kernel(
        library,
        image=ctypes.string_at(pointer, size.value) if pointer and size.value else b"",
        load_addr=load_addr.value,
        entry_addr=entry_addr.value,
        guest_addr=guest_addr,
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
