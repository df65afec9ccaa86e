"""The semantic rules (runner.config.checks) and the path checks, through `load`.

Every rule has a failing VM file, asserted by its exact message and key path, and a passing
neighbour at the boundary the rule allows.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest
from expect import lines, passes, problems

from runner.arch.x86_64 import layout
from runner.boot import cmdline
from runner.config import checks
from runner.config.load import load
from runner.config.problems import format_key_path

MIB = layout.MIB


# --- image files the memory rule reads -------------------------------------------------------


def bzimage(path: Path, init_size: int, *, version: int = 0x020F, size: int = 0x400) -> Path:
    """A file with a Linux boot protocol setup header: "HdrS", version, init_size."""
    data = bytearray(size)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, version)
    struct.pack_into("<I", data, 0x260, init_size)
    path.write_bytes(bytes(data))
    return path


PT_LOAD = 1
PT_NOTE = 4


def elf64(path: Path, segments: list[tuple[int, int, int]]) -> Path:
    """A 64-bit little-endian ELF with program headers (p_type, p_paddr, p_memsz)."""
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"  # ELFCLASS64, little-endian, version 1
    struct.pack_into("<HHI", header, 0x10, 2, 62, 1)  # ET_EXEC, EM_X86_64, EV_CURRENT
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HHH", header, 0x34, 64, phentsize, len(segments))
    table = b"".join(
        struct.pack("<IIQQQQQQ", p_type, 5, 0x1000, paddr, paddr, memsz, memsz, 0x1000)
        for p_type, paddr, memsz in segments
    )
    path.write_bytes(bytes(header) + table)
    return path


def sized(path: Path, size: int) -> Path:
    """A sparse file of `size` bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# --- hyperthreading --------------------------------------------------------------------------


def test_hyperthreading_odd_vcpus(write_vm) -> None:
    path = write_vm("""\
        [machine]
        vcpu_count = 3
        ht_enabled = true
        """)
    assert problems(path) == [
        (
            "machine.vcpu_count",
            "3 vCPUs cannot be hyperthread pairs; with ht_enabled use 1 or an even number",
        )
    ]
    assert lines(path) == [
        f"{path}:2:1: machine.vcpu_count: 3 vCPUs cannot be hyperthread pairs; "
        "with ht_enabled use 1 or an even number"
    ]


@pytest.mark.parametrize(("vcpus", "ht"), [(1, True), (2, True), (32, True), (3, False)])
def test_hyperthreading_allowed(write_vm, vcpus: int, ht: bool) -> None:
    vm = passes(write_vm(f"[machine]\nvcpu_count = {vcpus}\nht_enabled = {str(ht).lower()}\n"))
    assert vm.resources.machine.vcpu_count == vcpus


# --- memory_fits_images ----------------------------------------------------------------------
# Validation compares the images' file sizes (stat) with the guest's memory; what a kernel's
# header says it needs is read only by `vmrun run` (memory_fits_kernel_image, a refusal):
# validation opens no file that the VM file names.


def run_problems(path: str) -> list[tuple[str, str]]:
    """What `vmrun run` refuses for memory, after validation passed."""
    resources = load(path).resources
    return [
        (format_key_path(p.path), p.message) for p in checks.memory_fits_kernel_image(resources)
    ]


def run_lines(path: str) -> list[str]:
    vm = load(path)
    return vm.error(list(checks.memory_fits_kernel_image(vm.resources))).lines()


def test_memory_too_small_for_bzimage(write_vm, tmp_path: Path) -> None:
    bzimage(tmp_path / "bzImage", 100 * MIB)
    path = write_vm("""\
        [machine]
        mem_size_mib = 148

        [kernel]
        path = "bzImage"
        """)
    assert run_problems(path) == [
        (
            "machine.mem_size_mib",
            "148 MiB is too small: the kernel 100 MiB, plus 49 MiB for the kernel to run, "
            "need at least 149 MiB",
        )
    ]
    assert run_lines(path)[0].startswith(f"{path}:2:1: machine.mem_size_mib: ")


def test_memory_exactly_enough_for_bzimage(write_vm, tmp_path: Path) -> None:
    bzimage(tmp_path / "bzImage", 100 * MIB)
    assert (
        run_problems(write_vm('[machine]\nmem_size_mib = 149\n[kernel]\npath = "bzImage"\n')) == []
    )


def test_memory_rounds_the_need_up(write_vm, tmp_path: Path) -> None:
    bzimage(tmp_path / "bzImage", 100 * MIB + MIB // 2)
    path = write_vm('[machine]\nmem_size_mib = 149\n[kernel]\npath = "bzImage"\n')
    assert run_problems(path) == [
        (
            "machine.mem_size_mib",
            "149 MiB is too small: the kernel 100.5 MiB, plus 49 MiB for the kernel to run, "
            "need at least 150 MiB",
        )
    ]
    assert (
        run_problems(write_vm('[machine]\nmem_size_mib = 150\n[kernel]\npath = "bzImage"\n')) == []
    )


def test_memory_old_bzimage_protocol_counts_the_file_size(write_vm, tmp_path: Path) -> None:
    # Before boot protocol 2.10 there is no init_size: the huge value there is not read.
    bzimage(tmp_path / "bzImage", 0xFFFF_FFFF, version=0x0209)
    assert (
        run_problems(write_vm('[machine]\nmem_size_mib = 50\n[kernel]\npath = "bzImage"\n')) == []
    )


def test_memory_elf_span_of_load_segments(write_vm, tmp_path: Path) -> None:
    # PT_LOAD from 16 MiB to 64 MiB: 48 MiB; the PT_NOTE's size is not loaded.
    elf64(
        tmp_path / "vmlinux",
        [
            (PT_LOAD, 0x100_0000, 0x200_0000),
            (PT_NOTE, 0, 0x4000_0000),
            (PT_LOAD, 0x300_0000, 0x100_0000),
        ],
    )
    path = write_vm('[machine]\nmem_size_mib = 96\n[kernel]\npath = "vmlinux"\n')
    assert run_problems(path) == [
        (
            "machine.mem_size_mib",
            "96 MiB is too small: the kernel 48 MiB, plus 49 MiB for the kernel to run, "
            "need at least 97 MiB",
        )
    ]
    assert (
        run_problems(write_vm('[machine]\nmem_size_mib = 97\n[kernel]\npath = "vmlinux"\n')) == []
    )


def test_memory_gzip_kernel_and_initramfs(write_vm, tmp_path: Path) -> None:
    # A gzip image counts as its uncompressed size (the trailer's ISIZE).
    (tmp_path / "Image.gz").write_bytes(gzip.compress(bytes(60 * MIB), mtime=0))
    sized(tmp_path / "initrd.img", 3 * MIB + MIB // 2)
    text = """\
        [machine]
        mem_size_mib = {mem}

        [kernel]
        path = "Image.gz"
        format = "image_gz"
        initramfs = "initrd.img"
        """
    path = write_vm(text.format(mem=112))
    assert run_problems(path) == [
        (
            "machine.mem_size_mib",
            "112 MiB is too small: the kernel 60 MiB, the initramfs 3.5 MiB, plus 49 MiB for the "
            "kernel to run, need at least 113 MiB",
        )
    ]
    assert run_problems(write_vm(text.format(mem=113))) == []


def test_memory_initramfs_with_the_default_kernel(write_vm, tmp_path: Path) -> None:
    # The default kernel counts with what it is known to need; the initramfs by its size.
    sized(tmp_path / "initrd.img", 80 * MIB)
    path = write_vm('[machine]\nmem_size_mib = 128\n[kernel]\ninitramfs = "initrd.img"\n')
    assert problems(path) == [
        (
            "machine.mem_size_mib",
            "128 MiB is too small: the default kernel 52 MiB, the initramfs 80 MiB, plus 49 MiB "
            "for the kernel to run, need at least 181 MiB",
        )
    ]


def test_memory_for_the_default_kernel_alone(write_vm) -> None:
    # A small guest is refused at validation, not only once `vmrun run` has the kernel.
    assert problems(write_vm("[machine]\nmem_size_mib = 64\n")) == [
        (
            "machine.mem_size_mib",
            "64 MiB is too small: the default kernel 52 MiB, plus 49 MiB for the kernel to run, "
            "need at least 101 MiB",
        )
    ]
    passes(write_vm("[machine]\nmem_size_mib = 101\n"))


def test_memory_with_tee_is_the_tee_ram(write_vm, tmp_path: Path) -> None:
    bzimage(tmp_path / "bzImage", 100 * MIB)
    text = """\
        [machine]
        mem_size_mib = 4096

        [kernel]
        path = "bzImage"

        [tee_config]
        workload_id = "w"
        cpus = 1
        ram_mib = {ram}
        """
    path = write_vm(text.format(ram=148))
    assert run_problems(path) == [
        (
            "tee_config.ram_mib",
            "148 MiB is too small: the kernel 100 MiB, plus 49 MiB for the kernel to run, "
            "need at least 149 MiB",
        )
    ]
    assert run_lines(path)[0].startswith(f"{path}:10:1: tee_config.ram_mib: ")
    assert run_problems(write_vm(text.format(ram=149))) == []


def test_memory_missing_kernel_is_a_path_problem_only(write_vm) -> None:
    path = write_vm('[kernel]\npath = "nope"\n')
    assert [where for where, _ in problems(path)] == ["kernel.path"]


# --- unique names ----------------------------------------------------------------------------


def test_duplicate_fs_tags(write_vm) -> None:
    path = write_vm("""\
        [[fs]]
        tag = "data"
        shared_dir = "."

        [[fs]]
        tag = "other"
        shared_dir = "."

        [[fs]]
        tag = "data"
        shared_dir = "."
        """)
    assert problems(path) == [("fs[2]", "tag 'data' is already used by fs[0]")]
    assert lines(path) == [f"{path}:9:1: fs[2]: tag 'data' is already used by fs[0]"]


def test_duplicate_block_ids(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    path = write_vm("""\
        block = [
          { id = "root", path = "disk.img", read_only = true },
          { id = "root", path = "disk.img", read_only = true },
        ]
        """)
    assert problems(path) == [("block[1]", "id 'root' is already used by block[0]")]
    assert lines(path) == [f"{path}:3:3: block[1]: id 'root' is already used by block[0]"]


def test_disk_ids_alike_in_their_first_20_bytes(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    path = write_vm("""\
        block = [
          { id = "build-cache-volume-1", path = "disk.img", read_only = true },
          { id = "build-cache-volume-10", path = "disk.img", read_only = true },
          { id = "build-cache-volume-2", path = "disk.img", read_only = true },
        ]
        """)
    assert problems(path) == [
        (
            "block[1].id",
            "the guest knows a disk by its id's first 20 bytes (its serial), which are those "
            "of block[0]'s id 'build-cache-volume-1'",
        )
    ]


def test_duplicate_net_ids_and_macs(write_vm) -> None:
    # MACs compare without regard to case.
    path = write_vm("""\
        [[net]]
        id = "eth0"
        mac = "52:54:00:ab:cd:ef"
        backend = { type = "tap", tap_name = "tap0" }

        [[net]]
        id = "eth0"
        mac = "52:54:00:AB:CD:EF"
        backend = { type = "tap", tap_name = "tap1" }
        """)
    assert problems(path) == [
        ("net[1]", "id 'eth0' is already used by net[0]"),
        ("net[1]", "MAC '52:54:00:ab:cd:ef' is already used by net[0]"),
    ]


def test_duplicate_vsock_ports_and_tcp_host_ports(write_vm) -> None:
    path = write_vm("""\
        [vsock]
        tsi = ["hijack_inet"]
        ports = [
          { port = 1024, socket_path = "a.sock" },
          { port = 1025, socket_path = "b.sock" },
          { port = 1024, socket_path = "c.sock" },
        ]
        tcp_ports = [
          { host_port = 8080, guest_port = 80 },
          { host_port = 8080, guest_port = 81 },
        ]
        """)
    assert problems(path) == [
        ("vsock.ports[2]", "port 1024 is already used by vsock.ports[0]"),
        ("vsock.tcp_ports[1]", "host port 8080 is already used by vsock.tcp_ports[0]"),
    ]


def test_distinct_names_pass(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    vm = passes(
        write_vm("""\
        fs = [{ tag = "a", shared_dir = "." }, { tag = "A", shared_dir = "." }]
        block = [
          { id = "a", path = "disk.img", read_only = true },
          { id = "b", path = "disk.img", read_only = true },
        ]

        [[net]]
        id = "eth0"
        mac = "52:54:00:00:00:01"
        backend = { type = "tap", tap_name = "tap0" }

        [[net]]
        id = "eth1"
        backend = { type = "tap", tap_name = "tap1" }

        [[net]]
        id = "eth2"
        backend = { type = "tap", tap_name = "tap2" }

        [vsock]
        tsi = ["hijack_inet"]
        ports = [{ port = 1024, socket_path = "a.sock" }, { port = 1025, socket_path = "a.sock" }]
        tcp_ports = [
          { host_port = 8080, guest_port = 80 },
          { host_port = 8081, guest_port = 80 },
        ]
        """)
    )
    # Two interfaces without a MAC are not duplicates of each other.
    assert [nic.mac for nic in vm.resources.net] == ["52:54:00:00:00:01", None, None]


# --- unicast MACs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mac", "message"),
    [
        (
            "01:00:5e:00:00:01",
            "01:00:5e:00:00:01 is a multicast address; use a unicast one (even first octet)",
        ),
        (
            "ff:ff:ff:ff:ff:ff",
            "ff:ff:ff:ff:ff:ff is a multicast address; use a unicast one (even first octet)",
        ),
        ("00:00:00:00:00:00", "00:00:00:00:00:00 is not a usable address"),
    ],
)
def test_mac_must_be_unicast(write_vm, mac: str, message: str) -> None:
    path = write_vm(f"""\
        [[net]]
        id = "eth0"
        mac = "{mac}"
        backend = {{ type = "tap", tap_name = "tap0" }}
        """)
    assert problems(path) == [("net[0].mac", message)]
    assert lines(path) == [f"{path}:3:1: net[0].mac: {message}"]


@pytest.mark.parametrize("mac", ["02:00:00:00:00:00", "00:00:00:00:00:01", "FE:FF:FF:FF:FF:FF"])
def test_unicast_mac_passes(write_vm, mac: str) -> None:
    passes(
        write_vm(
            f'[[net]]\nid = "e"\nmac = "{mac}"\nbackend = {{ type = "tap", tap_name = "t" }}\n'
        )
    )


# --- fs tag bytes ----------------------------------------------------------------------------


def test_fs_tag_counts_utf8_bytes(write_vm) -> None:
    tag = "é" * 36  # 36 characters: the schema's maxLength allows it; 72 bytes do not fit
    path = write_vm(f'[[fs]]\ntag = "{tag}"\nshared_dir = "."\n')
    assert problems(path) == [("fs[0].tag", "is 72 bytes in UTF-8; a tag holds at most 36")]
    assert lines(path) == [f"{path}:2:1: fs[0].tag: is 72 bytes in UTF-8; a tag holds at most 36"]


def test_fs_tag_mixed_width(write_vm) -> None:
    tag = "a" * 34 + "€"  # 35 characters, 37 bytes
    path = write_vm(f'[[fs]]\ntag = "{tag}"\nshared_dir = "."\n')
    assert problems(path) == [("fs[0].tag", "is 37 bytes in UTF-8; a tag holds at most 36")]


@pytest.mark.parametrize("tag", ["é" * 18, "a" * 36, "a" * 33 + "€"])
def test_fs_tag_of_36_bytes_passes(write_vm, tag: str) -> None:
    assert len(tag.encode()) == 36
    passes(write_vm(f'[[fs]]\ntag = "{tag}"\nshared_dir = "."\n'))


# --- kernel_sources --------------------------------------------------------------------------


def test_kernel_path_and_bundle(write_vm, tmp_path: Path) -> None:
    bzimage(tmp_path / "bzImage", 8 * MIB)
    path = write_vm("""\
        [kernel]
        path = "bzImage"

        [kernel_bundle]
        library = "libkrunfw.so.4"
        """)
    assert problems(path) == [
        ("kernel_bundle", "give either kernel.path or kernel_bundle, not both")
    ]
    assert lines(path) == [
        f"{path}:4:2: kernel_bundle: give either kernel.path or kernel_bundle, not both"
    ]


def test_kernel_bundle_alone_passes(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "initrd.img", 4096)
    vm = passes(write_vm('[kernel]\ninitramfs = "initrd.img"\n[kernel_bundle]\n'))
    assert vm.resources.kernel_bundle is not None
    assert vm.resources.kernel_bundle.library == "libkrunfw.so.5"


@pytest.mark.parametrize(
    ("addr", "message"),
    [
        (0x1001, "0x1001 is not page-aligned (a multiple of 0x1000)"),
        (0x100_0800, "0x1000800 is not page-aligned (a multiple of 0x1000)"),
        (1, "0x1 is not page-aligned (a multiple of 0x1000)"),
    ],
)
def test_bundle_guest_addr_unaligned(write_vm, addr: int, message: str) -> None:
    path = write_vm(f"[kernel_bundle]\nguest_addr = {addr}\n")
    assert problems(path) == [("kernel_bundle.guest_addr", message)]


@pytest.mark.parametrize("addr", [0, 0x1000, 0x100_0000])
def test_bundle_guest_addr_aligned(write_vm, addr: int) -> None:
    passes(write_vm(f"[kernel_bundle]\nguest_addr = {addr}\n"))


@pytest.mark.parametrize("size", [65535, 65537, 0])
def test_qboot_not_64k(write_vm, tmp_path: Path, size: int) -> None:
    sized(tmp_path / "qboot.rom", size)
    path = write_vm('[kernel_bundle]\nqboot = "qboot.rom"\n')
    assert problems(path) == [
        ("kernel_bundle.qboot", f"is {size} bytes; a qboot image is exactly 65536 (64 KiB)")
    ]
    assert lines(path)[0].startswith(f"{path}:2:1: kernel_bundle.qboot: ")


def test_qboot_of_64k_passes(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "qboot.rom", checks.QBOOT_SIZE)
    passes(write_vm('[kernel_bundle]\nqboot = "qboot.rom"\n'))


# --- tee_rules and the TEE override ----------------------------------------------------------

TEE = """\
[tee_config]
workload_id = "w"
cpus = 2
ram_mib = 256
"""


def test_fs_shares_in_a_tee(write_vm) -> None:
    path = write_vm(
        'fs = [{ tag = "a", shared_dir = "." }, { tag = "b", shared_dir = "." }]\n' + TEE
    )
    assert problems(path) == [
        ("fs[0]", "virtio-fs shares are not available in a TEE (tee_config)"),
        ("fs[1]", "virtio-fs shares are not available in a TEE (tee_config)"),
    ]


def test_tee_without_fs_passes(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    passes(write_vm('block = [{ id = "root", path = "disk.img" }]\n' + TEE))


def test_tee_replaces_machine(write_vm) -> None:
    # cpus and ram_mib replace the machine's values and hyperthreading is off, so the
    # odd vCPU count with ht_enabled is no problem.
    path = write_vm("""\
        [machine]
        vcpu_count = 4
        mem_size_mib = 8192
        ht_enabled = true
        nested = true

        [tee_config]
        workload_id = "w"
        cpus = 3
        ram_mib = 1024
        """)
    machine = passes(path).resources.machine
    assert (machine.vcpu_count, machine.mem_size_mib, machine.ht_enabled) == (3, 1024, False)
    assert machine.nested is True


def test_no_tee_keeps_machine(write_vm) -> None:
    machine = passes(
        write_vm("[machine]\nvcpu_count = 2\nmem_size_mib = 300\nht_enabled = true\n")
    ).resources.machine
    assert (machine.vcpu_count, machine.mem_size_mib, machine.ht_enabled) == (2, 300, True)


# --- root_references -------------------------------------------------------------------------


def test_root_fs_tag_unknown(write_vm) -> None:
    path = write_vm("""\
        root = { type = "fs", tag = "rootfs" }
        fs = [{ tag = "data", shared_dir = "." }]
        """)
    assert problems(path) == [("root.tag", "no share in `fs` has the tag 'rootfs'")]
    assert lines(path) == [f"{path}:1:23: root.tag: no share in `fs` has the tag 'rootfs'"]


def test_root_block_id_unknown(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    path = write_vm("""\
        block = [{ id = "data", path = "disk.img" }]

        [root]
        type = "block"
        id = "vda"
        """)
    assert problems(path) == [("root.id", "no disk in `block` has the id 'vda'")]
    assert lines(path) == [f"{path}:5:1: root.id: no disk in `block` has the id 'vda'"]


def test_root_references_resolve(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    passes(write_vm('root = { type = "fs", tag = "r" }\nfs = [{ tag = "r", shared_dir = "." }]\n'))
    passes(
        write_vm('root = { type = "block", id = "r" }\nblock = [{ id = "r", path = "disk.img" }]\n')
    )
    passes(write_vm('root = { type = "initramfs" }\n'))


# --- interrupt_budget ------------------------------------------------------------------------


def _disks(count: int) -> str:
    # Read-only: one image may back several devices only so.
    return "".join(
        f'[[block]]\nid = "d{i}"\npath = "disk.img"\nread_only = true\n' for i in range(count)
    )


def test_twenty_block_devices_are_too_many(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    path = write_vm(_disks(20))
    message = (
        "23 virtio devices (1 console, 1 rng, 1 balloon, 20 block) but only 18 interrupt "
        "lines (IRQ 5-23 but the RTC's 8)"
    )
    assert problems(path) == [("(document)", message)]
    assert lines(path) == [f"{path}:1:1: (document): {message}"]


def test_interrupt_budget_lists_every_kind(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    path = write_vm("snd_device = true\n" + _disks(18) + "[vsock]\n")
    assert problems(path) == [
        (
            "(document)",
            "23 virtio devices (1 console, 1 rng, 1 balloon, 18 block, 1 vsock, 1 snd) but "
            "only 18 interrupt lines (IRQ 5-23 but the RTC's 8)",
        )
    ]


def test_eighteen_virtio_devices_fit(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "disk.img", 4096)
    passes(write_vm(_disks(15)))  # with the implicit console, rng and balloon: 18
    assert problems(write_vm(_disks(16)))
    passes(write_vm("disable_implicit_console = true\n" + _disks(16)))
    assert problems(write_vm("disable_implicit_console = true\n" + _disks(17)))


# --- command_line ----------------------------------------------------------------------------


# No console, only the implicit rng and balloon: the command line is the prolog and their
# entries.
RNG_ENTRY = " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"


def _bare_cmdline(prolog: str) -> str:
    return f'disable_implicit_console = true\n[kernel_cmdline]\nprolog = "{prolog}"\n'


def test_command_line_too_long(write_vm) -> None:
    path = write_vm(_bare_cmdline("x" * (2048 - len(RNG_ENTRY))))
    message = (
        "the composed kernel command line is 2048 bytes; at most 2047 fit "
        "(the kernel's 2048 with the terminating NUL)"
    )
    assert problems(path) == [("kernel_cmdline", message)]
    assert lines(path) == [f"{path}:2:2: kernel_cmdline: {message}"]


def test_command_line_counts_bytes(write_vm) -> None:
    # Characters of two bytes each: 2048 bytes in all, fewer characters.
    room = 2048 - len(RNG_ENTRY)
    path = write_vm(_bare_cmdline("é" * (room // 2) + "x" * (room % 2)))
    assert problems(path)[0][1].startswith("the composed kernel command line is 2048 bytes;")


def test_command_line_of_2047_bytes_fits(write_vm) -> None:
    vm = passes(write_vm(_bare_cmdline("x" * (2047 - len(RNG_ENTRY)))))
    assert len(cmdline.compose(vm.resources).encode()) == 2047


def test_command_line_counts_the_default_parts(write_vm) -> None:
    # The default prolog, the device entry and console=hvc0, then the epilog after a space:
    # an epilog that brings the whole to 2047 bytes fits, one byte more does not.
    base = len(cmdline.compose(passes(write_vm("")).resources))
    text = '[kernel_cmdline]\nepilog = "{}"\n'
    room = 2047 - base - 1
    vm = passes(write_vm(text.format("y" * room)))
    assert len(cmdline.compose(vm.resources)) == 2047
    assert problems(write_vm(text.format("y" * (room + 1))))[0][1].startswith(
        "the composed kernel command line is 2048 bytes;"
    )


def test_command_line_env_value_with_quote(write_vm) -> None:
    path = write_vm("""\
        [kernel_cmdline.env]
        GREETING = 'say "hi"'
        """)
    message = 'a value on the kernel command line cannot hold `"` or line breaks'
    assert problems(path) == [("kernel_cmdline.env.GREETING", message)]
    assert lines(path) == [f"{path}:2:1: kernel_cmdline.env.GREETING: {message}"]


def test_command_line_env_value_with_line_break(write_vm) -> None:
    path = write_vm('[kernel_cmdline.env]\nA = "1\\n2"\n')
    message = 'a value on the kernel command line cannot hold `"` or line breaks'
    assert problems(path) == [("kernel_cmdline.env.A", message)]


def test_command_line_epilog_with_line_break(write_vm) -> None:
    path = write_vm('[kernel_cmdline]\nepilog = "a\\nb"\n')
    assert problems(path) == [
        ("kernel_cmdline", "the kernel command line cannot hold line breaks or NUL bytes")
    ]


def test_command_line_env_values_with_spaces_are_quoted(write_vm) -> None:
    vm = passes(
        write_vm("""\
        [kernel_cmdline.env]
        GREETING = "say hi"
        EMPTY = ""
        PLAIN = "x=y"
        """)
    )
    text = cmdline.compose(vm.resources)
    assert ' GREETING="say hi" EMPTY="" PLAIN=x=y ' in text


# --- consoles --------------------------------------------------------------------------------


def test_kernel_console_serial_missing(write_vm) -> None:
    path = write_vm("""\
        kernel_console = "ttyS1"

        [[serial_consoles]]
        output = "stdout"
        """)
    assert problems(path) == [("kernel_console", "ttyS1 needs 2 serial_consoles, the file has 1")]
    assert lines(path) == [
        f"{path}:1:1: kernel_console: ttyS1 needs 2 serial_consoles, the file has 1"
    ]


def test_kernel_console_serial_present(write_vm) -> None:
    passes(write_vm('kernel_console = "ttyS1"\n[[serial_consoles]]\n[[serial_consoles]]\n'))
    passes(write_vm('kernel_console = "ttyS0"\n[[serial_consoles]]\n'))


HVC_NEEDS = (
    "hvc{n} needs {0} console ports (the implicit console and `auto` virtio consoles have one "
    "each), the VM has {1}"
)


def test_kernel_console_hvc_missing(write_vm) -> None:
    path = write_vm('kernel_console = "hvc1"\n')
    assert problems(path) == [("kernel_console", HVC_NEEDS.format(2, 1, n=1))]


def test_kernel_console_hvc0_without_any_virtio_console(write_vm) -> None:
    path = write_vm('kernel_console = "hvc0"\ndisable_implicit_console = true\n')
    assert problems(path) == [("kernel_console", HVC_NEEDS.format(1, 0, n=0))]


def test_kernel_console_hvc_of_a_ports_console_is_missing(write_vm) -> None:
    # A `ports` console has no console port: its ports are /dev/vportNpM, not an hvc.
    path = write_vm(
        'kernel_console = "hvc1"\n[[virtio_consoles]]\ntype = "ports"\n'
        'ports = [{ type = "inout", name = "a" }]\n'
    )
    assert problems(path) == [("kernel_console", HVC_NEEDS.format(2, 1, n=1))]


def test_kernel_console_hvc_present(write_vm) -> None:
    passes(write_vm('kernel_console = "hvc1"\n[[virtio_consoles]]\ntype = "auto"\n'))
    passes(write_vm('kernel_console = "hvc0"\n'))
    passes(
        write_vm(
            'kernel_console = "hvc0"\ndisable_implicit_console = true\n'
            '[[virtio_consoles]]\ntype = "auto"\n'
        )
    )


def test_console_output_without_implicit_console(write_vm) -> None:
    path = write_vm("""\
        disable_implicit_console = true
        console_output = "console.log"
        """)
    message = "is the implicit console's output, but disable_implicit_console is set"
    assert problems(path) == [("console_output", message)]
    assert lines(path) == [f"{path}:2:1: console_output: {message}"]


def test_console_output_with_implicit_console(write_vm, tmp_path: Path) -> None:
    vm = passes(write_vm('console_output = "console.log"\n'))
    assert vm.resources.console_output == str(tmp_path / "console.log")


def test_kernel_console_with_a_huge_hvc_number(write_vm) -> None:
    # int() of thousands of digits raises ValueError; the schema bounds the number first.
    value = "hvc" + "9" * 5000
    path = write_vm(f'kernel_console = "{value}"\n')
    assert problems(path) == [
        ("kernel_console", f'"{value[:57]}..." must be ttyS0..ttyS3 or hvc0..hvc99')
    ]


def test_kernel_console_hvc99_is_counted(write_vm) -> None:
    path = write_vm('kernel_console = "hvc99"\n')
    assert problems(path) == [("kernel_console", HVC_NEEDS.format(100, 1, n=99))]


# --- network_rules ---------------------------------------------------------------------------


def test_dhcp_without_net(write_vm) -> None:
    path = write_vm("dhcp_client = true\n")
    assert problems(path) == [("dhcp_client", "needs a network interface in `net`")]
    assert lines(path) == [f"{path}:1:1: dhcp_client: needs a network interface in `net`"]


def test_dhcp_with_net(write_vm) -> None:
    passes(write_vm('dhcp_client = true\n[[net]]\nid = "eth0"\nbackend = { type = "passt" }\n'))


def test_tcp_ports_without_hijack_inet(write_vm) -> None:
    path = write_vm("""\
        [vsock]
        tsi = ["hijack_unix"]
        tcp_ports = [{ host_port = 8080, guest_port = 80 }]
        """)
    message = 'TCP port maps work through TSI: add "hijack_inet" to vsock.tsi'
    assert problems(path) == [("vsock.tcp_ports", message)]
    assert lines(path) == [f"{path}:3:1: vsock.tcp_ports: {message}"]


def test_tcp_ports_with_hijack_inet(write_vm) -> None:
    passes(
        write_vm("""\
        [vsock]
        tsi = ["hijack_unix", "hijack_inet"]
        tcp_ports = [{ host_port = 8080, guest_port = 80 }]
        """)
    )
    passes(write_vm("[vsock]\ntcp_ports = []\n"))


# --- socket_paths ----------------------------------------------------------------------------


def _socket_of_length(tmp_path: Path, length: int) -> str:
    """An absolute path of `length` bytes in a directory that exists."""
    base = str(tmp_path) + "/"
    assert len(base) + 1 < length
    return base + "s" * (length - len(base))


def test_unix_stream_socket_path_too_long(write_vm, tmp_path: Path) -> None:
    sock = _socket_of_length(tmp_path, 108)
    path = write_vm(f"""\
        [[net]]
        id = "eth0"
        backend = {{ type = "unixstream", socket_path = "{sock}" }}
        """)
    message = "is 108 bytes; a unix socket path holds at most 107"
    assert problems(path) == [("net[0].backend.socket_path", message)]
    assert lines(path) == [f"{path}:3:34: net[0].backend.socket_path: {message}"]


def test_unix_gram_and_vsock_socket_paths_too_long(write_vm, tmp_path: Path) -> None:
    sock = _socket_of_length(tmp_path, 200)
    path = write_vm(f"""\
        [[net]]
        id = "eth0"
        backend = {{ type = "unixgram", socket_path = "{sock}" }}

        [[vsock.ports]]
        port = 1
        socket_path = "{sock}"
        """)
    message = "is 200 bytes; a unix socket path holds at most 107"
    assert problems(path) == [
        ("net[0].backend.socket_path", message),
        ("vsock.ports[0].socket_path", message),
    ]


def test_relative_socket_path_counts_when_resolved(write_vm, tmp_path: Path) -> None:
    # The socket is bound at its resolved (absolute) path: that is what must fit.
    name = "s" * (108 - len(str(tmp_path)) - 1)
    path = write_vm(f'[[vsock.ports]]\nport = 1\nsocket_path = "{name}"\n')
    assert problems(path) == [
        ("vsock.ports[0].socket_path", "is 108 bytes; a unix socket path holds at most 107")
    ]


def test_socket_path_of_107_bytes_passes(write_vm, tmp_path: Path) -> None:
    sock = _socket_of_length(tmp_path, 107)
    passes(
        write_vm(f"""\
        [[net]]
        id = "eth0"
        backend = {{ type = "unixstream", socket_path = "{sock}" }}

        [[vsock.ports]]
        port = 1
        socket_path = "{sock}"
        """)
    )


def test_passt_socket_path_too_long(write_vm, tmp_path: Path) -> None:
    # vmrun connects to an already running passt's socket: the same limit.
    sock = _socket_of_length(tmp_path, 108)
    path = write_vm(f"""\
        [[net]]
        id = "eth0"
        backend = {{ type = "passt", socket_path = "{sock}" }}
        """)
    assert problems(path) == [
        ("net[0].backend.socket_path", "is 108 bytes; a unix socket path holds at most 107")
    ]


# --- rlimits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("soft", "hard"), [(10, 5), (-1, 5), (1, 0)], ids=["above", "unlimited-soft", "zero-hard"]
)
def test_rlimit_soft_above_hard(write_vm, soft: int, hard: int) -> None:
    path = write_vm(f"""\
        [workload]
        exec = "/bin/true"

        [workload.rlimits]
        nofile = {{ soft = {soft}, hard = {hard} }}
        """)
    message = f"soft limit {soft} is above hard limit {hard}"
    assert problems(path) == [("workload.rlimits.nofile", message)]
    assert lines(path) == [f"{path}:5:1: workload.rlimits.nofile: {message}"]


@pytest.mark.parametrize(("soft", "hard"), [(5, 5), (0, 0), (5, -1), (-1, -1), (4, 5)])
def test_rlimit_within_hard(write_vm, soft: int, hard: int) -> None:
    vm = passes(
        write_vm(f'[workload]\nexec = "x"\nrlimits.core = {{ soft = {soft}, hard = {hard} }}\n')
    )
    assert vm.resources.workload is not None
    assert vm.resources.workload.rlimits["core"].soft == soft


# --- oem_strings -----------------------------------------------------------------------------


def _oem_strings(strings: list[str]) -> str:
    return "smbios_oem_strings = [\n" + "".join(f'  "{s}",\n' for s in strings) + "]\n"


def test_oem_strings_too_many(write_vm) -> None:
    path = write_vm(_oem_strings([f"s{i}" for i in range(256)]))
    message = (
        "256 strings; the SMBIOS OEM Strings structure holds at most 255 (its count is one byte)"
    )
    assert problems(path) == [("smbios_oem_strings", message)]
    assert lines(path) == [f"{path}:1:1: smbios_oem_strings: {message}"]


def test_oem_strings_255_pass(write_vm) -> None:
    vm = passes(write_vm(_oem_strings([f"s{i}" for i in range(255)])))
    assert vm.resources.smbios_oem_strings[254] == "s254"


def test_oem_string_empty(write_vm) -> None:
    path = write_vm('smbios_oem_strings = ["a", ""]\n')
    message = "is empty; an SMBIOS string needs a character (an empty one ends the string set)"
    assert problems(path) == [("smbios_oem_strings[1]", message)]
    assert lines(path) == [f"{path}:1:28: smbios_oem_strings[1]: {message}"]


def test_oem_string_with_nul(write_vm) -> None:
    path = write_vm(_oem_strings(["a", "b", "key=\\u0000value"]))
    message = "holds a NUL character at position 4; an SMBIOS string ends at a NUL"
    assert problems(path) == [("smbios_oem_strings[2]", message)]
    assert lines(path) == [f"{path}:4:3: smbios_oem_strings[2]: {message}"]


def test_oem_strings_too_big(write_vm) -> None:
    # Bytes in UTF-8, each string with its NUL: 32704 two-byte characters take 65409.
    path = write_vm(_oem_strings(["é" * 32704]))
    message = (
        "the strings take 65409 bytes in UTF-8 with their NULs; the SMBIOS tables have room "
        "for 65407"
    )
    assert problems(path) == [("smbios_oem_strings", message)]
    assert lines(path) == [f"{path}:1:1: smbios_oem_strings: {message}"]


@pytest.mark.parametrize(
    "strings",
    [["x" * 65406], ["é" * 32703], ["a" * 200] * 255, []],
    ids=["one-byte", "two-byte", "255", "none"],
)
def test_oem_strings_that_fit_pass(write_vm, strings: list[str]) -> None:
    vm = passes(write_vm(_oem_strings(strings)))
    assert vm.resources.smbios_oem_strings == tuple(strings)


def test_oem_strings_every_problem_at_once(write_vm) -> None:
    # Reported in file order: the list's own problems at its key, then each string's.
    path = write_vm(_oem_strings(["", "\\u0000"] + ["z" * 300] * 254))
    assert problems(path) == [
        (
            "smbios_oem_strings",
            "256 strings; the SMBIOS OEM Strings structure holds at most 255 (its count is one "
            "byte)",
        ),
        (
            "smbios_oem_strings",
            "the strings take 76457 bytes in UTF-8 with their NULs; the SMBIOS tables have room "
            "for 65407",
        ),
        (
            "smbios_oem_strings[0]",
            "is empty; an SMBIOS string needs a character (an empty one ends the string set)",
        ),
        (
            "smbios_oem_strings[1]",
            "holds a NUL character at position 0; an SMBIOS string ends at a NUL",
        ),
    ]
    assert [line.split(": ")[0] for line in lines(path)] == [
        f"{path}:1:1",
        f"{path}:1:1",
        f"{path}:2:3",
        f"{path}:3:3",
    ]


# --- text the rules measure in bytes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ('{"fs": [{"tag": "\\ud800", "shared_dir": "."}]}', "fs[0].tag"),
        ('{"kernel_cmdline": {"prolog": "\\udfff"}}', "kernel_cmdline.prolog"),
        ('{"kernel_cmdline": {"env": {"A": "x\\ud83d"}}}', "kernel_cmdline.env.A"),
        (
            '{"vsock": {"ports": [{"port": 1, "socket_path": "\\ud800"}]}}',
            "vsock.ports[0].socket_path",
        ),
    ],
    ids=["fs-tag", "prolog", "env", "socket"],
)
def test_lone_surrogate_is_a_config_error(write_vm, document: str, where: str) -> None:
    # JSON \ud800 escapes make strings that are no text; the rules measure text in UTF-8
    # bytes (tag, command line, socket paths), so they must never see one.
    path = write_vm(document, suffix=".json")
    assert problems(path) == [(where, "holds a lone UTF-16 surrogate escape, which is not text")]


def test_surrogate_pair_escape_is_one_character(write_vm) -> None:
    # A proper pair (U+1F600, 4 bytes in UTF-8) is text like any other.
    path = write_vm('{"fs": [{"tag": "' + "\\ud83d\\ude00" * 9 + '", "shared_dir": "."}]}', ".json")
    vm = passes(path)
    assert vm.resources.fs[0].tag == "\U0001f600" * 9


# --- path checks -----------------------------------------------------------------------------


def test_missing_file(write_vm, tmp_path: Path) -> None:
    path = write_vm('[kernel]\npath = "vmlinuz"\n')
    message = f"no such file: {tmp_path / 'vmlinuz'}"
    assert problems(path) == [("kernel.path", message)]
    assert lines(path) == [f"{path}:2:1: kernel.path: {message}"]


def test_directory_instead_of_file(write_vm, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    path = write_vm('[kernel]\ninitramfs = "images"\n')
    assert problems(path) == [
        ("kernel.initramfs", f"is a directory, not a file: {tmp_path / 'images'}")
    ]


def test_missing_directory(write_vm, tmp_path: Path) -> None:
    path = write_vm('[[fs]]\ntag = "data"\nshared_dir = "data"\n')
    assert problems(path) == [("fs[0].shared_dir", f"no such directory: {tmp_path / 'data'}")]


def test_file_instead_of_directory(write_vm, tmp_path: Path) -> None:
    sized(tmp_path / "data", 1)
    path = write_vm('[[fs]]\ntag = "data"\nshared_dir = "data"\n')
    assert problems(path) == [("fs[0].shared_dir", f"not a directory: {tmp_path / 'data'}")]


def test_missing_parent_directory(write_vm, tmp_path: Path) -> None:
    path = write_vm('console_output = "logs/console.log"\n')
    assert problems(path) == [
        (
            "console_output",
            f"directory {tmp_path / 'logs'} does not exist (for {tmp_path / 'logs/console.log'})",
        )
    ]


def test_output_that_is_a_directory(write_vm, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = write_vm('[[serial_consoles]]\noutput = "logs"\n')
    assert problems(path) == [("serial_consoles[0].output", f"is a directory: {tmp_path / 'logs'}")]


def test_streams_are_not_paths(write_vm) -> None:
    vm = passes(
        write_vm("""\
        [[serial_consoles]]
        input = "stdin"
        output = "stderr"

        [[serial_consoles]]
        input = "null"
        output = "null"

        [[virtio_consoles]]
        type = "ports"
        ports = [{ type = "tty", name = "t" }, { type = "inout", name = "io" }]
        """)
    )
    assert [(c.input, c.output) for c in vm.resources.serial_consoles] == [
        ("stdin", "stderr"),
        ("null", "null"),
    ]


def test_stream_name_of_the_other_direction_is_a_path(write_vm, tmp_path: Path) -> None:
    path = write_vm('[[serial_consoles]]\ninput = "stdout"\n')
    assert problems(path) == [("serial_consoles[0].input", f"no such file: {tmp_path / 'stdout'}")]


def test_existing_paths_pass(write_vm, tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "logs").mkdir()
    sized(tmp_path / "disk.img", 4096)
    sized(tmp_path / "in.txt", 0)
    passes(
        write_vm("""\
        console_output = "logs/new.log"
        fs = [{ tag = "s", shared_dir = "share" }]
        block = [{ id = "d", path = "disk.img" }]
        serial_consoles = [{ input = "in.txt", output = "logs/serial.log" }]
        """)
    )


def test_every_path_problem_is_reported(write_vm, tmp_path: Path) -> None:
    path = write_vm("""\
        [kernel]
        path = "k"
        initramfs = "i"

        [[block]]
        id = "d"
        path = "disk.img"
        """)
    assert problems(path) == [
        ("kernel.path", f"no such file: {tmp_path / 'k'}"),
        ("kernel.initramfs", f"no such file: {tmp_path / 'i'}"),
        ("block[0].path", f"no such file: {tmp_path / 'disk.img'}"),
    ]


def test_bundle_library_path_is_a_file_relative_to_the_vm(write_vm, tmp_path: Path) -> None:
    # With a `/` the library is a host path; a bare soname is left to the dynamic loader.
    path = write_vm('[kernel_bundle]\nlibrary = "lib/libkrunfw.so.4"\n')
    assert problems(path) == [
        ("kernel_bundle.library", f"no such file: {tmp_path / 'lib' / 'libkrunfw.so.4'}")
    ]
    (tmp_path / "lib").mkdir()
    sized(tmp_path / "lib" / "libkrunfw.so.4", 16)
    bundle = passes(path).resources.kernel_bundle
    assert bundle is not None
    assert bundle.library == str(tmp_path / "lib" / "libkrunfw.so.4")
    bundle = passes(
        write_vm('[kernel_bundle]\nlibrary = "libkrunfw.so.5"\n')
    ).resources.kernel_bundle
    assert bundle is not None
    assert bundle.library == "libkrunfw.so.5"


# --- paths are resolved relative to the file -------------------------------------------------


def test_paths_resolve_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm_dir = tmp_path / "vms"
    (vm_dir / "images").mkdir(parents=True)
    (tmp_path / "share").mkdir()
    bzimage(vm_dir / "images" / "bzImage", 8 * MIB)
    file = vm_dir / "vm.toml"
    file.write_text(
        '[kernel]\npath = "images/bzImage"\n'
        '[[fs]]\ntag = "s"\nshared_dir = "../share"\n'
        '[[vsock.ports]]\nport = 5\nsocket_path = "./images/../v.sock"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = load(os.path.relpath(file)).resources
    assert r.kernel.path == str(vm_dir / "images" / "bzImage")
    assert r.fs[0].shared_dir == str(tmp_path / "share")
    assert r.vsock is not None
    assert r.vsock.ports[0].socket_path == str(vm_dir / "v.sock")


def test_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bzimage(home / "bzImage", 8 * MIB)
    sized(tmp_path / "initrd", 10)
    monkeypatch.setenv("HOME", str(home))
    file = tmp_path / "sub" / "vm.toml"
    file.parent.mkdir()
    file.write_text(f'[kernel]\npath = "~/bzImage"\ninitramfs = "{tmp_path / "initrd"}"\n')
    r = load(str(file)).resources
    assert r.kernel.path == str(home / "bzImage")
    assert r.kernel.initramfs == str(tmp_path / "initrd")


def test_missing_path_is_reported_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "vms" / "vm.toml"
    file.parent.mkdir()
    file.write_text('[kernel]\npath = "k"\n')
    monkeypatch.chdir(tmp_path)
    assert problems("vms/vm.toml") == [("kernel.path", f"no such file: {tmp_path / 'vms' / 'k'}")]


# --- several problems at once, in file order -------------------------------------------------


def test_all_problems_at_once_in_file_order(write_vm, tmp_path: Path) -> None:
    # The rules run in RULES order (hyperthreading first, rlimits last); the report is in
    # the order the keys are written.
    path = write_vm("""\
        dhcp_client = true
        kernel_console = "ttyS2"

        [machine]
        vcpu_count = 3
        ht_enabled = true

        [[fs]]
        tag = "a"
        shared_dir = "missing"

        [[fs]]
        tag = "a"
        shared_dir = "."

        [workload]
        exec = "/bin/sh"
        rlimits.nofile = { soft = 2, hard = 1 }
        """)
    assert lines(path) == [
        f"{path}:1:1: dhcp_client: needs a network interface in `net`",
        f"{path}:2:1: kernel_console: ttyS2 needs 3 serial_consoles, the file has 0",
        f"{path}:5:1: machine.vcpu_count: 3 vCPUs cannot be hyperthread pairs; "
        "with ht_enabled use 1 or an even number",
        f"{path}:10:1: fs[0].shared_dir: no such directory: {tmp_path / 'missing'}",
        f"{path}:12:1: fs[1]: tag 'a' is already used by fs[0]",
        f"{path}:18:9: workload.rlimits.nofile: soft limit 2 is above hard limit 1",
    ]


def test_all_problems_at_once_in_json(write_vm) -> None:
    path = write_vm(
        """\
        {
          "workload": {"exec": "x", "rlimits": {"stack": {"soft": 9, "hard": 8}}},
          "net": [
            {"id": "a", "mac": "01:00:00:00:00:00", "backend": {"type": "tap", "tap_name": "t"}}
          ],
          "machine": {"ht_enabled": true, "vcpu_count": 5}
        }
        """,
        suffix=".json",
    )
    assert lines(path) == [
        f"{path}:2:41: workload.rlimits.stack: soft limit 9 is above hard limit 8",
        f"{path}:4:17: net[0].mac: 01:00:00:00:00:00 is a multicast address; "
        "use a unicast one (even first octet)",
        f"{path}:6:35: machine.vcpu_count: 5 vCPUs cannot be hyperthread pairs; "
        "with ht_enabled use 1 or an even number",
    ]


def test_rules_are_all_exercised() -> None:
    # A new rule needs its tests here.
    assert [rule.__name__ for rule in checks.RULES] == [
        "hyperthreading",
        "memory_fits_images",
        "unique_names",
        "disk_serials",
        "unicast_macs",
        "fs_tag_bytes",
        "kernel_sources",
        "tee_rules",
        "root_references",
        "interrupt_budget",
        "command_line",
        "consoles",
        "network_rules",
        "socket_paths",
        "rlimits",
        "oem_strings",
    ]
