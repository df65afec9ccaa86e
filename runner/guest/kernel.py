"""The default guest kernel: Debian's cloud kernel, provisioned into the cache.

Its virtio drivers are modules (under `modules`), its 8250 serial driver is built in, and
its modules are not compressed.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from runner.guest import debian

CLOUD_KERNEL_PACKAGE = "linux-image-cloud-amd64"


@attrs.frozen
class GuestKernel:
    image: Path  # the bzImage
    modules: Path  # lib/modules/RELEASE
    release: str


def default_kernel() -> GuestKernel:
    """Download (once, SHA256 checked against apt's) and unpack the cloud kernel."""
    tree = debian.unpack(debian.fetch(debian.depends_of(CLOUD_KERNEL_PACKAGE)))
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise debian.PackageError(f"expected one kernel in {tree / 'boot'}, found {len(images)}")
    release = images[0].name.removeprefix("vmlinuz-")
    return GuestKernel(images[0], tree / "lib" / "modules" / release, release)
