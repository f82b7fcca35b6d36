"""`unetsep train`: the seed architecture, the run directory, resume after SIGKILL, bad data."""
from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf

from conftest import ENV, unetsep

SEED_LAYERS = (
    ["mix"]
    + [f"enc{i}_{p}" for i in range(1, 7) for p in ("conv", "bn", "lrelu")]
    # dropout after the first and third upsampling
    + [f"dec{i}_{p}" for i in range(1, 6) for p in ("deconv", "relu") + (("dropout",) if i in (1, 3) else ())
       + ("skip",)]
    + ["mask", "stem"]
)


def test_seed_model_is_the_seed_architecture():
    keras = pytest.importorskip("keras")
    from unetsep.train.model import build_unet, preset

    model = build_unet(preset("seed"))
    names = [layer.name for layer in model.layers]
    assert names == SEED_LAYERS
    convs = [model.get_layer(f"enc{i}_conv") for i in range(1, 7)]
    assert [c.filters for c in convs] == [16, 32, 64, 128, 256, 512]
    assert [model.get_layer(f"dec{i}_deconv").filters for i in range(1, 6)] == [256, 128, 64, 32, 16]
    assert [model.get_layer(n).rate for n in ("dec1_dropout", "dec3_dropout")] == [0.5, 0.5]
    assert model.get_layer("mask").filters == 1
    assert model.input_shape == (None, 64, 1) and model.output_shape == (None, 64, 1)
    assert isinstance(model.get_layer("enc1_conv"), keras.layers.Conv1D)
    assert isinstance(model.get_layer("mask"), keras.layers.Conv1DTranspose)


def test_run_directory(tiny_run):
    for name in ("model.keras", "config.json", "history.csv", "loss.png"):
        assert (tiny_run / name).is_file(), name
    rows = list(csv.DictReader(open(tiny_run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["val_loss"]) > 0 for r in rows)
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["frame"] == 64 and cfg["target"] == "drums"


def test_sigkill_then_same_command_resumes(dataset, tmp_path):
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "unetsep.cli", "train", "--data", str(dataset), "--preset", "tiny",
           "--epochs", "4", "--steps", "15", "--batch-size", "256", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoint" / "epoch-0002.keras").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.keras").exists()
    # Resumed with --epochs 2 there is nothing left to train: the model it writes is the one it
    # loaded, which must be epoch 2's checkpoint (not fresh or --init weights under a resume message).
    import keras
    import numpy as np

    from unetsep.train import model as _registers_the_layers  # noqa: F401

    two = [*cmd[:cmd.index("--epochs") + 1], "2", *cmd[cmd.index("--epochs") + 2:]]
    out = subprocess.run(two, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "after epoch 2" in out.stdout, out.stderr
    want = keras.models.load_model(run / "checkpoint" / "epoch-0002.keras", compile=False).get_weights()
    got = keras.models.load_model(run / "model.keras", compile=False).get_weights()
    assert len(got) == len(want) > 0 and all(np.array_equal(a, b) for a, b in zip(got, want))
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout and "after epoch 2" in out.stdout
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert (run / "model.keras").is_file()
    assert (run / "best.keras").is_file()  # the lowest validation loss's epoch, kept apart


def test_mirrored_strategy_on_two_logical_cpus(dataset, tmp_path):
    proc = unetsep("train", "--data", dataset, "--preset", "tiny", "--epochs", 1, "--steps", 4,
                   "--batch-size", 128, "--strategy", "mirrored", "--cpu-devices", 2,
                   "--out", tmp_path / "m")
    assert "2 replicas" in proc.stdout + proc.stderr
    assert (tmp_path / "m" / "model.keras").is_file()


def _one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_data_folders(dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(unetsep("train", "--data", tmp_path / "empty", "--out", tmp_path / "r",
                            check=False), "MUSDB")
    _one_line_error(unetsep("train", "--data", dataset, "--target", "cowbell", "--out",
                            tmp_path / "r", check=False), "cowbell")
    # A copy whose drums stems are gone, and one resampled to 22.05 kHz.
    import shutil
    for name in ("nodrums", "rate"):
        shutil.copytree(dataset, tmp_path / name)
    for f in (tmp_path / "nodrums").rglob("drums.wav"):
        f.unlink()
    _one_line_error(unetsep("train", "--data", tmp_path / "nodrums", "--out", tmp_path / "r",
                            check=False), "drums")
    for f in (tmp_path / "rate").rglob("*.wav"):
        x, _ = sf.read(f)
        sf.write(f, x[::2], 22050)
    _one_line_error(unetsep("train", "--data", tmp_path / "rate", "--out", tmp_path / "r",
                            check=False), "22050")


def test_init_fine_tunes_with_lookahead(stream_run, dataset, tmp_path):
    """--init starts a new run from a trained model's weights, layer by layer; the look-ahead
    may differ (its delays have no weights); a model of other widths is refused in one line."""
    keras = pytest.importorskip("keras")
    import numpy as np

    from unetsep.runtime.errors import UserError
    from unetsep.train.fit import copy_weights
    from unetsep.train.model import build_unet, preset

    ahead = build_unet(preset("tiny-stream", lookahead=64))
    copy_weights(stream_run, ahead)
    trained = keras.models.load_model(stream_run / "model.keras", compile=False)
    for layer in trained.layers:
        for a, b in zip(layer.get_weights(), ahead.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="enc1_conv"):
        copy_weights(stream_run, build_unet(preset("stream")))

    run = tmp_path / "ahead"
    line = ("train", "--data", dataset, "--preset", "tiny-stream", "--epochs", 1, "--steps", 2,
            "--lookahead", 64, "--lr", 1e-4, "--loss", "sdr", "--out", run)
    # A look-ahead that is not whole hops fails before the run folder says anything; the
    # corrected line then starts the run.
    bad = unetsep("train", "--data", dataset, "--preset", "tiny-stream", "--lookahead", 32, "--out", run,
                  check=False)
    assert bad.returncode != 0 and "whole number of hops" in bad.stderr
    assert not (run / "config.json").exists()
    r = unetsep(*line, "--init", stream_run)
    assert f"starting from the weights of {stream_run.resolve()}" in r.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lookahead"] == 64 and cfg["learning_rate"] == 1e-4 and cfg["loss"] == "sdr"
    with open(run / "history.csv") as f:
        (row,) = csv.DictReader(f)
    # In dB: an all-zero estimate scores ~0 on the SDR loss.
    assert abs(float(row["val_zero_estimate"])) < 0.01 and math.isfinite(float(row["val_loss"]))
    assert cfg["extra"]["init"] == str(stream_run.resolve())
    # Rerunning the line without --init keeps the run's start; another --init is refused.
    unetsep(*line)
    assert json.loads((run / "config.json").read_text())["extra"]["init"] == str(stream_run.resolve())
    other = unetsep(*line, "--init", tmp_path, check=False)
    assert other.returncode != 0 and "holds a run started from" in other.stderr
    other = unetsep(*[a for a in line if a not in ("--loss", "sdr")], check=False)
    assert other.returncode == 2 and "loss (sdr in the run, nmae here)" in other.stderr
    bad = unetsep("train", "--data", dataset, "--preset", "seed", "--lookahead", 64,
                  "--out", tmp_path / "x", check=False)
    assert bad.returncode != 0 and "--lookahead is for the streaming presets" in bad.stderr


def test_sdr_loss_is_the_negative_sdr_and_refused_where_it_cannot_work(dataset, tmp_path):
    """--loss sdr: per segment after the burn-in, 10 log10(|s - est|^2 / |s|^2) in dB, so an
    estimate's score does not depend on the song's level; refused with one line for the
    frame-by-frame seed and for an unknown name, before a run folder is written."""
    pytest.importorskip("keras")
    import numpy as np

    from unetsep.train.model import SegmentLoss

    rng = np.random.default_rng(0)
    stem = rng.normal(size=(2, 4096, 1)).astype("float32")
    mix = stem + rng.normal(size=(2, 4096, 1)).astype("float32")
    noise = rng.normal(size=stem.shape).astype("float32")
    loss = SegmentLoss(burn_in=1024, sdr=True)
    for gain in (1e-3, 1.0):
        y = np.concatenate([stem, mix], -1) * gain
        s2, m2 = (stem[:, 1024:] ** 2).sum((1, 2)), (mix[:, 1024:] ** 2).sum((1, 2))
        scores = []
        for scale in (0.1, 0.01):
            got = loss.call(y, (stem + scale * noise) * gain).numpy()
            n2 = ((scale * noise[:, 1024:]) ** 2).sum((1, 2))
            # The error, floored at -30 dB of the stem, both sides plus -30 dB of the mixture.
            want = 10 * np.log10((n2 + 1e-3 * s2 + 1e-3 * m2) / (s2 + 1e-3 * m2))
            np.testing.assert_allclose(got, want, atol=0.01)
            scores.append(got)
        assert np.all(scores[1] < scores[0] - 5)
        assert np.all(np.abs(SegmentLoss(1024, sdr=True, zero=True).call(y, stem).numpy()) < 0.01)
    for preset, name, message in (("seed", "sdr", "use a streaming preset"), ("stream", "l2", "invalid choice: 'l2'")):
        r = unetsep("train", "--data", dataset, "--preset", preset, "--loss", name, "--out", tmp_path / name,
                    check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert message in r.stderr.strip().splitlines()[-1] and not (tmp_path / name).exists()


def test_widen_keeps_the_output_and_trains_on(tmp_path):
    """train/widen.py: more GRU units, the same output (new units zeroed where the old path reads
    them), and the first training step gives the decoder weights from the new units a value."""
    import keras
    import numpy as np

    from unetsep.runtime.errors import UserError
    from unetsep.train.model import UNetConfig, build_unet, compile_unet, preset
    from unetsep.train.widen import main, widen

    cfg = preset("tiny-stream")
    model = build_unet(cfg)
    rng = np.random.default_rng(1)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3 if "variance" not in w.path
                       else np.abs(rng.standard_normal(w.shape)).astype("float32") + 0.5
                       for w in model.weights])
    keras.saving.save_model(model, tmp_path / "m.keras")
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert main([str(tmp_path / "m.keras"), "--config", str(tmp_path / "config.json"),
                 "--memory-units", "12", "--out", str(tmp_path / "wide")]) == 0
    wide_cfg = UNetConfig.from_json((tmp_path / "wide" / "config.json").read_text())
    wide = keras.models.load_model(tmp_path / "wide" / "model.keras", compile=False)
    assert wide_cfg.memory_units == 12 and wide.get_layer("memory").units == 12
    x = rng.standard_normal((2, 40 * cfg.frame, 1)).astype("float32") * 0.3
    out, wide_out = model.predict(x, verbose=0), wide.predict(x, verbose=0)
    assert np.abs(out).max() > 1e-3  # a model that outputs something to compare
    assert np.abs(wide_out - out).max() < 1e-5
    new = build_unet(wide_cfg)
    new.set_weights(wide.get_weights())
    compile_unet(new, wide_cfg)
    from_new_units = lambda: new.get_layer("dec1_up").get_weights()[0][:, 8:12]  # noqa: E731
    assert not from_new_units().any()
    x = rng.standard_normal((2, cfg.segment, 1)).astype("float32") * 0.3  # past the burn-in
    new.fit(x, np.concatenate([x * 0.5, x], axis=-1), batch_size=2, epochs=1, verbose=0)
    assert from_new_units().any()
    with pytest.raises(UserError, match="must be more than"):
        widen(model, cfg, 8)
