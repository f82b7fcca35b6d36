"""`unetsep data`: the rendered default dataset reads like MUSDB18-HQ and is deterministic."""
from __future__ import annotations

import hashlib

import musdb
import numpy as np
import soundfile as sf

from conftest import unetsep
from unetsep.runtime.contract import SAMPLE_RATE, TARGETS


def test_musdb_reads_the_rendered_layout(dataset):
    db = musdb.DB(root=str(dataset), is_wav=True)
    assert len(db.tracks) == 6
    train = musdb.DB(root=str(dataset), is_wav=True, subsets="train", split="train",
                     setup_file="setup.yaml")
    valid = musdb.DB(root=str(dataset), is_wav=True, subsets="train", split="valid",
                     setup_file="setup.yaml")
    test = musdb.DB(root=str(dataset), is_wav=True, subsets="test")
    assert (len(train), len(valid), len(test)) == (3, 1, 2)
    t = test.tracks[0]
    assert t.rate == SAMPLE_RATE and t.audio.shape[1] == 2
    assert set(t.targets) >= set(TARGETS)


def test_mixture_is_the_sum_of_the_stems(dataset):
    for track in sorted((dataset / "train").iterdir()) + sorted((dataset / "test").iterdir()):
        mix, rate = sf.read(track / "mixture.wav", dtype="float64")
        assert rate == SAMPLE_RATE and mix.ndim == 2 and abs(mix).max() > 0.1
        stems = sum(sf.read(track / f"{s}.wav", dtype="float64")[0] for s in TARGETS)
        assert np.abs(mix - stems).max() <= 1e-4
        assert np.abs(sf.read(track / "drums.wav")[0]).max() > 0.01  # every song has drums


def _digest(root):
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.wav")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_songs_other_seed_other_songs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        unetsep("data", "--out", tmp_path / name, "--songs", 3, "--seconds", 3, "--seed", seed)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_missing_soundfont_is_a_one_line_error(tmp_path):
    proc = unetsep("data", "--out", tmp_path / "x", "--songs", 3, "--seconds", 2,
                   "--soundfont", tmp_path / "none.sf2", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "SoundFont not found" in proc.stderr
    assert "apt-get install fluid-soundfont-gm" in proc.stderr
    assert not (tmp_path / "x" / "train").exists()


def _wav_bytes(root):
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.wav"))}


def test_songs_do_not_depend_on_the_number_of_workers(tmp_path):
    # 4 songs on 1 worker vs 2 workers: each worker renders a different sequence of songs, so any
    # synth state carried from one song to the next would change some bytes.
    for name, workers in (("one", 1), ("two", 2)):
        unetsep("data", "--out", tmp_path / name, "--songs", 4, "--seconds", 3, "--seed", 5,
                "--workers", workers)
    one, two = _wav_bytes(tmp_path / "one"), _wav_bytes(tmp_path / "two")
    assert len(one) == 4 * 5 and one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []
