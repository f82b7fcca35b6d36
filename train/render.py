"""Render composed songs with FluidSynth into a MUSDB18-HQ wav layout (`unetsep data`).

    OUT/train/<track>/{mixture,drums,bass,other,vocals}.wav
    OUT/test/<track>/...
    OUT/setup.yaml      musdb's setup file, naming this dataset's validation tracks

`musdb.DB(root=OUT, is_wav=True, setup_file="setup.yaml")` reads it exactly like MUSDB18-HQ.
"""
from __future__ import annotations

import json
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
from ..runtime.files import as_public_folder, check_folder_arg, write_text_atomic
from .compose import Song, compose
from .kits import Kit, SoundSet, render_samples, select_kits, select_soundsets
from .mixing import produce, rms_db

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
            with open(c, "rb") as f:
                head = f.read(12)
            # A SoundFont 2 file is a RIFF container of form type 'sfbk': checked here so that a
            # wrong file fails in one line, before FluidSynth's own messages and any folder.
            if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
                raise UserError(f"{c} is not a SoundFont 2 (.sf2) file; pass --soundfont PATH to a "
                                f"General MIDI .sf2")
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
    # FluidSynth's own reverb and chorus are off: mixing.produce puts each song in its rooms.
    fs = fluidsynth.Synth(gain=0.4, samplerate=float(sample_rate),
                          **{"synth.dynamic-sample-loading": 1, "synth.reverb.active": 0,
                             "synth.chorus.active": 0})
    sfid = fs.sfload(soundfont)
    if sfid < 0:
        fs.delete()
        raise UserError(f"FluidSynth could not load the SoundFont {soundfont}: {FIX_SOUNDFONT}")
    return fs, sfid


def render_song(song: Song, soundfont: str, sample_rate: int = SAMPLE_RATE, kit: Kit | None = None,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Each stem as float32 (samples, 2), exactly `song.seconds` long, unscaled.

    Instruments play from `soundfont`; drums from `kit` (a SoundFont preset or a sample kit, then
    drawing round robin and instrument choices from `rng`), or the song's own GM kit in `soundfont`.
    Every stem is played by a new synth, deleted afterwards: a synth kept across songs carries
    reverb and chorus tails and voice state from whatever it rendered before, which made a song's
    audio depend on the order in which worker processes picked up songs.
    """
    n = int(round(song.seconds * sample_rate))
    out = {}
    for stem in TARGETS:
        parts = [p for p in song.parts if p.stem == stem]
        path = soundfont
        if stem == "drums" and kit is not None:
            if kit.kind == "samples":
                notes = [note for p in parts for note in p.notes]
                out[stem] = render_samples(kit, notes, n, rng or np.random.default_rng(0), sample_rate)
                continue
            path = kit.path
            for p in parts:
                p.bank, p.program = kit.bank, kit.preset
        fs, sfid = _new_synth(path, sample_rate)
        try:
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


def mix_stems(stems: dict[str, np.ndarray], peak: float = PEAK) -> dict[str, np.ndarray]:
    """Stems scaled together so the mixture peaks at `peak`, as int16 (samples, 2) arrays.

    The stems are rounded to 16-bit first and the mixture is their integer sum, so that what is
    read back from the wav files satisfies mixture == sum(stems) exactly.
    """
    top = np.abs(sum(stems.values())).max()
    scale = 32768 * (peak / top if top > 0 else 1.0)
    q = {s: np.clip(np.round(a * scale), -32768, 32767).astype(np.int32) for s, a in stems.items()}
    mixture = sum(q.values())
    assert np.abs(mixture).max() <= 32767, "mixture clipped despite normalisation"
    q["mixture"] = mixture
    return {s: a.astype(np.int16) for s, a in q.items()}


def split_sounds(kits: list, soundsets: list, seed: int) -> tuple[list, list, list, list]:
    """(train kits, held-out kits, train sound sets, held-out sound sets), decided by `seed`.

    About a quarter of the kits (at least one, when there are two or more) and, when there are
    two or more sound sets, a quarter of those are kept for test songs only.
    """
    rng = np.random.default_rng([seed, 0x5EED])

    def split(items):
        if len(items) < 2:
            return list(items), []
        order = rng.permutation(len(items))
        k = max(1, round(len(items) * 0.25))
        return [items[i] for i in sorted(order[k:])], [items[i] for i in sorted(order[:k])]

    train_kits, held_kits = split(kits)
    train_sets, held_sets = split(soundsets)
    return train_kits, held_kits, train_sets, held_sets


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
    import yaml

    from .dataset import musdb_setup

    setup = musdb_setup()
    setup["validation_tracks"] = list(validation)
    return yaml.safe_dump(setup, sort_keys=False)


def render_dataset(out: str | Path, songs: int = 6, seconds: float = 20.0, seed: int = 0,
                   soundfont: str | None = None, progress: bool = True,
                   workers: int | None = None, kits: list[str] | None = None,
                   soundfonts: list[str] | None = None) -> Path:
    """Render `songs` songs into `out` (MUSDB18-HQ layout); deterministic from `seed`.

    `workers` processes render in parallel (default: one per CPU); the audio does not depend on it.
    Each song draws its drum kit and instrument sound set from those installed (or `kits`,
    `soundfonts`); test songs alternate between held-out kits/sound sets, which no training song
    uses, and training ones. OUT/manifest.json records each track's choice.
    Each track folder is written under OUT/.staging and renamed into place when complete, so an
    interrupted run never leaves a track that looks finished; a rerun renders only what is missing.
    """
    from tqdm import tqdm

    if seconds <= 0:
        raise UserError(f"--seconds {seconds} must be positive")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    check_folder_arg(out, "--out")
    out = Path(out)
    plan = plan_dataset(songs)
    sets = ([SoundSet(Path(soundfont).stem, find_soundfont(soundfont))] if soundfont
            else select_soundsets(soundfonts))
    kit_list = select_kits(kits, sets)
    train_kits, held_kits, train_sets, held_sets = split_sounds(kit_list, sets, seed)
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
    choice = {}
    for i, (name, subset) in enumerate(zip(plan.names, plan.subsets)):
        pick = np.random.default_rng([seed, i, 1])
        heldout = subset == "test" and plan.subsets[:i].count("test") % 2 == 0 and bool(held_kits)
        ks = held_kits if heldout else train_kits
        ss = held_sets if heldout and held_sets else train_sets
        choice[name] = (ks[int(pick.integers(len(ks)))], ss[int(pick.integers(len(ss)))], heldout)
    jobs = [(seed, i, seconds, out / subset / name, staging, *choice[name][:2])
            for i, name, subset in todo]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    levels = {}
    pool = ProcessPoolExecutor(workers, initializer=_leave_signals_to_the_parent)
    try:
        done = tqdm(pool.map(_render_track, jobs), total=len(plan.names), unit="song",
                    initial=len(plan.names) - len(jobs), desc="rendering", disable=not progress)
        for name, level in done:
            levels[name] = level
    except BaseException as e:  # Ctrl-C, SIGTERM, a failed song: the songs not started are dropped
        pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(e, (OSError, sf.LibsndfileError)):  # writing a song: most likely a full disk
            raise UserError(f"writing a song into {out} failed ({e}); free space there (or choose "
                            f"another --out) and rerun: the songs already written are kept") from None
        raise
    pool.shutdown()
    tracks = {}
    for name, subset in zip(plan.names, plan.subsets):
        kit, sset, heldout = choice[name]
        level = levels.get(name)
        if level is None:  # rendered by an earlier run
            level = drums_to_rest_db(out / subset / name)
        tracks[name] = {"subset": subset, "kit": kit.name, "soundfont": sset.name,
                        "heldout": heldout, "drums_to_rest_db": round(level, 2)}
    manifest = {"seed": seed, "kits": {"train": [k.name for k in train_kits],
                                       "heldout": [k.name for k in held_kits]},
                "soundfonts": {"train": [x.name for x in train_sets],
                               "heldout": [x.name for x in held_sets]},
                "tracks": tracks}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(out / "setup.yaml", _setup_yaml(plan.validation))
    return out


def drums_to_rest_db(track: Path) -> float:
    """RMS level of drums.wav relative to mixture - drums, in dB."""
    mix = sf.read(track / "mixture.wav", dtype="float32")[0]
    drums = sf.read(track / "drums.wav", dtype="float32")[0]
    return rms_db(drums) - rms_db(mix - drums)


def heldout_tracks(root: str | Path) -> dict[str, bool]:
    """{track name: True if its drum kit or sound set is one no training song uses}, from the
    dataset's manifest.json (empty for datasets without one, e.g. MUSDB18)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return {}
    return {name: bool(t["heldout"]) for name, t in json.loads(path.read_text())["tracks"].items()}


def _leave_signals_to_the_parent() -> None:
    """In each rendering process: SIGTERM and SIGINT (sent to the whole group by systemd, `kill
    -- -PGID` or Ctrl-C) are left to the parent, which cancels the songs not started; a worker
    finishes its song (a few seconds) and exits with the pool. The CLI's handler, inherited by
    fork, would print a traceback per worker, and a worker killed outright makes Python 3.11's
    pool print another."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _render_track(job) -> tuple[str, float]:
    """Compose, render, mix and write one track (in a worker process): staged, then renamed.

    Returns (track name, drums-to-rest level in dB as written)."""
    seed, index, seconds, final, staging, kit, soundset = job
    rng = np.random.default_rng([seed, index])
    song = compose(final.name, seconds, rng)
    stems, _ = produce(render_song(song, soundset.path, kit=kit, rng=rng), rng)
    audio = mix_stems(stems)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}-", dir=staging))
    try:
        for stem, a in audio.items():
            sf.write(tmp / f"{stem}.wav", a, SAMPLE_RATE, subtype="PCM_16")
        os.replace(as_public_folder(tmp), final)
    except BaseException:  # a full disk: free what this song took
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    d = audio["drums"].astype(np.float64)
    return final.name, rms_db(d) - rms_db(audio["mixture"] - d)
