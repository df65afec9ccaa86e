"""The emulated host saved at its snapshot point and restored by later runs
(runner/emulated/snapshot.py).

The command-line tests need nothing; the others boot real emulated hosts from a copy of the
cached host image in their own directory, so that their saved states are theirs alone.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from runner import timings
from runner.emulated import host, snapshot
from runner.emulated.host import HARNESS_FAILURE, Outcome, Settings, run_in_host
from runner.emulated.image import HostImage, provision
from runner.emulated.qemu_command import qemu_command

SAVED = "emulated host saved for later runs"
RESTORED = "emulated host restored from its snapshot"
BOOTED = "emulated host booted"


FLAGS = ("-nodefaults", "-no-user-config", "-no-reboot")  # the options without a value


def devices(cmd: Sequence[str]) -> list[str]:
    """`cmd` as migration sees it: every option, but not what backs a device (a chardev's
    backend, a share's directory) nor where a saved state comes from."""
    seen = []
    options = iter(cmd[1:])
    for option in options:
        value = "" if option in FLAGS else next(options)
        if option == "-incoming":
            continue
        if option == "-chardev":
            value = next(part for part in value.split(",") if part.startswith("id="))
        if option == "-virtfs":
            parts = value.split(",")
            value = ",".join(p for p in parts if p.startswith(("mount_tag=", "readonly")))
        seen.append(f"{option} {value}")
    return seen


def command(
    tmp_path: Path,
    saved: snapshot.Plan | None,
    outputs: int = 0,
    writable: Sequence[str] = (),
    sockets: Sequence[str] = (),
) -> list[str]:
    image = HostImage(tmp_path / "kernel", tmp_path / "initramfs.gz")
    names = snapshot.OUTPUT_NAMES[:outputs]
    settings = Settings(outputs=tuple((name, io.BytesIO()) for name in names))
    pipes = [(name, 10 + i) for i, name in enumerate(("stdout", "stderr", *names, "events"))]
    paths = {name: tmp_path / f"{name}.sock" for name in sockets}
    passed = [fd for _, fd in pipes] + ([99] if saved and saved.restore else [])
    return qemu_command(image, settings, tmp_path, (list(writable), pipes, paths), saved, passed)


def test_a_restore_has_the_devices_of_the_host_that_was_saved(tmp_path: Path) -> None:
    # Saved by a run that used no output, share or stdin; restored by runs that use them.
    state = tmp_path / "snapshot-x.state"
    save = command(tmp_path, snapshot.Plan(state, restore=False))
    assert "-incoming" not in save
    uses = [
        {"outputs": 3, "writable": ["/a", "/b"], "sockets": ["stdin", "winsize"]},
        {"outputs": snapshot.OUTPUT_SLOTS, "writable": [f"/d{i}" for i in range(8)]},
        {"sockets": ["stdin"]},
    ]
    for use in uses:
        restore = command(tmp_path, snapshot.Plan(state, restore=True), **use)  # type: ignore[arg-type]
        assert restore[restore.index("-incoming") + 1] == "fd:99"
        assert devices(restore) == devices(save), use
    # Each used slot is backed by what the run gave it, the others by nothing.
    restore = command(tmp_path, snapshot.Plan(state, restore=True), outputs=1, writable=["/a"])
    assert "file,path=/proc/self/fd/12,id=out0" in restore
    assert "null,id=out1" in restore and "null,id=stdin" in restore
    shares = [restore[i + 1] for i, option in enumerate(restore) if option == "-virtfs"]
    assert shares[2].startswith("local,path=/a,mount_tag=rw0,")
    assert all(f"path={tmp_path}," in share for share in shares[3:])


def test_a_host_that_can_be_saved_boots_with_seabios_and_a_vmgenid(tmp_path: Path) -> None:
    save = command(tmp_path, snapshot.Plan(tmp_path / "s.state", restore=False))
    assert "-bios" not in save  # qboot hangs with a vmgenid device
    assert "vmgenid" in save
    assert save[save.index("-append") + 1].endswith(" vmrun.snapshot")
    plain = command(tmp_path, None, outputs=1, sockets=["stdin"])
    assert plain[plain.index("-bios") + 1] == "qboot.rom"
    assert "vmgenid" not in plain and "go" not in " ".join(plain)
    assert "vmrun.snapshot" not in plain[plain.index("-append") + 1]
    # Only the ports the run uses: none idle.
    assert "null," not in " ".join(plain)


def test_what_does_not_fit_the_slots_is_not_saved() -> None:
    assert snapshot.fits(snapshot.OUTPUT_NAMES[:2], snapshot.SHARE_SLOTS)
    assert not snapshot.fits((), snapshot.SHARE_SLOTS + 1)
    assert not snapshot.fits(snapshot.OUTPUT_NAMES[: snapshot.OUTPUT_SLOTS] + ("out8",), 0)
    assert not snapshot.fits(("other",), 0)  # a slot's name is fixed at the save


def test_the_state_file_is_keyed_by_all_that_shapes_the_host(tmp_path: Path) -> None:
    qemu = tmp_path / "qemu"
    qemu.write_bytes(b"a")
    image = HostImage(tmp_path / "one" / "kernel", tmp_path / "one" / "initramfs.gz")
    base = snapshot.state_file(image, str(qemu), 1, 4096, "multi")
    assert base.parent == image.kernel.parent
    others = [
        snapshot.state_file(image, str(qemu), 2, 4096, "multi"),
        snapshot.state_file(image, str(qemu), 1, 6144, "multi"),
        snapshot.state_file(image, str(qemu), 1, 4096, "single"),
        snapshot.state_file(
            HostImage(tmp_path / "two" / "kernel", tmp_path / "two" / "initramfs.gz"),
            str(qemu), 1, 4096, "multi",
        ),
    ]  # fmt: skip
    assert len({base.name, *(other.name for other in others)}) == 5
    assert snapshot.state_file(image, str(qemu), 1, 4096, "multi") == base
    time.sleep(0.01)
    qemu.write_bytes(b"another QEMU")  # an upgrade
    assert snapshot.state_file(image, str(qemu), 1, 4096, "multi") != base


def test_only_the_states_used_last_are_kept(tmp_path: Path) -> None:
    states = []
    for index in range(snapshot.KEPT + 2):  # in two host images' directories
        state = tmp_path / f"image{index % 2}" / f"snapshot-{index}.state"
        state.parent.mkdir(exist_ok=True)
        state.write_bytes(b"x")
        os.utime(state, (1000 + index, 1000 + index))
        states.append(state)
    snapshot.plan(states[0])  # used now: the newest
    snapshot._prune(tmp_path)
    # The oldest but the one just used are gone.
    assert [state.exists() for state in states] == [True, False, False] + [True] * (
        snapshot.KEPT - 1
    )


def test_a_restored_host_that_failed_before_its_job_is_forgotten(tmp_path: Path) -> None:
    state = tmp_path / "snapshot-x.state"
    for outcome, started_job, kept in [
        (Outcome(HARNESS_FAILURE, "ended"), False, False),
        (Outcome(HARNESS_FAILURE, "locked up"), True, True),  # its command may be to blame
        (Outcome(3), False, True),
    ]:
        state.write_bytes(b"x")
        host._forget_if_broken(state, outcome, started_job)
        assert state.exists() == kept


# The tests that boot.


@pytest.fixture
def own_image(own_copy: Callable[[HostImage], HostImage]) -> HostImage:
    """The cached host image, in a copy of this test's own."""
    return own_copy(provision())


def new_timeline(monkeypatch: pytest.MonkeyPatch) -> timings.Timeline:
    fresh = timings.Timeline()
    fresh.enable()
    monkeypatch.setattr(timings, "TIMELINE", fresh)
    return fresh


def run(image: HostImage, script: str, **settings: object) -> tuple[Outcome, str, str]:
    out, err = io.BytesIO(), io.BytesIO()
    outcome = run_in_host(
        image,
        ["sh", "-c", script],
        Settings(snapshot=True, timeout_s=300, **settings),
        out,
        err,  # type: ignore[arg-type]
    )
    return outcome, out.getvalue().decode(), err.getvalue().decode()


def phases(timeline: timings.Timeline) -> list[str]:
    return [phase for phase, _ in timeline.marks()]


def states(image: HostImage) -> list[Path]:
    return sorted(image.kernel.parent.glob("snapshot-*.state"))


CLOCK_AND_RANDOM = "date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo"


def test_later_runs_restore_the_saved_host_each_with_its_clock_and_randomness(
    own_image: HostImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = []
    timeline = new_timeline(monkeypatch)
    for run_index in range(3):
        outcome, out, err = run(own_image, CLOCK_AND_RANDOM)
        assert outcome.status == 0, (outcome, err)
        clock, random = out.split()
        assert abs(int(clock) - time.time()) < 5  # not the clock of the run that saved it
        said.append(random)
        if run_index == 0:
            assert phases(timeline)[:2] == [BOOTED, SAVED]
            (state,) = states(own_image)
            assert state.stat().st_mode & 0o777 == 0o600
        else:
            assert phases(timeline)[-1] == RESTORED
        timeline = new_timeline(monkeypatch)
    # A restored host reseeds its random numbers (vmgenid): each run's are its own.
    assert len(set(said)) == 3, said


def test_a_restore_uses_outputs_shares_and_stdin_that_the_save_did_not(
    own_image: HostImage, tmp_path: Path
) -> None:
    assert run(own_image, "true", writable_cwd=False)[0].status == 0  # saved here
    shared = tmp_path / "shared"
    shared.mkdir()
    sinks = [io.BytesIO(), io.BytesIO()]
    script = (
        f"echo a > /dev/$(basename $(dirname $(grep -l out0 /sys/class/virtio-ports/*/name)));"
        f"echo b > /dev/$(basename $(dirname $(grep -l out1 /sys/class/virtio-ports/*/name)));"
        f"echo written > {shared}/file; cat"
    )
    stdin = tmp_path / "stdin"
    stdin.write_text("from stdin\n")
    with open(stdin, "rb") as source:
        saved_stdin = os.dup(0)
        os.dup2(source.fileno(), 0)
        try:
            outcome, out, err = run(
                own_image,
                script,
                writable=(str(shared),),
                outputs=(("out0", sinks[0]), ("out1", sinks[1])),
                stdin="pass",
            )
        finally:
            os.dup2(saved_stdin, 0)
            os.close(saved_stdin)
    assert outcome.status == 0, (outcome, err)
    assert out == "from stdin\n"
    assert [sink.getvalue() for sink in sinks] == [b"a\n", b"b\n"]
    assert (shared / "file").read_text() == "written\n"


def test_a_run_whose_stdin_is_idle_reads_nothing_from_the_idle_port(own_image: HostImage) -> None:
    for _ in range(2):  # saved, then restored: stdin is /dev/null, never the idle port
        outcome, out, err = run(own_image, "cat; echo end")
        assert (outcome.status, out) == (0, "end\n"), err


def test_a_state_qemu_cannot_load_is_booted_again_and_saved_anew(
    own_image: HostImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(own_image, "true")[0].status == 0
    (state,) = states(own_image)
    damaged = bytearray(state.read_bytes())
    damaged[64:4096] = b"\xa5" * (4096 - 64)
    state.write_bytes(bytes(damaged))
    timeline = new_timeline(monkeypatch)
    outcome, out, err = run(own_image, "echo once")
    assert (outcome.status, out) == (0, "once\n"), err  # run once, not twice
    assert phases(timeline)[:2] == [BOOTED, SAVED]
    assert states(own_image) == [state] and state.read_bytes() != bytes(damaged)


def test_a_host_with_more_shares_than_slots_boots_and_is_not_saved(
    own_image: HostImage, tmp_path: Path
) -> None:
    dirs = []
    for index in range(snapshot.SHARE_SLOTS + 1):
        (tmp_path / f"d{index}").mkdir()
        dirs.append(str(tmp_path / f"d{index}"))
    outcome, _, err = run(own_image, f"echo x > {dirs[-1]}/f", writable=tuple(dirs))
    assert outcome.status == 0, err
    assert (tmp_path / f"d{snapshot.SHARE_SLOTS}" / "f").read_text() == "x\n"
    assert states(own_image) == []


def test_a_host_booted_to_be_saved_takes_no_firmware_from_the_user_s_directory(
    own_image: HostImage, tmp_path: Path
) -> None:
    # SeaBIOS starts a host that is saved; QEMU looks for it in its working directory first.
    for name in ("bios-256k.bin", "bios.bin", "linuxboot_dma.bin", "kvmvapic.bin"):
        (tmp_path / name).write_bytes(b"\xf4" * 65536)  # hlt, everywhere
    outcome, out, err = run(own_image, "echo booted")
    assert (outcome.status, out) == (0, "booted\n"), err
    assert len(states(own_image)) == 1
