"""The shipped models: the default (streaming, contract v2) and the seed (frame by frame, v1) load,
carry their contracts and separate through the real CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
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


def test_separate_output_formats(song, tmp_path):
    """--flac / --int16 / --int24 (demucs' choices) write what they say, with the float output's
    samples to their precision; samples beyond full scale (a song 12 dB too hot, as float WAV) are
    clipped to it, and counted in a warning; the default stays 32-bit float, unclipped."""
    x, rate = sf.read(song, dtype="float32")
    hot = tmp_path / "hot.wav"
    sf.write(hot, x * 4, rate, subtype="FLOAT")
    track = tmp_path / "{}" / "default" / "hot"
    proc = unetsep("separate", hot, "-o", tmp_path / "float")
    assert "beyond full scale" not in proc.stderr  # float keeps every sample
    ref = {n: sf.read(str(track).format("float") + f"/{n}.wav")[0] for n in ("drums", "no_drums")}
    assert sf.info(str(track).format("float") + "/drums.wav").subtype == "FLOAT"
    over = {n: int((np.abs(a) > 1).sum()) for n, a in ref.items()}
    assert over["no_drums"] > 0  # the test needs samples beyond full scale
    for args, suffix, fmt, subtype, step in ((["--flac"], "flac", "FLAC", "PCM_24", 2 ** -23),
                                             (["--int16"], "wav", "WAV", "PCM_16", 2 ** -15),
                                             (["--int24"], "wav", "WAV", "PCM_24", 2 ** -23),
                                             (["--flac", "--int16"], "flac", "FLAC", "PCM_16", 2 ** -15)):
        out = "-".join(a.strip("-") for a in args)
        proc = unetsep("separate", hot, "-o", tmp_path / out, *args)
        for n, a in ref.items():
            f = str(track).format(out) + f"/{n}.{suffix}"
            assert (sf.info(f).format, sf.info(f).subtype) == (fmt, subtype)
            got, r = sf.read(f)
            assert r == rate and got.shape == a.shape
            assert np.abs(got - np.clip(a, -1, 1)).max() <= step  # clipped, never wrapped
            said = f"{n}.{suffix} were beyond full scale" in proc.stderr
            assert said == bool(over[n]) and (not said or f"warning: {over[n]} samples of " in proc.stderr)
    proc = unetsep("separate", hot, "--int16", "--int24", check=False)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    many = tmp_path / "many.wav"  # FLAC holds at most 8 channels: refused before any work
    sf.write(many, np.zeros((4410, 9), np.float32), rate)
    proc = unetsep("separate", many, "--flac", "-o", tmp_path / "many", check=False)
    assert proc.returncode == 2 and "drop --flac" in proc.stderr and not (tmp_path / "many").exists()


def test_demo(tmp_path):
    proc = unetsep("demo", "--seconds", 6, "-o", tmp_path)
    assert "drums SDR" in proc.stdout and "p50" in proc.stdout and "p99" in proc.stdout
    rendered, real = proc.stdout.strip().splitlines()[-2:]
    assert rendered.startswith("stems written to ") and real.startswith("on a real recording ("), proc.stdout
    folders = [Path(rendered.split("stems written to ")[1].split("/ (")[0]),
               Path(real.split("stems written to ")[1].rstrip("/"))]
    for folder in folders:
        assert folder.parent.parent == tmp_path
        assert {p.name for p in folder.iterdir()} == {"drums.wav", "no_drums.wav", "mixture.wav"}
    # the real recording (the 6 s MUSDB18 excerpt stempeg ships): scored, above its mixture (how far:
    # test_shipped_models_on_a_real_recording)
    sdr, base = (float(real.split(k)[1].split(" dB")[0]) for k in ("drums SDR ", "(the mixture "))
    assert np.isfinite(sdr) and sdr > base, real


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


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_shipped_models_on_a_real_recording(tmp_path):
    """The one real multitrack recording at hand offline: the 6 s MUSDB18 excerpt stempeg ships
    (recorded drums, mixed by people; nothing of it in training). The default must separate it well
    above the mixture and the seed, in float32 and int8 alike (the figures: models/default/MODEL.md,
    "On a real recording")."""
    import stempeg

    (tmp_path / "real" / "test").mkdir(parents=True)
    shutil.copy(stempeg.example_stem_path(), tmp_path / "real" / "test")
    out = tmp_path / "real.json"
    unetsep("evaluate", "--data", tmp_path / "real", "--model", "default", "--model", "seed",
            "--model", SHIPPED / "drums.int8.onnx", "--json", out)
    (track,) = json.loads(out.read_text())["tracks"]
    sdr = {name: s["sdr"] for name, s in track["scores"].items()}
    assert sdr["default"] > sdr["mixture"] + 6.0, sdr
    assert sdr["default"] > sdr["seed"] + 1.0, sdr
    assert abs(sdr["default-int8"] - sdr["default"]) < 0.5, sdr
