"""Debian packages as data: what is fetched is recorded, and the record spares apt later."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from runner.guest import debian


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMRUN_CACHE", str(tmp_path))
    return tmp_path


def test_fetch_records_what_it_downloaded(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"a package"
    sha = hashlib.sha256(data).hexdigest()
    uri = f"'http://deb.example/pool/p_1_amd64.deb' p_1_amd64.deb {len(data)} SHA256:{sha}\n"
    calls: list[tuple[str, ...]] = []

    def apt(*args: str) -> str:
        calls.append(args)
        return uri

    def download(url: str, target: Path, size: int, sha256: str, label: str) -> None:
        target.write_bytes(data)

    monkeypatch.setattr(debian, "_apt", apt)
    monkeypatch.setattr(debian, "_download", download)
    path = debian.fetch("p")
    assert path == cache / "debs" / "p_1_amd64.deb"
    info = path.stat()
    assert json.loads((cache / "debs" / "p.json").read_text()) == {
        "file": "p_1_amd64.deb", "size": len(data), "sha256": sha,
        "stat": [info.st_size, info.st_mtime_ns],
    }  # fmt: skip
    assert debian.fetch("p") == path
    assert len(calls) == 1  # the second fetch used the record, not apt


def test_a_record_whose_file_changed_is_fetched_again(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cache / "debs").mkdir()
    (cache / "debs" / "p.json").write_text('{"file": "p.deb", "size": 5, "sha256": "x"}')
    (cache / "debs" / "p.deb").write_bytes(b"123")
    monkeypatch.setattr(debian, "_fetch_from_apt", lambda name: (cache / "debs" / "p.deb", 3, "y"))
    assert debian.fetch("p") == cache / "debs" / "p.deb"
    assert json.loads((cache / "debs" / "p.json").read_text())["size"] == 3


def test_depends_is_recorded(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["linux-image-amd64\n  Depends: linux-image-6.1.0-9-amd64\n"])
    monkeypatch.setattr(debian, "_apt", lambda *args: next(answers))
    assert debian.depends_of("linux-image-amd64") == "linux-image-6.1.0-9-amd64"
    assert debian.depends_of("linux-image-amd64") == "linux-image-6.1.0-9-amd64"


def test_missing_apt_says_what_is_needed(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(cache))
    with pytest.raises(debian.PackageError) as info:
        debian.fetch("busybox-static")
    assert str(info.value) == (
        "`apt-get` is not available: vmrun fetches Debian packages with apt (Debian and Ubuntu "
        "hosts); or set kernel.path in the VM file to a kernel image you have"
    )


def test_offline_a_missing_package_is_named_never_downloaded(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As inside the emulated host, which has no network: apt still says where the package
    # is, but nothing is downloaded, and the message says how to get it.
    uri = "'http://deb.example/pool/p_1_amd64.deb' p_1_amd64.deb 9 SHA256:" + "0" * 64 + "\n"
    monkeypatch.setattr(debian, "_apt", lambda *args: uri)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setenv(debian.OFFLINE_ENV, "1")
    with pytest.raises(debian.PackageError) as info:
        debian.fetch("p")
    assert str(info.value) == (
        f"p is not in vmrun's cache ({cache / 'debs'}), and there is no network here "
        "(VMRUN_OFFLINE is set, as inside the emulated host): run `vmrun run` outside the "
        "emulated host, which provisions what a VM needs before it enters, or set "
        "kernel.path in the VM file to a kernel you have"
    )
    assert list((cache / "debs").iterdir()) == []


def test_a_download_says_so_once(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("no network"))
    with pytest.raises(pytest.fail.Exception):
        debian._download("http://x/p.deb", cache / "p.deb", 2_500_000, "0" * 64, "p")
    assert capsys.readouterr().err.startswith(f"vmrun: downloading p (2.5 MB) into {cache}\n")


def _recorded(cache: Path, data: bytes) -> Path:
    """A fetched .deb holding `data`, with its record."""
    (cache / "debs").mkdir(exist_ok=True)
    deb = cache / "debs" / "p.deb"
    deb.write_bytes(data)
    debian._remember(cache / "debs" / "p.json", deb, len(data), hashlib.sha256(data).hexdigest())
    return deb


def test_a_deb_changed_in_place_is_hashed_again_and_fetched_again(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deb = _recorded(cache, b"the real package")
    fetched: list[str] = []

    def from_apt(name: str) -> tuple[Path, int, str]:
        fetched.append(name)
        deb.write_bytes(b"the real package")
        return deb, 16, hashlib.sha256(b"the real package").hexdigest()

    monkeypatch.setattr(debian, "_fetch_from_apt", from_apt)
    assert debian.fetch("p") == deb and fetched == []  # unchanged: the record is enough
    deb.write_bytes(b"a planted packag")  # the same size, a new mtime
    assert debian.fetch("p") == deb
    assert fetched == ["p"]
    assert deb.read_bytes() == b"the real package"


def test_verified_checks_the_sha256_now(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb = _recorded(cache, b"the real package")
    assert debian.verified("p") == deb
    # Changed with its stat kept as recorded, so that only a new hash can tell.
    info = deb.stat()
    deb.write_bytes(b"a planted packag")
    os.utime(deb, ns=(info.st_atime_ns, info.st_mtime_ns))
    with pytest.raises(debian.PackageError, match="is not the package apt described"):
        debian.verified("p")
