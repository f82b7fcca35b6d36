"""Training away from TensorFlow (train/fit_jax.py, train/bundle.py): pack here, fit, finish, export.

CI has no JAX, so `fit` runs here on Keras' TensorFlow backend; the same code ran on JAX on the lent
GPU (models/default/MODEL.md). The bundle's audio is checked against the songs it came from."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from unetsep.train import bundle

from conftest import ENV


def fit_jax(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "unetsep.train.fit_jax", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"fit_jax {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def packed(dataset, stream_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    fit_jax("pack", "--data", dataset, "--config", stream_run / "config.json", "--init",
            stream_run / "model.keras", "--out", out, "--seconds", 4, "--bits", 9)
    return out


def test_pack_keeps_the_songs_within_quantisation(packed, dataset):
    manifest, pairs = bundle.load(packed)
    assert manifest["bits"] == 9 and len(pairs) == len(manifest["songs"]) >= 2
    assert (packed / "init.npz").is_file() and (packed / "config.json").is_file()
    for song, (tgt, rest) in zip(manifest["songs"], pairs):
        folder = next(p for p in (dataset / "train").iterdir() if p.name == song["track"])
        a = song["start_sample"]
        mix = sf.read(folder / "mixture.wav", dtype="float32")[0][a:a + len(tgt)].mean(axis=1)
        drums = sf.read(folder / "drums.wav", dtype="float32")[0][a:a + len(tgt)].mean(axis=1)
        assert len(tgt) == len(rest) == len(mix) == 4 * 44100
        # Each stem within half a 9-bit step of its own peak; the scale keeps the peak unclipped.
        for got, want, scale in ((tgt, drums, song["scales"][0]), (rest, mix - drums, song["scales"][1])):
            assert scale > np.abs(want).max()
            assert np.abs(got - want).max() <= 2.0 ** -9 * scale * 1.001
            assert np.abs(got - want).max() > 0  # quantised: the test would notice raw copies


def test_batch_is_an_exact_remix_delayed_by_lookahead(packed):
    _, pairs = bundle.load(packed)
    rng = np.random.default_rng(0)
    x, y = bundle.batch(pairs, 64 * 100, 5, 0, rng)
    assert x.shape == (5, 6400, 1) and y.shape == (5, 6400, 2) and x.dtype == np.float32
    assert np.array_equal(x[..., 0], y[..., 1])  # the input is the mixture the loss sees
    assert np.all(np.abs(y[..., 0]).max(axis=1) > 0) and not np.array_equal(y[..., 0], y[..., 1])
    x2, y2 = bundle.batch(pairs, 64 * 100, 5, 128, np.random.default_rng(0))
    assert np.array_equal(x2, x)  # same draws: same input, the target 128 samples late
    assert np.array_equal(y2[:, 128:, 0], y[:, :-128, 0]) and not y2[:, :128, 0].any()


def test_fit_then_finish_gives_a_run_that_exports(packed, tmp_path):
    out = tmp_path / "fit"
    proc = fit_jax("fit", "--bundle", packed, "--out", out, "--minutes", 0.05, "--steps", 2,
                   "--batch-size", 2, "--threads", 1, "--lr", 1e-2, "--lr-final", 1e-3)
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert rows and float(rows[0]["lr"]) == pytest.approx(1e-2, rel=0.05)
    assert "zero_estimate" in rows[0] and "done:" in proc.stdout
    fit = json.loads((out / "fit.json").read_text())
    assert fit["epochs"] == len(rows) and fit["batch_size"] == 2
    start = np.load(packed / "init.npz")
    with np.load(out / "latest.npz") as trained:
        assert len(trained.files) == len(start.files)
        assert any(not np.array_equal(trained[k], start[k]) for k in start.files)
    run = tmp_path / "run"
    fit_jax("finish", "--bundle", packed, "--weights", out / "latest.npz", "--history",
            out / "history.csv", "--fit", out / "fit.json", "--out", run)
    from unetsep.export.convert import load_run

    model, cfg = load_run(run)
    assert cfg.batch_size == 2 and cfg.extra["fit"]["epochs"] == len(rows)
    assert (run / "loss.png").stat().st_size > 0 and (run / "history.csv").is_file()
    with np.load(out / "latest.npz") as trained:
        for got, k in zip(model.get_weights(), sorted(trained.files, key=lambda f: int(f[4:]))):
            np.testing.assert_array_equal(got, trained[k])
    assert not [p for p in os.listdir(out) if "tmp" in p]


def test_bad_bundle_is_one_line(tmp_path):
    proc = fit_jax("fit", "--bundle", tmp_path, "--out", tmp_path / "o", "--minutes", 1, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "is not a bundle" in proc.stderr
