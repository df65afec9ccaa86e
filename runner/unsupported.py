"""Parts of a valid VM file that this vmrun build or host cannot run.

They pass validation (the file may be meant for another host); `vmrun run` refuses them
with these messages, before it boots anything (the emulated host included), instead of
silently leaving a device out. `tests/test_every_field.py` checks that every field of the
model is either used by the builder or refused here.
"""

from __future__ import annotations

import os

from runner.boot.krunfw import KrunfwError, check_library
from runner.config.checks import memory_fits_kernel_image
from runner.config.model import InitramfsRoot, VmResources
from runner.config.problems import Problem
from runner.config.slots import State, virtio_slots


def refusals(resources: VmResources) -> list[Problem]:
    """Everything in `resources` that `vmrun run` cannot do here, located in the file; and
    a guest too small for what its kernel's header says it needs (validation reads no file
    that the VM file names, so only `vmrun run` can tell)."""
    return (
        device_refusals(resources)
        + unsupported_features(resources)
        + not_built_yet(resources)
        + list(memory_fits_kernel_image(resources))
    )


def device_refusals(resources: VmResources) -> list[Problem]:
    """The virtio devices this build does not run, from the table of device kinds: once per
    kind at its section, or at each device where the kind says so."""
    problems: list[Problem] = []
    for slot in virtio_slots(resources):
        kind = slot.kind
        if kind.state is State.BUILT:
            continue
        if kind.per_device:
            problem = Problem(slot.where, kind.message)
        else:
            problem = Problem(kind.refusal_path, kind.message)
        if problem not in problems:
            problems.append(problem)
    return problems


def unsupported_features(resources: VmResources) -> list[Problem]:
    """What this build or this host cannot run at all."""
    problems = []
    if resources.vsock and resources.vsock.tsi:
        problems.append(
            Problem(
                ("vsock", "tsi"),
                "Transparent Socket Impersonation needs a TSI-patched guest kernel "
                "(libkrunfw); not supported by this vmrun build",
            )
        )
    if resources.tee_config:
        problems.append(Problem(("tee_config",), _tee_refusal(resources.tee_config.tee)))
    if resources.kernel_bundle:
        missing = _library_problem(resources.kernel_bundle.library)
        if missing:
            problems.append(Problem(("kernel_bundle", "library"), missing))
        for image in ("qboot", "initrd"):  # libkrun loads them only for SEV guests
            if getattr(resources.kernel_bundle, image):
                problems.append(
                    Problem(
                        ("kernel_bundle", image),
                        f"a {image} bundle is for TEE guests (tee_config), which this vmrun "
                        "build does not run",
                    )
                )
    return problems


def _tee_refusal(tee: str) -> str:
    hardware = {"sev": "/dev/sev", "snp": "/dev/sev", "tdx": "/sys/firmware/tdx"}.get(tee)
    if hardware and not os.path.exists(hardware):
        return f"a {tee} TEE needs {hardware}, which this host does not have"
    return f"{tee} TEE guests are not supported by this vmrun build"


def _library_problem(library: str) -> str | None:
    # Read as data, exactly as the builder will read it: nothing in the library runs.
    try:
        check_library(library)
    except KrunfwError as exc:
        return str(exc)
    return None


# The builder says the same if it meets one (runner/builder.py `_block`).
QCOW2_NOT_BUILT = (
    "qcow2 images are not built yet: they come with the NBD client (qemu-storage-daemon); "
    "raw images and block devices are"
)


def not_built_yet(resources: VmResources) -> list[Problem]:
    """What this build cannot run yet, located in the file."""
    problems = []
    for index, disk in enumerate(resources.block):
        if disk.format == "qcow2":
            problems.append(Problem(("block", index), QCOW2_NOT_BUILT))
    if not isinstance(resources.root, InitramfsRoot):
        problems.append(Problem(("root",), "only the initramfs root is built yet"))
    if resources.dhcp_client:
        problems.append(
            Problem(("dhcp_client",), "dhcp_client needs virtio-net, which is not built yet")
        )
    if resources.firmware:
        problems.append(Problem(("firmware",), "booting through firmware is not built yet"))
    return problems
