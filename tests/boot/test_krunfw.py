"""libkrunfw bundles: a stand-in library compiled here as libkrunfw is built (the real one is
21 MB, for the boot test) is read as data, never loaded; and every refusal says what and why."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runner.arch.x86_64 import layout
from runner.boot import krunfw
from runner.boot.loader import ELF_CMDLINE_SIZE
from runner.config.load import load
from runner.unsupported import unsupported_features

MIB = layout.MIB
# Bytes with NULs early and throughout: a c_char_p result would stop at the first one.
IMAGE = bytes([0x90, 0x00, 0xF4, 0x00]) + bytes(range(256)) * 48

SOURCE = """
#include <stddef.h>
#include <fcntl.h>

/* As bin2cbundle.py writes it: a string literal, whose sizeof counts a NUL. */
char KERNEL_BUNDLE[] = {%(bytes)s, 0};

char *krunfw_get_kernel(size_t *load_addr, size_t *entry_addr, size_t *size)
{
    *load_addr = %(load)#x;
    *entry_addr = %(entry)#x;
    *size = %(size)d;
    return &KERNEL_BUNDLE[0];
}

int krunfw_get_version(void)
{
    return 5;
}

/* Would run as the user if vmrun ever loaded the library. */
__attribute__((constructor)) static void planted(void)
{
    creat("%(marker)s", 0644);
}
"""


def compile_library(
    tmp_path: Path,
    *,
    load: int = 16 * MIB,
    entry: int = 16 * MIB + 2,
    size: int = len(IMAGE),
    name: str = "libkrunfw-test.so",
    source: str = SOURCE,
    optimise: bool = False,
) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in libkrunfw")
    c_file = tmp_path / f"{name}.c"
    c_file.write_text(
        source
        % {
            "bytes": ",".join(str(b) for b in IMAGE),
            "load": load,
            "entry": entry,
            "size": size,
            "marker": tmp_path / "constructor-ran",
        }
    )
    library = tmp_path / name
    flags = ["-O2"] if optimise else []  # libkrunfw's Makefile gives none
    subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", library, c_file], check=True)
    return library


@pytest.fixture(autouse=True)
def nothing_in_the_library_ever_runs(tmp_path: Path):
    yield
    assert not (tmp_path / "constructor-ran").exists(), "vmrun loaded the library"


def test_the_kernel_is_copied_out_whole_and_entered_where_the_bundle_says(tmp_path: Path) -> None:
    library = compile_library(tmp_path)
    kernel = krunfw.load_bundle(str(library))
    assert kernel.kind == "krunfw"
    (segment,) = kernel.segments
    assert (segment.guest_addr, segment.data, segment.mem_size) == (16 * MIB, IMAGE, len(IMAGE))
    assert kernel.entry == 16 * MIB + 2
    assert (kernel.setup_header, kernel.protocol) == (None, None)
    assert (kernel.cmdline_size, kernel.init_size) == (ELF_CMDLINE_SIZE, len(IMAGE))


def test_an_optimised_build_is_read_too(tmp_path: Path) -> None:
    # The constants are stored through the argument registers instead of %rax.
    kernel = krunfw.load_bundle(str(compile_library(tmp_path, optimise=True)))
    assert (kernel.segments[0].guest_addr, kernel.entry) == (16 * MIB, 16 * MIB + 2)
    assert kernel.segments[0].data == IMAGE


def test_a_get_kernel_of_another_shape_is_refused(tmp_path: Path) -> None:
    source = SOURCE.replace("*size = %(size)d;", "*size = (size_t)KERNEL_BUNDLE[1] + %(size)d;")
    library = compile_library(tmp_path, source=source)
    with pytest.raises(krunfw.KrunfwError, match="is not the function libkrunfw generates"):
        krunfw.load_bundle(str(library))


def test_guest_addr_moves_the_image_and_its_entry(tmp_path: Path) -> None:
    library = compile_library(tmp_path)
    kernel = krunfw.load_bundle(str(library), guest_addr=32 * MIB)
    assert kernel.segments[0].guest_addr == 32 * MIB
    assert kernel.entry == 32 * MIB + 2


@pytest.mark.parametrize(
    ("guest_addr", "message"),
    [
        (0x8_0000, "kernel_bundle.guest_addr 0x80000 lies below 1 MiB"),
        (16 * MIB + 0x1000, "kernel_bundle.guest_addr 0x1001000 is not 2 MiB-aligned"),
        (layout.MMIO_GAP_START - 2 * MIB, "runs into the MMIO gap at 0xd0000000"),
    ],
)
def test_guest_addrs_the_kernel_cannot_run_at(guest_addr: int, message: str) -> None:
    with pytest.raises(krunfw.KrunfwError, match=message):
        krunfw.bundle_kernel(
            "libkrunfw.so.5",
            image=bytes(4 * MIB),
            load_addr=16 * MIB,
            entry_addr=16 * MIB,
            guest_addr=guest_addr,
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"size": 0}, "krunfw_get_kernel returned no kernel"),
        ({"size": len(IMAGE) + 2}, f"krunfw_get_kernel gives {len(IMAGE) + 2} bytes of a "),
        (
            {"entry": 16 * MIB + len(IMAGE)},
            f"the kernel's entry {16 * MIB + len(IMAGE):#x} is outside its image "
            f"\\(0x1000000-{16 * MIB + len(IMAGE):#x}\\)",
        ),
        ({"load": 0x1000, "entry": 0x1000}, "its load address 0x1000 lies below 1 MiB"),
    ],
)
def test_what_a_bundle_may_not_return(
    tmp_path: Path, settings: dict[str, int | str], message: str
) -> None:
    library = compile_library(tmp_path, **settings)
    with pytest.raises(krunfw.KrunfwError, match=f"^{library}: {message}"):
        krunfw.load_bundle(str(library))


def test_a_missing_library_says_what_to_install_and_the_alternative() -> None:
    with pytest.raises(krunfw.KrunfwError) as caught:
        krunfw.load_bundle("libkrunfw-absent.so.5")
    said = str(caught.value)
    assert said.startswith("libkrunfw-absent.so.5 is not installed on this host (")
    assert "install libkrunfw" in said
    assert "kernel.path instead of [kernel_bundle]" in said


def test_a_library_that_is_not_libkrunfw(tmp_path: Path) -> None:
    library = compile_library(tmp_path, source="int krunfw_unrelated(void) { return 0; }\n")
    with pytest.raises(krunfw.KrunfwError, match="exports no krunfw_get_kernel: it is not a"):
        krunfw.load_bundle(str(library))


def test_run_refuses_a_bundle_it_cannot_load_before_booting(write_vm, tmp_path: Path) -> None:
    library = compile_library(tmp_path, source="int krunfw_unrelated(void) { return 0; }\n")
    vm = load(write_vm(f'[kernel_bundle]\nlibrary = "{library}"\n'))
    (problem,) = unsupported_features(vm.resources)
    assert problem.path == ("kernel_bundle", "library")
    assert "exports no krunfw_get_kernel" in problem.message
    working = compile_library(tmp_path, name="libkrunfw-good.so")
    assert (
        unsupported_features(load(write_vm(f'[kernel_bundle]\nlibrary = "{working}"\n')).resources)
        == []
    )
