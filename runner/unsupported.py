"""Parts of a valid VM file that this vmrun build or host cannot run.

They pass validation (the file may be meant for another host); `vmrun run` refuses them
with these messages instead of silently leaving a device out.
"""

from __future__ import annotations

import os

from runner.boot.krunfw import KrunfwError, open_library
from runner.config.model import VmResources
from runner.config.problems import Problem


def unsupported_features(resources: VmResources) -> list[Problem]:
    problems = []
    if resources.gpu:
        problems.append(
            Problem(("gpu",), "virtio-gpu is not supported by this vmrun build (no virglrenderer)")
        )
    if resources.snd_device:
        problems.append(Problem(("snd_device",), "virtio-snd is not supported by this vmrun build"))
    for index in range(len(resources.input_backends)):
        problems.append(
            Problem(("input_backends", index), "virtio-input is not supported by this vmrun build")
        )
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
    return problems


def _tee_refusal(tee: str) -> str:
    hardware = {"sev": "/dev/sev", "snp": "/dev/sev", "tdx": "/sys/firmware/tdx"}.get(tee)
    if hardware and not os.path.exists(hardware):
        return f"a {tee} TEE needs {hardware}, which this host does not have"
    return f"{tee} TEE guests are not supported by this vmrun build"


def _library_problem(library: str) -> str | None:
    # Paths were resolved and checked by the loader; a soname is looked up exactly as the
    # builder will load it (find_library would ignore the version in `libkrunfw.so.5`).
    try:
        open_library(library)
    except KrunfwError as exc:
        return str(exc)
    return None
