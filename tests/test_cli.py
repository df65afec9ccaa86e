"""The `vmrun` command line: exit statuses and output, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.schema import schema_text
from runner.host_kvm import kvm_status

ROOT = Path(__file__).resolve().parents[1]
DEV = str(ROOT / "configs" / "dev.toml")


def vmrun(*args: str) -> subprocess.CompletedProcess[str]:
    # Generous: `run` boots the emulated host where /dev/kvm cannot boot Linux.
    result = subprocess.run(
        [sys.executable, "-m", "runner", *args], capture_output=True, text=True, timeout=600
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def bad_file(tmp_path: Path) -> str:
    path = tmp_path / "bad.toml"
    path.write_text("[machine]\nvcpu_count = 0\nmem = 1\n")
    return str(path)


def test_validate_valid_file_exits_0() -> None:
    result = vmrun("validate", DEV)
    assert result.returncode == 0
    assert result.stdout == ""


def test_validate_reports_every_problem_and_exits_1(bad_file: str) -> None:
    result = vmrun("validate", DEV, bad_file)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{bad_file}:2:1: machine.vcpu_count: must be at least 1, got 0",
        f"{bad_file}:3:1: machine.mem: unknown key `mem`; did you mean `mem_size_mib`?",
    ]
    assert "1 of 2 file(s) invalid" in result.stderr


def test_validate_json_format(bad_file: str) -> None:
    result = vmrun("validate", "--format", "json", bad_file)
    assert result.returncode == 1
    records = json.loads(result.stdout)
    assert records[0] == {
        "file": bad_file,
        "line": 2,
        "column": 1,
        "path": "machine.vcpu_count",
        "message": "must be at least 1, got 0",
    }
    assert len(records) == 2


@pytest.mark.parametrize(
    "args",
    [[], ["validate"], ["show"], ["validate", "--format", "xml", DEV], ["schema", "--", "x"],
     ["run", DEV, "--"], ["run", "--timeout", "0", DEV],
     ["emulated-host", "--timeout", "-5", "--", "true"],
     ["emulated-host", "--hung-after", "nan", "--", "true"]],
)  # fmt: skip
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = vmrun(*args)
    assert result.returncode == 2
    assert "usage: vmrun" in result.stderr
    if "--timeout" in args or "--hung-after" in args:
        assert "must be a positive number of seconds" in result.stderr


def test_emulated_host_options_reach_their_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each option lands in its own field (a field added to Settings once shifted
    # --hung-after into another one, and a locked-up host then ran for 240 s).
    from runner import cli
    from runner.emulated import host, image

    seen: list[host.Settings] = []
    monkeypatch.setattr(image, "provision", lambda: None)

    def run_in_host(_image: object, _argv: object, settings: host.Settings, *_: object) -> object:
        seen.append(settings)
        return host.Outcome(0)

    monkeypatch.setattr(host, "run_in_host", run_in_host)
    monkeypatch.chdir(tmp_path)
    args = ["emulated-host", "--cpus", "3", "--memory", "1234", "--timeout", "77",
            "--writable", str(tmp_path), "--hung-after", "20", "--", "true"]  # fmt: skip
    assert cli.main(args) == 0
    (settings,) = seen
    assert (settings.cpus, settings.memory_mib, settings.timeout_s) == (3, 1234, 77)
    assert (settings.writable, settings.hung_after_s) == ((str(tmp_path),), 20)
    assert settings.writable_cwd is True


def test_schema_prints_the_published_schema() -> None:
    result = vmrun("schema")
    assert result.returncode == 0
    assert result.stdout == schema_text()


def test_show_fills_defaults_and_composes_the_command_line() -> None:
    result = vmrun("show", DEV)
    assert result.returncode == 0
    assert "# kernel command line: reboot=k panic=-1" in result.stdout
    assert "split_irqchip = false" in result.stdout
    assert 'format = "auto"' in result.stdout


def test_show_invalid_file_exits_1(bad_file: str) -> None:
    result = vmrun("show", bad_file)
    assert result.returncode == 1
    assert "machine.vcpu_count: must be at least 1" in result.stderr


def test_run_invalid_file_exits_125(bad_file: str) -> None:
    for args in (["run", bad_file], [bad_file]):
        result = vmrun(*args)
        assert result.returncode == 125
        assert f"{bad_file}:2:1: machine.vcpu_count" in result.stderr


FIRST_RUN_PHASES = [
    "vmrun: downloading linux-image-",
    "vmrun: downloading busybox-static",
    "vmrun: building the guest's initramfs",
    "vmrun: booting the VM",
]
EMULATED_PHASES = [
    "vmrun: downloading linux-image-",  # the emulated host's kernel
    "vmrun: building the emulated KVM host's image",
    "vmrun: booting the emulated KVM host",
]

# `vmrun run` only: the vmrun inside waits in the saved host (runner/emulated/waiting_inside.py).
INSIDE_PHASES = ["vmrun: packing the vmrun inside into the emulated KVM host's image"]


def as_a_new_user(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The README's command, `.venv/bin/vmrun ...` from the checkout, with `cache` as
    vmrun's cache (an empty directory is a new user's)."""
    script = Path(sys.executable).with_name("vmrun")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "runner"]
    env = {**os.environ, "VMRUN_CACHE": str(cache)}
    result = subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_the_readme_command_on_a_fresh_machine_and_again(tmp_path: Path) -> None:
    # `vmrun configs/dev.toml` with an empty cache: everything is downloaded and built on
    # this host before the emulated host (which has no network) is entered, each slow phase
    # says so on stderr; the second run is quiet. On /dev/kvm where it boots Linux, no
    # emulated host; else it says once that it uses one.
    status = kvm_status()
    for run in ("first", "second"):
        result = as_a_new_user(tmp_path / "cache", "configs/dev.toml")
        assert result.returncode == 0, result.stderr
        assert "hello from dev, Linux " in result.stdout
        said = [line for line in result.stderr.splitlines() if line.startswith("vmrun: ")]
        using = f"vmrun: {status.reason}; running in the emulated KVM host"
        assert said.count(using) == (0 if status.usable else 1), result.stderr
        phases = FIRST_RUN_PHASES + ([] if status.usable else EMULATED_PHASES + INSIDE_PHASES)
        for phase in set(phases):
            shown = [line for line in said if line.startswith(phase)]
            expected = phases.count(phase) if run == "first" else 0
            assert len(shown) == expected, (phase, result.stderr)


def test_the_emulated_host_on_a_fresh_machine(tmp_path: Path) -> None:
    result = as_a_new_user(tmp_path / "cache", "emulated-host", "--", "/bin/sh", "-c", "echo in")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "in\n"
    for phase in ("vmrun: downloading linux-image-", *EMULATED_PHASES):
        assert phase in result.stderr


def test_run_timings_name_every_phase(tmp_path: Path) -> None:
    result = vmrun("run", "--timings", DEV)
    assert result.returncode == 0, result.stderr
    report = result.stderr[result.stderr.index("vmrun: timings") :].splitlines()[1:]
    phases = [line.split(maxsplit=2)[2] for line in report]
    inside = " (inside the emulated host)" if not kvm_status().usable else ""
    # The emulated host boots (and is saved for later runs), or is restored from its state.
    host = phases[3 : phases.index(f"vmrun started{inside}")] if inside else []
    booted = ["emulated host booted", "emulated host saved for later runs"]
    restored = ["emulated host restored from its snapshot"]
    assert host in ((booted, restored) if inside else ([],)), result.stderr
    expected = [
        "vmrun started",
        "VM file loaded",
        *(["guest provisioned", *host] if inside else []),
        *([f"vmrun started{inside}", f"VM received{inside}"] if inside else []),
        "initramfs ready",
        "machine built",
        "kernel entered (vCPUs running)",
        "init started",
        "mounts done",
        "modules loaded",
        "root mounted",
        "workload started",
        "workload exited",
        "torn down",
        *(["emulated host ended"] if inside else []),
    ]
    assert phases == expected, result.stderr
    ends = [float(line.split()[0]) for line in report]
    assert ends == sorted(ends)


def test_run_workload_from_the_command_line() -> None:
    result = vmrun("run", "--host", "emulated", DEV, "--", "/bin/sh", "-c", "echo given; exit 3")
    assert result.returncode == 3, result.stderr
    assert "given" in result.stdout


def test_run_without_a_workload_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    result = vmrun(str(path))
    assert result.returncode == 125
    assert "has no [workload]; give one after `--`" in result.stderr


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ("[gpu]\n", "gpu", "virtio-gpu is not supported by this vmrun build"),
        ("snd_device = true\n", "snd_device", "virtio-snd is not supported"),
        ('[vsock]\ntsi = ["hijack_inet"]\n', "vsock.tsi", "Transparent Socket Impersonation"),
        (
            '[tee_config]\nworkload_id = "w"\ncpus = 1\nram_mib = 512\ntee = "sample"\n',
            "tee_config",
            "sample TEE guests are not supported by this vmrun build",
        ),
        (
            '[kernel_bundle]\nlibrary = "libkrunfw-absent.so.4"\n',
            "kernel_bundle.library",
            "libkrunfw-absent.so.4 is not installed on this host",
        ),
    ],
)
def test_run_refuses_what_this_build_cannot_do(
    tmp_path: Path, section: str, path: str, message: str
) -> None:
    vm = tmp_path / "vm.toml"
    vm.write_text(f'{section}\n[workload]\nexec = "/bin/true"\n')
    assert vmrun("validate", str(vm)).returncode == 0
    result = vmrun(str(vm))
    assert result.returncode == 125
    assert result.stderr.startswith(f"{vm}:")
    assert f": {path}: {message}" in result.stderr


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    result = vmrun("validate", str(tmp_path / "missing.toml"), str(tmp_path / "vm.yaml"))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'missing.toml'}:1:1: (document): "
        "cannot read the file: No such file or directory",
        f"{tmp_path / 'vm.yaml'}:1:1: (document): a VM file ends in .toml or .json",
    ]
