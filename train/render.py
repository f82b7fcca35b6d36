"""Render composed songs with FluidSynth into a MUSDB18-HQ wav layout (`unetsep data`).

    OUT/train/<track>/{mixture,drums,bass,other,vocals}.wav
    OUT/test/<track>/...
    OUT/setup.yaml      musdb's setup file, naming this dataset's validation tracks

`musdb.DB(root=OUT, is_wav=True, setup_file="setup.yaml")` reads it exactly like MUSDB18-HQ.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..runtime.contract import SAMPLE_RATE, TARGETS
from ..runtime.errors import UserError
from ..runtime.files import write_text_atomic
from .compose import Song, compose

SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/opt/homebrew/share/soundfonts/FluidR3_GM.sf2",
    "/usr/local/share/soundfonts/FluidR3_GM.sf2",
)
FIX_FLUIDSYNTH = "apt-get install fluidsynth (Debian/Ubuntu) or brew install fluid-synth (macOS)"
FIX_SOUNDFONT = ("apt-get install fluid-soundfont-gm (Debian/Ubuntu), or pass --soundfont PATH "
                 "to a General MIDI .sf2")
PEAK = 0.9  # mixture peak after normalisation, leaving headroom for 16-bit rounding


def find_soundfont(path: str | None = None) -> str:
    """The SoundFont to render with: `path`, $UNETSEP_SOUNDFONT, or FluidR3_GM where packaged."""
    candidates = [path] if path else [os.environ.get("UNETSEP_SOUNDFONT"), *SOUNDFONT_PATHS]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    raise UserError(f"SoundFont not found ({path or 'FluidR3_GM.sf2'}): {FIX_SOUNDFONT}")


def _import_fluidsynth():
    try:
        import fluidsynth  # pyfluidsynth: loads libfluidsynth at import
    except (ImportError, OSError) as e:
        raise UserError(f"FluidSynth is not available ({e}): {FIX_FLUIDSYNTH}") from None
    return fluidsynth


def _new_synth(soundfont: str, sample_rate: int):
    """A fresh FluidSynth instance with `soundfont` loaded: (synth, soundfont id).

    Samples load on demand (dynamic sample loading), so a new synth costs ~25 ms instead of
    ~200 ms for reading all of FluidR3's samples; that makes a fresh synth per stem affordable.
    """
    fluidsynth = _import_fluidsynth()
    fs = fluidsynth.Synth(gain=0.4, samplerate=float(sample_rate),
                          **{"synth.dynamic-sample-loading": 1})
    sfid = fs.sfload(soundfont)
    if sfid < 0:
        fs.delete()
        raise UserError(f"FluidSynth could not load the SoundFont {soundfont}: {FIX_SOUNDFONT}")
    return fs, sfid


def render_song(song: Song, soundfont: str, sample_rate: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """Each stem as float32 (samples, 2), exactly `song.seconds` long, unscaled.

    Every stem is played by a new synth, deleted afterwards: a synth kept across songs carries
    reverb and chorus tails and voice state from whatever it rendered before, which made a song's
    audio depend on the order in which worker processes picked up songs.
    """
    n = int(round(song.seconds * sample_rate))
    out = {}
    for stem in TARGETS:
        fs, sfid = _new_synth(soundfont, sample_rate)
        try:
            parts = [p for p in song.parts if p.stem == stem]
            out[stem] = _render_parts(fs, sfid, parts, n, sample_rate)
        finally:
            fs.delete()
    return out


def _render_parts(fs, sfid, parts, n: int, rate: int) -> np.ndarray:
    """Play `parts` on one synth: (n, 2) float32."""
    # Events sorted by sample time; note-offs before note-ons at the same sample.
    events = []
    for p in parts:
        fs.program_select(p.channel, sfid, p.bank, p.program)
        for note in p.notes:
            events.append((int(note.start * rate), 1, p.channel, note.pitch, note.velocity))
            events.append((int(note.end * rate), 0, p.channel, note.pitch, 0))
    events.sort()
    chunks, t = [], 0
    for when, on, ch, pitch, vel in events:
        when = min(when, n)
        if when > t:
            chunks.append(fs.get_samples(when - t))
            t = when
        if on:
            fs.noteon(ch, pitch, vel)
        else:
            fs.noteoff(ch, pitch)
    if n > t:
        chunks.append(fs.get_samples(n - t))
    audio = np.concatenate(chunks).reshape(-1, 2).astype(np.float32) / 32768.0
    return audio[:n]


def mix_stems(stems: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random per-stem gains, scaled so the mixture peaks at PEAK, as int16 (samples, 2) arrays.

    The stems are rounded to 16-bit first and the mixture is their integer sum, so that what is
    read back from the wav files satisfies mixture == sum(stems) exactly.
    """
    gains = {s: 10 ** (rng.uniform(-9, 0) / 20) for s in stems}
    scaled = {s: a * gains[s] for s, a in stems.items()}
    peak = np.abs(sum(scaled.values())).max()
    scale = 32768 * (PEAK / peak if peak > 0 else 1.0)
    q = {s: np.clip(np.round(a * scale), -32768, 32767).astype(np.int32) for s, a in scaled.items()}
    mixture = sum(q.values())
    assert np.abs(mixture).max() <= 32767, "mixture clipped despite normalisation"
    q["mixture"] = mixture
    return {s: a.astype(np.int16) for s, a in q.items()}


def split_counts(songs: int) -> tuple[int, int, int]:
    """(train, valid, test) counts, roughly MUSDB18's proportions; at least one of each."""
    if songs < 3:
        raise UserError(f"--songs {songs} is too few: need at least 3 (train, validation, test)")
    test = max(1, round(songs * 0.25))
    valid = max(1, round(songs * 0.15))
    return songs - test - valid, valid, test


@dataclass
class DatasetPlan:
    names: list[str]
    subsets: list[str]  # "train" | "test" per song
    validation: list[str]


def plan_dataset(songs: int) -> DatasetPlan:
    n_train, n_valid, n_test = split_counts(songs)
    names = [f"unetsep-{i:04d}" for i in range(songs)]
    subsets = ["train"] * (n_train + n_valid) + ["test"] * n_test
    validation = names[n_train:n_train + n_valid]
    return DatasetPlan(names, subsets, validation)


def _setup_yaml(validation: list[str]) -> str:
    """musdb's own setup file (musdb/configs/mus.yaml), with this dataset's validation tracks."""
    import musdb
    import yaml

    with open(Path(musdb.__path__[0]) / "configs" / "mus.yaml") as f:
        setup = yaml.safe_load(f)
    setup["validation_tracks"] = list(validation)
    return yaml.safe_dump(setup, sort_keys=False)


def render_dataset(out: str | Path, songs: int = 6, seconds: float = 20.0, seed: int = 0,
                   soundfont: str | None = None, progress: bool = True,
                   workers: int | None = None) -> Path:
    """Render `songs` songs into `out` (MUSDB18-HQ layout); deterministic from `seed`.

    `workers` processes render in parallel (default: one per CPU); the audio does not depend on it.
    Each track folder is written under OUT/.staging and renamed into place when complete, so an
    interrupted run never leaves a track that looks finished; a rerun renders only what is missing.
    """
    from tqdm import tqdm

    if seconds <= 0:
        raise UserError(f"--seconds {seconds} must be positive")
    out = Path(out)
    plan = plan_dataset(songs)
    sf_path = find_soundfont(soundfont)
    _import_fluidsynth()  # fail here with the fix, not inside a worker process
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe-")
        probe.close()
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}; choose another --out") from None
    # Tracks are staged outside train/ and test/: musdb lists every folder there as a track.
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    todo = [(i, name, subset) for i, (name, subset) in enumerate(zip(plan.names, plan.subsets))
            if not (out / subset / name).exists()]
    for subset in set(plan.subsets):
        (out / subset).mkdir(exist_ok=True)
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    jobs = [(seed, i, seconds, out / subset / name, staging, sf_path) for i, name, subset in todo]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    with ProcessPoolExecutor(workers) as pool:
        done = tqdm(pool.map(_render_track, jobs), total=len(plan.names), unit="song",
                    initial=len(plan.names) - len(jobs), desc="rendering", disable=not progress)
        for _ in done:
            pass
    shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(out / "setup.yaml", _setup_yaml(plan.validation))
    return out


def _render_track(job) -> None:
    """Compose, render and write one track (in a worker process): staged, then renamed."""
    seed, index, seconds, final, staging, soundfont = job
    rng = np.random.default_rng([seed, index])
    song = compose(final.name, seconds, rng)
    audio = mix_stems(render_song(song, soundfont), rng)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}-", dir=staging))
    for stem, a in audio.items():
        sf.write(tmp / f"{stem}.wav", a, SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp, final)

