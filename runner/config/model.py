"""The VM file model: frozen attrs classes that mirror libkrun's VmResources and TeeConfig.

These classes are the single source of truth: the JSON Schema is generated from them
(`runner.config.schema`), cattrs structures checked documents into them (`runner.config.load`).
Defaults here are the defaults a user gets; `vmrun show` prints them filled in.
"""

from __future__ import annotations

from typing import Literal

import attrs

from runner.arch.x86_64 import layout
from runner.config.devices import (
    MAX_GUEST_ADDRESS,
    BlockDevice,
    FsShare,
    Gpu,
    InputBackend,
    NetworkInterface,
    SerialConsole,
    VirtioConsole,
    Vsock,
)
from runner.config.fields import PathUse, setting

# libkrun's limit (and KVM's common one for a microVM): vCPU ids fit the MP table we write.
MAX_VCPUS = 32
# The least memory any kernel can run in: the memory rule's floor (runner/config/checks.py)
# with images of no size at all, the 1 MiB below the kernel plus layout.GUEST_WORKING_SET
# (below which Linux boots fail with OOM), 49 MiB. libkrun and Firecracker take any size and
# let such a guest die at boot; vmrun refuses it whatever kernel the file names (and checks
# the kernel's and initramfs' own sizes on top when it names them). vmrun's default kernel,
# Debian's cloud kernel, needs more (its bzImage's init_size is 51.5 MiB in 6.1, so about
# 101 MiB in all), but it is not measured at validation, which downloads nothing.
MIN_MEM_MIB = -(-(layout.KERNEL_START + layout.GUEST_WORKING_SET) // layout.MIB)
MAX_MEM_MIB = 1048576  # 1 TiB
# setrlimit's range as the guest init reads it (native/init/config.c, parse_limit): 0 to
# 2**64 - 2, and -1; 2**64 - 1 is RLIM_INFINITY, which the file writes as -1.
MAX_RLIMIT = 2**64 - 2
HOSTNAME_PATTERN = (
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

CpuTemplate = Literal["T2", "C3"]


@attrs.frozen(kw_only=True)
class MachineConfig:
    """vCPUs, memory and CPU model (libkrun's VmConfig, plus nested and split_irqchip)."""

    vcpu_count: int = setting("Number of vCPUs.", 1, minimum=1, maximum=MAX_VCPUS)
    mem_size_mib: int = setting(
        "Guest memory in MiB.", 128, minimum=MIN_MEM_MIB, maximum=MAX_MEM_MIB
    )
    ht_enabled: bool = setting(
        "Present vCPUs as hyperthread pairs (then vcpu_count must be 1 or even).", False
    )
    cpu_template: CpuTemplate | None = setting(
        "Mask CPUID to a Firecracker CPU template (T2: Haswell-like, C3: Ivy Bridge-like; "
        "Intel hosts); absent: the host's supported features.",
        None,
    )
    nested: bool = setting("Expose vmx/svm so the guest can run its own VMs.", False)
    split_irqchip: bool = setting(
        "Emulate the I/O APIC in vmrun instead of in KVM, which keeps only the local APICs "
        "(KVM's split irqchip; there is no 8259 PIC then).",
        False,
    )


KernelFormat = Literal[
    "auto", "bzimage", "elf", "raw", "pe_gz", "image_gz", "image_bz2", "image_zstd"
]


@attrs.frozen(kw_only=True)
class KernelConfig:
    """The guest kernel; absent path: vmrun's default kernel (Debian's cloud kernel)."""

    path: str | None = setting(
        "Kernel image on the host, relative to the VM file.", None, path=PathUse.FILE
    )
    format: KernelFormat = setting(
        "Image format: `auto` detects it from the file's magic; `bzimage`, `elf` (vmlinux), "
        "`raw`, `pe_gz`, or a gzip/bzip2/zstd-compressed image.",
        "auto",
    )
    initramfs: str | None = setting(
        "An initramfs (cpio, optionally compressed) loaded beside the kernel; vmrun adds its "
        "own init and modules to it.",
        None,
        path=PathUse.FILE,
    )


@attrs.frozen(kw_only=True)
class KernelBundle:
    """A kernel from libkrunfw, the library that carries libkrun's own guest kernel."""

    library: str = setting(
        "libkrunfw library to load: a soname searched as dlopen does, or a path (with a `/`) "
        "relative to the VM file.",
        "libkrunfw.so.5",
        path=PathUse.LIBRARY,
    )
    guest_addr: int | None = setting(
        "Guest physical address to load the kernel at; must be page-aligned. "
        "Absent: the bundle's own address.",
        None,
        minimum=0,
        maximum=MAX_GUEST_ADDRESS,
    )
    qboot: str | None = setting(
        "qboot firmware image (exactly 64 KiB) for TEE guests.", None, path=PathUse.FILE
    )
    initrd: str | None = setting("Initrd image for TEE guests.", None, path=PathUse.FILE)


@attrs.frozen(kw_only=True)
class FirmwareConfig:
    """Firmware loaded into the guest before the kernel (e.g. an EFI image)."""

    path: str = setting("Firmware image on the host, relative to the VM file.", path=PathUse.FILE)


@attrs.frozen(kw_only=True)
class KernelCmdline:
    """The kernel command line, composed as: prolog, env, device entries, epilog."""

    prolog: str | None = setting(
        "Leading part; absent: vmrun's default (`reboot=k panic=-1 ...`, see `vmrun show`).",
        None,
    )
    env: dict[str, str] = setting(
        "KEY=VALUE pairs put on the command line; the kernel hands them to init's environment.",
        factory=dict,
        propertyNames={"pattern": ENV_NAME_PATTERN},
    )
    epilog: str | None = setting("Trailing part, after the device entries.", None)


# kbs-types `Tee`, as it serializes (rename_all = "lowercase").
Tee = Literal[
    "sev", "snp", "tdx", "sgx", "azsnpvtpm", "aztdxvtpm", "cca", "csv", "se",
    "hygondcu", "nvidia", "tpm", "sample", "sampledevice",
]  # fmt: skip


@attrs.frozen(kw_only=True)
class TeeConfig:
    """Confidential-computing configuration (libkrun's TeeConfig); its cpus and ram_mib
    replace machine.vcpu_count and machine.mem_size_mib."""

    workload_id: str = setting("Workload id registered with the attestation server.", minLength=1)
    cpus: int = setting("vCPUs of the TEE guest.", minimum=1, maximum=MAX_VCPUS)
    ram_mib: int = setting(
        "Memory of the TEE guest in MiB.", minimum=MIN_MEM_MIB, maximum=MAX_MEM_MIB
    )
    tee: Tee = setting("The TEE technology (kbs-types names).", "sev")
    tee_data: str = setting("TEE-specific data (JSON text), passed to attestation as is.", "")
    attestation_url: str = setting("URL of the key broker (KBS) for attestation.", "")


RlimitName = Literal[
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
    "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
]  # fmt: skip


@attrs.frozen(kw_only=True)
class Rlimit:
    """A resource limit (setrlimit); -1 means unlimited."""

    soft: int = setting("Soft limit (-1: unlimited).", minimum=-1, maximum=MAX_RLIMIT)
    hard: int = setting("Hard limit (-1: unlimited).", minimum=-1, maximum=MAX_RLIMIT)


@attrs.frozen(kw_only=True)
class Workload:
    """What the guest init runs; `vmrun run FILE -- CMD ARGS...` replaces exec and args."""

    exec: str = setting(
        "Program to run: a path in the guest, or a name looked up in the guest's PATH.", minLength=1
    )
    args: tuple[str, ...] = setting("Arguments after the program name.", factory=tuple)
    env: dict[str, str] = setting(
        "Environment variables of the workload.",
        factory=dict,
        propertyNames={"pattern": ENV_NAME_PATTERN},
    )
    workdir: str = setting("Working directory in the guest (absolute).", "/", pattern=r"^/")
    rlimits: dict[RlimitName, Rlimit] = setting("Resource limits by name.", factory=dict)
    hostname: str | None = setting(
        "Guest host name; absent: `vmrun`.", None, pattern=HOSTNAME_PATTERN, maxLength=64
    )


@attrs.frozen(kw_only=True)
class InitramfsRoot:
    """The root file system is the initramfs itself (vmrun's init and the files it carries)."""

    type: Literal["initramfs"] = setting("Root kind.", "initramfs")


@attrs.frozen(kw_only=True)
class FsRoot:
    """The root file system is a virtio-fs share."""

    type: Literal["fs"] = setting("Root kind.", "fs")
    tag: str = setting("Tag of the share in `fs` to mount as /.", minLength=1)


@attrs.frozen(kw_only=True)
class BlockRoot:
    """The root file system is on a block device."""

    type: Literal["block"] = setting("Root kind.", "block")
    id: str = setting("Id of the disk in `block` to mount as /.", minLength=1)
    fs_type: str = setting("File system type on the disk.", "ext4", pattern=r"^[a-z0-9_]+$")
    options: str = setting("Mount options (comma-separated).", "")


Root = InitramfsRoot | FsRoot | BlockRoot


@attrs.frozen(kw_only=True)
class VmResources:
    """A vmrun VM definition: what the microVM is made of and what it runs."""

    machine: MachineConfig = setting("vCPUs, memory and CPU model.", factory=MachineConfig)
    kernel: KernelConfig = setting("The guest kernel and initramfs.", factory=KernelConfig)
    kernel_bundle: KernelBundle | None = setting(
        "Use libkrunfw's kernel instead of kernel.path; absent: not used.", None
    )
    firmware: FirmwareConfig | None = setting("Firmware to load; absent: none.", None)
    kernel_cmdline: KernelCmdline = setting("The kernel command line.", factory=KernelCmdline)
    fs: tuple[FsShare, ...] = setting("virtio-fs shares.", factory=tuple)
    block: tuple[BlockDevice, ...] = setting("virtio-blk disks, in order.", factory=tuple)
    net: tuple[NetworkInterface, ...] = setting("virtio-net interfaces, in order.", factory=tuple)
    dhcp_client: bool = setting("Let vmrun's init configure the first interface by DHCP.", False)
    vsock: Vsock | None = setting("The vsock device; absent: none.", None)
    disable_implicit_console: bool = setting(
        "Do not create the implicit virtio console that carries the workload's stdio.", False
    )
    kernel_console: str | None = setting(
        "console= for the kernel (e.g. ttyS0, hvc0); absent: the first serial console, "
        "else the implicit console.",
        None,
        pattern=r"^(ttyS[0-3]|hvc[0-9]{1,2})$",
    )
    serial_consoles: tuple[SerialConsole, ...] = setting(
        "16550 UARTs on COM1..COM4, in order.", factory=tuple, maxItems=4
    )
    virtio_consoles: tuple[VirtioConsole, ...] = setting("virtio consoles.", factory=tuple)
    console_output: str | None = setting(
        "Write the implicit console's output to this host file instead of stdout.",
        None,
        path=PathUse.PARENT,
    )
    smbios_oem_strings: tuple[str, ...] = setting(
        "SMBIOS type 11 OEM strings the guest can read.", factory=tuple
    )
    gpu: Gpu | None = setting("The virtio-gpu device; absent: none.", None)
    snd_device: bool = setting("Add a virtio-snd device.", False)
    input_backends: tuple[InputBackend, ...] = setting("virtio-input devices.", factory=tuple)
    tee_config: TeeConfig | None = setting("Run the guest in a TEE; absent: an ordinary VM.", None)
    workload: Workload | None = setting(
        "What the guest runs; absent: the command given after `--`.", None
    )
    root: Root = setting("The guest's root file system.", factory=InitramfsRoot)
