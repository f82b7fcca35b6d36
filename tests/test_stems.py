"""MUSDB18's own format: `.stem.mp4` files (mixture, drums, bass, other, vocals as AAC streams),
made here from rendered stems with stempeg/ffmpeg, then trained on for one step and evaluated."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from conftest import unetsep

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

STEMS = ("mixture", "drums", "bass", "other", "vocals")  # MUSDB18's stream order


@pytest.fixture(scope="module")
def stem_data(dataset, tmp_path_factory):
    """The rendered dataset's tracks as MUSDB18 .stem.mp4 files, first 4 s of each."""
    stempeg = pytest.importorskip("stempeg")
    root = tmp_path_factory.mktemp("stems") / "musdb"
    for subset in ("train", "test"):
        (root / subset).mkdir(parents=True)
        for track in sorted((dataset / subset).iterdir()):
            audio = np.stack([sf.read(track / f"{s}.wav", dtype="float32")[0][: 4 * 44100] for s in STEMS])
            stempeg.write_stems(str(root / subset / f"{track.name}.stem.mp4"), audio, sample_rate=44100)
    for extra in ("setup.yaml", "manifest.json"):  # the validation split and the held-out kits
        if (dataset / extra).is_file():
            shutil.copy(dataset / extra, root / extra)
    return root


def test_stem_files_read_back(stem_data):
    from unetsep.train.dataset import open_db

    db = open_db(stem_data, "test", None, "drums", 44100)
    assert db.tracks and not db.is_wav
    t = db.tracks[0]
    assert t.audio.shape[1] == 2 and abs(len(t.audio) - 4 * 44100) < 4096  # AAC pads a little
    assert np.sqrt(np.mean(t.sources["drums"].audio ** 2)) > 1e-3


def test_train_one_step_and_evaluate_on_stems(stem_data, tmp_path):
    run = tmp_path / "run"
    unetsep("train", "--data", stem_data, "--preset", "tiny", "--epochs", 1, "--steps", 1,
            "--batch-size", 64, "--out", run)
    assert (run / "model.keras").is_file() and (run / "config.json").is_file()
    unetsep("evaluate", "--data", stem_data, "--tracks", 1, "--seconds", 2, "--json", tmp_path / "e.json")
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["target"] == "drums" and len(out["tracks"]) == 1 and np.isfinite(out["median_sdr"])
