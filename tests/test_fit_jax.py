"""Training away from TensorFlow (train/fit_jax.py, train/bundle.py): pack here, fit, finish, export.

CI has no JAX, so `fit` runs here on Keras' TensorFlow backend; the same code ran on JAX on the lent
GPU (models/default/MODEL.md). The bundle's audio is checked against the songs it came from."""
from __future__ import annotations

import csv
import json
import os
import shutil
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


def test_pack_keeps_the_songs_within_quantisation(packed, dataset, stream_run):
    manifest, pairs = bundle.load(packed)
    assert manifest["bits"] == 9 and len(pairs) == len(manifest["songs"]) >= 2
    assert (packed / "config.json").is_file() and manifest["source"] == str(dataset.resolve())
    from unetsep.export.convert import load_run

    with np.load(packed / "init.npz") as init:  # the start weights are the --init run's
        for want, k in zip(load_run(stream_run)[0].get_weights(), sorted(init.files, key=lambda f: int(f[4:]))):
            np.testing.assert_array_equal(init[k], want)
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
    proc = fit_jax("fit", "--bundle", packed, "--out", out, "--minutes", 0.5, "--steps", 1,
                   "--batch-size", 2, "--threads", 1, "--lr", 1e-2, "--lr-final", 1e-3)
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3 and "zero_estimate" in rows[0] and "done:" in proc.stdout
    lrs = [float(r["lr"]) for r in rows]  # the cosine over the time box, read back from Adam
    assert lrs[0] == pytest.approx(1e-2, rel=0.05) and lrs[-1] < 0.5e-2
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert [int(r["steps"]) for r in rows] == list(range(1, len(rows) + 1))
    assert (out / "half.npz").is_file()
    fit = json.loads((out / "fit.json").read_text())
    assert fit["epochs"] == len(rows) and fit["batch_size"] == 2
    with np.load(packed / "init.npz") as start, np.load(out / "latest.npz") as trained:
        assert len(trained.files) == len(start.files)
        assert any(not np.array_equal(trained[k], start[k]) for k in start.files)
    run = tmp_path / "run"
    fit_jax("finish", "--bundle", packed, "--weights", out / "latest.npz", "--history",
            out / "history.csv", "--out", run)  # fit.json found beside the weights
    from unetsep.export.convert import load_run

    model, cfg = load_run(run)
    assert cfg.batch_size == 2 and cfg.extra["fit"]["epochs"] == len(rows)
    packed_songs = json.loads((packed / "manifest.json").read_text())["songs"]
    assert cfg.extra["bundle"]["songs"] == len(packed_songs) > 0  # what it saw, not the config's data
    # The top level describes this run; the `unetsep train` run it continues sits under "continues".
    started = json.loads((packed / "config.json").read_text())
    assert cfg.epochs == len(rows) and cfg.extra["seed"] == fit["seed"] and cfg.extra["steps_per_epoch"] == 1
    assert cfg.extra["data"] == json.loads((packed / "manifest.json").read_text())["source"]
    assert cfg.extra["train_tracks"] == len(packed_songs) and cfg.extra["trained_on"] == "train/fit_jax.py"
    before = cfg.extra["continues"]
    assert before["trained_on"] != "train/fit_jax.py" and before["epochs"] == started["epochs"]
    assert before["train_tracks"] == started["extra"]["train_tracks"] and "continues" not in before
    assert (run / "loss.png").stat().st_size > 0 and (run / "history.csv").is_file()
    with np.load(out / "latest.npz") as trained:
        for got, k in zip(model.get_weights(), sorted(trained.files, key=lambda f: int(f[4:]))):
            np.testing.assert_array_equal(got, trained[k])
    assert not [p for p in os.listdir(out) if "tmp" in p]


def test_fit_killed_resumes_where_its_time_box_stood(packed, tmp_path):
    """SIGKILL mid-fit, then the same line again: the run goes on from its last epoch (weights,
    Adam's state, the cosine's place, the history), not from the start; a finished run or other
    settings are refused."""
    import signal
    import time

    out = tmp_path / "fit"
    line = ["fit", "--bundle", packed, "--out", out, "--minutes", 0.6, "--steps", 1,
            "--batch-size", 2, "--threads", 1, "--lr", 1e-2, "--lr-final", 1e-3]
    proc = subprocess.Popen([sys.executable, "-m", "unetsep.train.fit_jax", *map(str, line)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    from unetsep.train.fit_jax import _read_resume

    def state() -> dict:
        return _read_resume(out / "resume.npz")[0] if (out / "resume.npz").is_file() else {"rows": []}

    while time.time() < deadline and proc.poll() is None and len(state()["rows"]) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = state()
    assert not (out / "fit.json").exists() and 2 <= len(before["rows"])
    done = fit_jax(*line)
    assert f"resuming {out} after epoch {len(before['rows'])}" in done.stdout
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))  # numbering goes on
    assert [int(r["steps"]) for r in rows] == list(range(1, len(rows) + 1))
    assert rows[:len(before["rows"])] == [{k: str(v) for k, v in r.items()} for r in before["rows"]]
    resumed_at = float(rows[len(before["rows"])]["seconds"])
    assert resumed_at > float(before["rows"][-1]["seconds"])  # the time box counts the time spent
    lrs = [float(r["lr"]) for r in rows]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))  # one cosine, not a restart at --lr
    fit = json.loads((out / "fit.json").read_text())
    assert fit["resumed_after_epochs"] == [len(before["rows"])] and fit["epochs"] == len(rows)
    _, _, adam = _read_resume(out / "resume.npz")  # Adam counted every step, both starts
    assert int(adam[0]) == int(rows[-1]["steps"]) > int(before["rows"][-1]["steps"])
    refused(*line, says="finished fit")
    other = [a if a != 1e-2 else 5e-3 for a in line]
    other[other.index(out)] = tmp_path / "other"
    (tmp_path / "other").mkdir()
    shutil.copy(out / "resume.npz", tmp_path / "other" / "resume.npz")
    refused(*other, says="other lr")


def refused(*args, says: str) -> None:
    proc = fit_jax(*args, check=False)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_bad_input_is_refused_in_one_line(tmp_path, packed, dataset, tiny_run, stream_run):
    refused("fit", "--bundle", tmp_path, "--out", tmp_path / "o", "--minutes", 1, says="is not a bundle")
    refused("pack", "--data", dataset, "--config", tiny_run / "config.json", "--out", tmp_path / "b",
            says="trains streaming presets")  # the frame U-Net has no segments to train on
    refused("pack", "--data", dataset, "--config", tiny_run, "--out", tmp_path / "b",
            says="is not a run's config.json")
    refused("pack", "--data", dataset, "--config", stream_run / "config.json", "--out", packed,
            says="is not empty")
    refused("pack", "--data", dataset, "--config", stream_run / "config.json", "--init",
            tiny_run / "model.keras", "--out", tmp_path / "b2", says="cannot start a model")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, np.zeros(3))
    refused("finish", "--bundle", packed, "--weights", wrong, "--out", tmp_path / "r",
            says="does not fit this model")
    assert not (tmp_path / "r" / "model.keras").exists()


def test_finished_config_describes_its_run_and_keeps_the_one_it_continues(tmp_path, monkeypatch):
    """finish's config: this fit at the top (batch, rates, loss, epochs, seed, its songs' folder as
    an absolute path), the `unetsep train` run it continues whole under extra["continues"]."""
    from dataclasses import replace

    from unetsep.train.config import preset
    from unetsep.train.fit_jax import finished_config

    (tmp_path / "songs").mkdir()
    monkeypatch.chdir(tmp_path)
    old = replace(preset("stream"), epochs=14, loss="nmae",
                  extra={"data": "/old/data", "seed": 1, "train_tracks": 72, "trained_on": "real"})
    fit = {"seed": 5, "epochs": 7, "steps_per_epoch": 50, "batch_size": 256, "lr": 2e-4, "loss": "sdr"}
    cfg = finished_config(old, fit, {"songs": 3, "source": "songs"})  # relative, as pack was given
    assert (cfg.batch_size, cfg.learning_rate, cfg.loss, cfg.epochs) == (256, 2e-4, "sdr", 7)
    assert cfg.extra["data"] == str(tmp_path.resolve() / "songs") and cfg.extra["seed"] == 5
    assert cfg.extra["continues"] == {"data": "/old/data", "seed": 1, "train_tracks": 72, "trained_on": "real",
                                      "epochs": 14, "batch_size": 8, "learning_rate": 1e-3,
                                      "lr_final": None, "loss": "nmae"}
    gone = finished_config(old, fit, {"songs": 3, "source": "/no/such/folder"})
    assert gone.extra["data"] == "/old/data"  # export checks against data it can read
    scratch = finished_config(old, {**fit, "scratch": True}, {"songs": 3, "source": "songs"})
    assert scratch.extra["init"] is None and "continues" not in scratch.extra
