"""Nothing in a valid VM file is silently ignored: every field of the model either takes
effect (the builder reads it while it builds the machine) or `vmrun run` refuses the file
with a problem located at the field or at a section that holds it.

The samples below set every field of the model to a value other than its default (a test
checks that, so a field added later fails here until a sample sets it). For each sample,
the refusals of `runner.unsupported` are taken; where there are none, the machine is built
(on a stand-in for /dev/kvm) while every field read of the model's classes is recorded.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from fake_machine import fake_bzimage, stand_in_for_kvm
from qcow2_images import make_qcow2

from runner import builder
from runner.boot.loader import load_kernel
from runner.config import devices, model
from runner.config.load import load
from runner.config.problems import KeyPath
from runner.unsupported import refusals

Field = tuple[type, str]  # (attrs class, field name)

# Samples: together they set every field. {d} is the test's directory (files exist there).
SAMPLES = {
    "machine and boot": """
        disable_implicit_console = true
        kernel_console = "ttyS1"
        smbios_oem_strings = ["vmrun.test=1"]
        serial_consoles = [{ input = "{d}/input", output = "{d}/out" }, { output = "stderr" }]
        [machine]
        vcpu_count = 2
        mem_size_mib = 256
        ht_enabled = true
        cpu_template = "T2"
        nested = true
        split_irqchip = true
        [kernel]
        path = "{d}/bzImage"
        format = "bzimage"
        initramfs = "{d}/initrd"
        [kernel_cmdline]
        prolog = "panic=-1"
        env = { TZ = "UTC" }
        epilog = "quiet"
        [workload]
        exec = "/bin/sh"
        args = ["-c", "true"]
        env = { A = "1" }
        workdir = "/tmp"
        rlimits = { nofile = { soft = 10, hard = 20 } }
        hostname = "h"
    """,
    "bundle": """
        disable_implicit_console = true
        [kernel_bundle]
        library = "libkrunfw-test.so.9"
        guest_addr = 0x1000000
        qboot = "{d}/qboot"
        initrd = "{d}/initrd"
        [workload]
        exec = "/bin/true"
    """,
    "firmware": """
        disable_implicit_console = true
        [firmware]
        path = "{d}/firmware"
        [workload]
        exec = "/bin/true"
    """,
    "devices": """
        console_output = "{d}/console.log"
        dhcp_client = true
        snd_device = true
        root = { type = "block", id = "disk", fs_type = "xfs", options = "ro" }
        [[fs]]
        tag = "share"
        shared_dir = "{d}"
        read_only = true
        dax_window_mib = 64
        [[block]]
        id = "disk"
        path = "{d}/disk"
        format = "raw"
        read_only = true
        cache = "unsafe"
        sync = "none"
        direct_io = true
        [[net]]
        id = "eth0"
        mac = "52:54:00:12:34:56"
        backend = { type = "tap", tap_name = "tap0" }
        features = ["csum"]
        [[net]]
        id = "eth1"
        backend = { type = "unixgram", socket_path = "{d}/gram", send_vfkit_magic = true }
        [[net]]
        id = "eth2"
        backend = { type = "unixstream", socket_path = "{d}/stream" }
        [[net]]
        id = "eth3"
        backend = { type = "passt", socket_path = "{d}/passt" }
        [vsock]
        guest_cid = 5
        tsi = ["hijack_inet"]
        ports = [{ port = 1024, socket_path = "{d}/vsock", direction = "host_connects" }]
        tcp_ports = [{ host_port = 8080, guest_port = 80 }]
        [[virtio_consoles]]
        type = "auto"
        input = "null"
        output = "{d}/hvc1"
        err = "stdout"
        [[virtio_consoles]]
        type = "ports"
        ports = [
            { type = "tty", name = "shell", tty = "null" },
            { type = "inout", name = "m", input = "{d}/input", output = "{d}/m" },
        ]
        [gpu]
        virgl_flags = ["use_egl"]
        shm_size = 1048576
        displays = [{ width = 640, height = 480, refresh_rate = 30 }]
        [[input_backends]]
        device = "/dev/null"  # a character device, as an evdev is
        [workload]
        exec = "/bin/true"
    """,
    "qcow2": """
        [[block]]
        id = "disk"
        path = "{d}/disk.qcow2"
        format = "qcow2"
        [workload]
        exec = "/bin/true"
    """,
    "fs root": """
        root = { type = "fs", tag = "share" }
        [[fs]]
        tag = "share"
        shared_dir = "{d}"
        [workload]
        exec = "/bin/true"
    """,
    "tee": """
        [tee_config]
        workload_id = "w"
        cpus = 2
        ram_mib = 512
        tee = "snp"
        tee_data = "{}"
        attestation_url = "http://kbs"
        [workload]
        exec = "/bin/true"
    """,
}


def _attrs_classes(hint: Any) -> list[type]:
    """The attrs classes a field's type holds (through Optional, unions, tuples, dicts)."""
    if attrs.has(hint):
        return [hint]
    found: list[type] = []
    for arg in typing.get_args(hint):
        found += _attrs_classes(arg)
    return found


def model_fields() -> set[Field]:
    """Every leaf field of the model: one whose value is data, not a section of classes.
    Tags (a union variant's one-valued `type`) are left out: they choose, they hold nothing."""
    leaves: set[Field] = set()
    seen: set[type] = set()
    todo = [model.VmResources]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = typing.get_type_hints(cls, vars(model) | vars(devices))
        for field in attrs.fields(cls):
            inner = _attrs_classes(hints[field.name])
            if inner:
                todo += inner
            elif not _is_tag(hints[field.name]):
                leaves.add((cls, field.name))
    return leaves


def _is_tag(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Literal and len(typing.get_args(hint)) == 1


def _default(field: attrs.Attribute) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


def set_fields(value: object, path: KeyPath = ()) -> Iterator[tuple[Field, KeyPath]]:
    """Each leaf field that `value` (a loaded section) sets to other than its default."""
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if attrs.has(type(item)) or _holds_sections(item):
                yield from set_fields(item, (*path, field.name))
            elif item != _default(field):
                yield (type(value), field.name), (*path, field.name)
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            yield from set_fields(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from set_fields(item, (*path, key))


def _holds_sections(value: object) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return isinstance(value, tuple | dict) and any(attrs.has(type(item)) for item in items)


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    (tmp_path / "bzImage").write_bytes(fake_bzimage())
    for name in ("input", "initrd", "qboot", "firmware", "disk"):
        (tmp_path / name).write_bytes(bytes(65536 if name == "qboot" else 512))
    # A qcow2 disk is built for real: qemu-storage-daemon serves it (scripts/setup installs
    # qemu-img with it).
    make_qcow2(tmp_path / "disk.qcow2", 1 << 20)
    return tmp_path


def load_sample(name: str, directory: Path) -> model.VmResources:
    path = directory / f"{name.replace(' ', '-')}.toml"
    path.write_text(SAMPLES[name].replace("{d}", str(directory)))
    return load(str(path)).resources


class _Recorder:
    """Stands for a slot of an attrs class: records each read of the field."""

    def __init__(self, slot: Any, field: Field, reads: set[Field]) -> None:
        self._slot, self._field, self._reads = slot, field, reads

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        self._reads.add(self._field)
        return self._slot.__get__(obj, owner)

    def __set__(self, obj: object, value: object) -> None:
        self._slot.__set__(obj, value)


def fields_the_build_reads(
    resources: model.VmResources, monkeypatch: pytest.MonkeyPatch, directory: Path
) -> set[Field]:
    reads: set[Field] = set()
    with monkeypatch.context() as patch:
        stand_in_for_kvm(patch, directory)
        for cls, name in model_fields():
            patch.setattr(cls, name, _Recorder(cls.__dict__[name], (cls, name), reads))
        machine = builder.build(resources, builder.workload_argv(resources, None))
        machine.close()
    return reads


def test_the_samples_set_every_field(sample_dir: Path) -> None:
    covered = {field for name in SAMPLES for field, _ in set_fields(load_sample(name, sample_dir))}
    missing = sorted(f"{cls.__name__}.{name}" for cls, name in model_fields() - covered)
    assert not missing, f"no sample sets these fields to other than their default: {missing}"


@pytest.mark.parametrize("name", SAMPLES)
def test_every_field_is_used_or_refused(
    name: str, sample_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a host that has libkrunfw: a bundle is refused only for what this build lacks.
    monkeypatch.setattr("runner.unsupported.check_library", lambda _library: None)
    bundle_kernel = load_kernel(fake_bzimage(), "bzimage", name="bundle")
    monkeypatch.setattr("runner.boot.krunfw.load_bundle", lambda _library, _addr: bundle_kernel)
    resources = load_sample(name, sample_dir)
    refused = [problem.path for problem in refusals(resources)]
    left = [(field, path) for field, path in set_fields(resources) if not _within(path, refused)]
    # What is refused is left out of the build, which must then read everything else.
    buildable = resources
    for path in refused:
        buildable = _without(buildable, path)
    reads = fields_the_build_reads(buildable, monkeypatch, sample_dir)
    ignored = [path for field, path in left if field not in reads]
    assert not ignored, f"set, but neither used by the builder nor refused: {ignored}"


def _without(section: Any, path: KeyPath) -> Any:
    """`section` with the field at `path` back at its default (a list item: the whole list);
    for the refused implicit console, the device is left out instead (its field set)."""
    if path == ("disable_implicit_console",):
        return attrs.evolve(section, disable_implicit_console=True)
    name = str(path[0])
    if len(path) == 1 or not attrs.has(type(getattr(section, name))):
        return attrs.evolve(section, **{name: _default(attrs.fields_dict(type(section))[name])})
    return attrs.evolve(section, **{name: _without(getattr(section, name), path[1:])})


def _within(path: KeyPath, refused: list[KeyPath]) -> bool:
    return any(path[: len(prefix)] == prefix for prefix in refused)
