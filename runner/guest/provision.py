"""What a VM needs from the network or a compiler, made ready in the cache before it boots.

`vmrun run` provisions on the host where it starts, before it enters the emulated host,
which has no network (and where a compiler runs at emulated speed); the builder then finds
every part in the cache. A part a later device needs from the network is added here.
"""

from __future__ import annotations

from runner.config.model import VmResources
from runner.guest.initramfs import base_image
from runner.guest.kernel import default_kernel
from runner.guest.modules import default_modules_archive, modules_archive


def provision_guest(resources: VmResources) -> None:
    """Download and build into the cache what booting `resources` needs (raises
    PackageError or GuestImageError with what to do instead)."""
    if resources.kernel_bundle is None and resources.kernel.path is None:
        default_kernel()
    base_image()
    modules_archive(resources)


def provision_default_guest() -> None:
    """What a VM with the default kernel needs (the boot tests' and benchmarks' guests)."""
    default_kernel()
    base_image()
    default_modules_archive()
