"""What the builder needs, without /dev/kvm or downloads: a stand-in KVM (every call succeeds,
the CPUID is a plausible host's), a synthetic bzImage as the default kernel and a tiny
initramfs base. For tests of what the builder does with a VM file, not of KVM."""

from __future__ import annotations

import struct
from pathlib import Path
from unittest import mock

import pytest
from arch.test_cpuid import supported as skylake_cpuid

from runner import builder
from runner.guest.kernel import GuestKernel

SETUP_SECTS = 4


def fake_bzimage() -> bytes:
    """A bzImage the loader accepts: a setup header (protocol 2.15, relocatable, loaded high,
    64-bit entry) and a 1 KiB protected-mode part."""
    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<I", setup, 0x1F4, 1024 // 16)
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x200:0x202] = bytes([0xEB, 0x6A])
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    setup[0x211] = 0x01
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x230, 2 << 20)
    setup[0x234] = 1
    setup[0x235] = 21
    struct.pack_into("<H", setup, 0x236, 0x7F)
    struct.pack_into("<I", setup, 0x238, 2047)
    struct.pack_into("<Q", setup, 0x258, 16 << 20)
    struct.pack_into("<I", setup, 0x260, 8 << 20)
    return bytes(setup) + bytes(1024)


def stand_in_for_kvm(patch: pytest.MonkeyPatch, directory: Path) -> mock.MagicMock:
    """Patches the builder's Kvm, default kernel and initramfs base; returns the Kvm (its
    `create_vm()`'s value is the Vm, entered as a context like the real one)."""
    kvm = mock.MagicMock()
    kvm.__enter__.return_value = kvm
    kvm.get_supported_cpuid.return_value = skylake_cpuid()
    vm = kvm.create_vm.return_value
    vm.__enter__.return_value = vm
    patch.setattr(builder, "Kvm", lambda: kvm)
    base = directory / "base.cpio.gz"
    base.write_bytes(bytes(512))
    patch.setattr("runner.guest.initramfs.base_image", lambda: base)
    image = directory / "bzImage"
    if not image.exists():
        image.write_bytes(fake_bzimage())
    patch.setattr(builder, "default_kernel", lambda: GuestKernel(image, directory, "test"))
    return kvm
