"""The virtqueue engine under libFuzzer (native/fuzz/virtqueue_fuzz.c), for a bounded time.

The harness is built with clang (libFuzzer, ASan, UBSan) into the test's temporary directory
and run on a copy of native/fuzz/corpus/virtqueue/ (the checked-in corpus is only read; add an
input there by hand) for VMRUN_FUZZ_SECONDS: 120 under CI, 20 otherwise. Reproducers kept in
native/fuzz/crashes/ are replayed first. Any finding fails the test with the end of the
fuzzer's output and the input in hex. Without clang or libFuzzer the test is skipped locally
and fails under CI (`CI` set), which must run every check: `bash scripts/setup` installs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from required_tools import unavailable

ROOT = Path(__file__).resolve().parents[2]
FUZZ_DIR = ROOT / "native" / "fuzz"
CORPUS = FUZZ_DIR / "corpus" / "virtqueue"
CRASHES = FUZZ_DIR / "crashes"  # reproducers of findings, replayed as more seeds
SOURCES = [
    FUZZ_DIR / "virtqueue_fuzz.c",
    ROOT / "native" / "virtio" / "virtqueue.c",
    ROOT / "native" / "kvm" / "vmrun_kvm.c",
]
INCLUDES = [f"-I{ROOT / 'native' / 'kvm'}", f"-I{ROOT / 'native' / 'virtio'}"]
CFLAGS = [
    "-g", "-O1", "-Wall", "-Wextra", "-Werror",
    "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
]  # fmt: skip
FUZZER_LIB = "libclang_rt.fuzzer-x86_64.a"
OUTPUT_TAIL_LINES = 60
HEX_LIMIT = 4096  # bytes of a crashing input shown
FINDING_PREFIXES = ("crash-", "leak-", "timeout-", "oom-", "slow-unit-")
# How the harness, the sanitizers and libFuzzer name a finding: shown even above the tail.
FINDING_MARKS = ("CONTRACT BROKEN", "ERROR: ", "runtime error:", "SUMMARY: ")


def fuzz_seconds() -> int:
    value = os.environ.get("VMRUN_FUZZ_SECONDS")
    if value:
        return int(value)
    return 120 if os.environ.get("CI") else 20


def _clang() -> str:
    clang = shutil.which("clang")
    if clang is None:
        unavailable("clang is not installed (Debian: apt-get install clang)")
    found = subprocess.run(
        [clang, f"-print-file-name={FUZZER_LIB}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not Path(found).is_file():
        unavailable(f"libFuzzer ({FUZZER_LIB}) is not installed (Debian: libclang-rt-14-dev)")
    return clang


def _hex(data: bytes) -> str:
    shown = data[:HEX_LIMIT]
    lines = [shown[i : i + 32].hex(" ") for i in range(0, len(shown), 32)]
    if len(data) > HEX_LIMIT:
        lines.append(f"... ({len(data)} bytes in all)")
    return "\n".join(lines)


def _report(output: str, status: int | str, findings: list[Path]) -> str:
    lines = output.splitlines()
    marks = [line for line in lines if any(mark in line for mark in FINDING_MARKS)]
    parts = [f"the virtqueue fuzzer ended with {status}:", *marks, "the end of its output:"]
    parts.extend(lines[-OUTPUT_TAIL_LINES:])
    for path in findings:
        data = path.read_bytes()
        parts.append(f"\n{path.name} ({len(data)} bytes; keep it in native/fuzz/crashes/):")
        parts.append(_hex(data))
    return "\n".join(parts)


@pytest.mark.fuzz
def test_virtqueue_engine_survives_the_fuzzer(tmp_path: Path) -> None:
    clang = _clang()
    binary = tmp_path / "virtqueue_fuzz"
    build = subprocess.run(
        [clang, *CFLAGS, *INCLUDES, *map(str, SOURCES), "-o", str(binary)],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"building the fuzzer failed:\n{build.stdout}{build.stderr}", pytrace=False)

    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    seeds = [str(corpus)]
    if CRASHES.is_dir():
        seeds.append(str(shutil.copytree(CRASHES, tmp_path / "crashes")))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    seconds = fuzz_seconds()
    command = [
        str(binary), f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=1024",
        "-max_len=4096", "-print_final_stats=1", f"-artifact_prefix={artifacts}/", *seeds,
    ]  # fmt: skip
    try:
        run = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=seconds + 300,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode()
        findings = sorted(artifacts.iterdir())
        status = f"no end {seconds + 300} s after starting"
        pytest.fail(_report(output, status, findings), pytrace=False)
    output = run.stdout + run.stderr
    findings = [p for p in sorted(artifacts.iterdir()) if p.name.startswith(FINDING_PREFIXES)]
    if run.returncode != 0 or findings:
        pytest.fail(_report(output, f"status {run.returncode}", findings), pytrace=False)
    # The statistics, shown with -rA or -s: runs, exec/s, corpus growth, peak memory.
    print("\n".join(line for line in output.splitlines() if "stat::" in line or "DONE" in line))
