"""Fuzz `separate`: 200 seeded random or mangled WAV, FLAC and ONNX files. Each one ends with exit
2 and one line (or exit 0 where the bytes happen to decode), never a traceback.

The 200 cases run in this process through `unetsep.cli.main` (a process start per case would cost
minutes); a handful go through the real console entry point too.
"""
from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import soundfile as sf

from conftest import unetsep
from test_reliability import run_main

CASES = 200


def mangle(blob: bytes, rng: random.Random) -> bytes:
    """One of: random bytes, a truncation, flipped header bytes, flipped bytes anywhere, a header
    field (a chunk size, a channel count, a rate) set to an extreme, a chunk repeated."""
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600)))
    if kind == 1:
        return blob[: rng.randrange(0, len(blob))]
    b = bytearray(blob)
    if kind == 2:
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(min(64, len(b)))] = rng.randrange(256)
    elif kind == 3:
        for _ in range(rng.randrange(1, 32)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 4:
        at = rng.choice([4, 16, 20, 22, 24, 28, 32, 34, 40]) if len(b) > 44 else 0
        value = rng.choice([0, 1, 2, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
        b[at:at + 4] = struct.pack("<I", value)
    else:
        i, n = rng.randrange(len(b)), rng.randrange(1, 200)
        b[i:i] = b[i:i + n] * rng.randrange(1, 4)
    return bytes(b)


@pytest.fixture(scope="module")
def seeds(exported, song, tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("fuzzseed")
    x, rate = sf.read(song, dtype="float32")
    x = x[: rate // 5]  # 0.2 s keeps each case fast
    sf.write(root / "s.wav", x, rate, subtype="PCM_16")
    sf.write(root / "s.flac", x, rate)
    return {"wav": (root / "s.wav").read_bytes(), "flac": (root / "s.flac").read_bytes(),
            "onnx": (exported / "drums.onnx").read_bytes()}


def check(code, stderr: str, what: str) -> None:
    assert "Traceback" not in stderr, f"{what}:\n{stderr}"
    assert code in (0, 2), f"{what}: exit {code}\n{stderr}"
    lines = [line for line in stderr.strip().splitlines() if "warning:" not in line]
    if code == 2:
        assert len(lines) == 1, f"{what}:\n{stderr}"


def cases(seeds: dict[str, bytes], folder: Path):
    rng = random.Random(2014)
    kinds = ["wav", "flac", "onnx"]
    for i in range(CASES):
        kind = kinds[i % 3]
        path = folder / f"f{i:03d}.{kind}"
        path.write_bytes(mangle(seeds[kind], rng))
        yield kind, path


def test_fuzz_separate_in_process(seeds, exported, tmp_path):
    onnx = exported / "drums.onnx"
    good = tmp_path / "good.wav"
    good.write_bytes(seeds["wav"])
    outcomes = {0: 0, 2: 0}
    for kind, path in cases(seeds, tmp_path):
        if kind == "onnx":
            argv = ["separate", good, "--model", path]
        else:
            argv = ["separate", path, "--model", onnx]
        try:
            code, err = run_main(*argv, "--provider", "cpu", "-o", tmp_path / "out")
        except Exception as e:  # noqa: BLE001  the test's point: nothing escapes as a traceback
            raise AssertionError(f"{path.name} ({kind}) raised {type(e).__name__}: {e}") from e
        check(code, err, f"{path.name} ({kind})")
        outcomes[code] += 1
    assert outcomes[2] > CASES // 2, outcomes  # most mangled files are refused, not "separated"
    leftovers = [p for p in (tmp_path / "out").rglob(".*")] if (tmp_path / "out").exists() else []
    assert leftovers == []


def test_fuzz_a_few_through_the_console_script(seeds, exported, tmp_path):
    chosen = [c for i, c in enumerate(cases(seeds, tmp_path)) if i in (0, 1, 2, 7, 11)]
    for kind, path in chosen:
        model = path if kind == "onnx" else exported / "drums.onnx"
        audio = tmp_path / "good.wav" if kind == "onnx" else path
        if kind == "onnx":
            audio.write_bytes(seeds["wav"])
        proc = unetsep("separate", audio, "--model", model, "--provider", "cpu", "-o", tmp_path / "o",
                       check=False, timeout=120)
        check(proc.returncode, proc.stderr, f"{path.name} ({kind})")
