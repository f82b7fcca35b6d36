"""The shipped models: the default (streaming, contract v2) and the seed (frame by frame, v1) load,
carry their contracts and separate through the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import unetsep

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "default"
SEED = SHIPPED.with_name("seed")


def test_shipped_model_and_card():
    from unetsep.runtime.backends import default_model_path, load_model

    assert default_model_path() == SHIPPED / "drums.onnx"
    m = load_model(default_model_path())
    assert (m.info.frame, m.info.sample_rate, m.info.target, m.info.preset) == (64, 44100, "drums", "stream")
    assert m.info.streaming and m.info.states and m.info.lookahead == 0
    seed = load_model(SEED / "drums.onnx")
    assert seed.info.preset == "seed" and not seed.info.streaming
    for folder in (SHIPPED, SEED):
        report = json.loads((folder / "report.json").read_text())
        assert report["passed"] and all(not r["reason"] for r in report["formats"] if r["written"])
        assert (folder / "MODEL.md").is_file()
    # Every format the default's report says it wrote ships beside it (the seed's card names the
    # ones it leaves out).
    report = json.loads((SHIPPED / "report.json").read_text())
    assert all((SHIPPED / f"drums.{r['format']}").is_file() for r in report["formats"] if r["written"])


def test_separate_with_the_shipped_model(song, tmp_path):
    unetsep("separate", song, "-o", tmp_path)  # no --model: the shipped one
    d, rate = sf.read(tmp_path / "default" / song.stem / "drums.wav")
    nd, _ = sf.read(tmp_path / "default" / song.stem / "no_drums.wav")
    x, _ = sf.read(song)
    assert rate == 44100 and d.shape == x.shape
    assert np.abs(d + nd - x).max() < 1e-5
    assert 0 < np.sqrt(np.mean(d ** 2)) < np.sqrt(np.mean(x ** 2))


def test_demo(tmp_path):
    proc = unetsep("demo", "--seconds", 6, "-o", tmp_path)
    assert "drums SDR" in proc.stdout and "p50" in proc.stdout and "p99" in proc.stdout
    folder = Path(proc.stdout.strip().splitlines()[-1].split("stems written to ")[1].split("/ (")[0])
    assert {p.name for p in folder.iterdir()} == {"drums.wav", "no_drums.wav", "mixture.wav"}


def test_models_by_name(tmp_path):
    from unetsep.runtime.backends import resolve_model, shipped_models

    assert {"default", "seed"} <= set(shipped_models())
    assert resolve_model("seed") == SEED / "drums.onnx"
    assert resolve_model("default") == SHIPPED / "drums.onnx"
    assert resolve_model(None) == SHIPPED / "drums.onnx"
    proc = unetsep("bench", "--model", "nosuch", "--frames", 10, check=False)
    assert proc.returncode == 2 and "no shipped model named 'nosuch' (shipped: default, seed" in proc.stderr
    proc = unetsep("bench", "--model", "default", "--frames", 50, "--batch", 1)
    assert "default" in proc.stdout
