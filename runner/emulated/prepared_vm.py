"""The VM as the vmrun outside the emulated host loaded it, handed to the vmrun inside.

The outside has read the VM file, validated it and refused what this build cannot run; the
inside would do all of it again at emulated speed (2.5 s of the README's first command:
TOML, the schema, cattrs and the checks, mostly their imports). It gets the loaded
`VmResources` instead: pickled into a private (0700) directory of the outer host, which the
emulated host sees read-only at the same path (runner/emulated/delegate.py).

Unpickling creates only what the pickle names, and `read` lets it name nothing but the
model's own attrs classes: a file changed behind vmrun's back could at worst describe
another VM, never run code.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle

import attrs

from runner.config.model import VmResources
from runner.errors import VmrunError

FILE_NAME = "vm.pickle"
# Where the model's classes are defined: the only globals a prepared VM may name.
MODEL_MODULES = frozenset({"runner.config.model", "runner.config.devices"})


class PreparedVmError(VmrunError):
    """The prepared VM cannot be read."""


def write(resources: VmResources, directory: str) -> str:
    """`resources` pickled into `directory` (which only the user can write); its path."""
    path = os.path.join(directory, FILE_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        pickle.dump(resources, file, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def read(path: str) -> VmResources:
    with open(path, "rb") as file:
        data = file.read()
    try:
        resources = _ModelUnpickler(io.BytesIO(data)).load()
    except PreparedVmError:
        raise
    except Exception as exc:  # a truncated or foreign file: pickle's errors are many
        raise PreparedVmError(f"{path}: not a VM prepared by vmrun ({exc})") from exc
    if not isinstance(resources, VmResources):
        raise PreparedVmError(f"{path}: holds a {type(resources).__name__}, not a VM")
    return resources


class _ModelUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if module in MODEL_MODULES:
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type) and attrs.has(found) and found.__module__ == module:
                return found
        raise PreparedVmError(f"a prepared VM names {module}.{name}, which is not vmrun's model")
