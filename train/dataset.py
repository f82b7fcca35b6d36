"""MUSDB18-layout data (MUSDB18, MUSDB18-HQ, the rendered default) as streamed training frames.

Tracks are opened with the `musdb` package and read in short random excerpts (musdb's
`chunk_start`/`chunk_duration`), so memory holds a shuffle buffer of frames, never the dataset.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.contract import TARGETS
from ..runtime.errors import UserError, cause_of

SETUP_FILE = "setup.yaml"  # a rendered dataset names its validation tracks here
CHUNK_SECONDS = 1.0  # one excerpt: 1 s of audio, both channels -> ~1378 frames of 64 samples


def _layout(root: Path) -> bool:
    """True for wav (MUSDB18-HQ / rendered), False for .stem.mp4 (MUSDB18); raise otherwise."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--data {root} is a file, not a folder; pass a MUSDB18-layout folder")
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder; render one with 'unetsep data --out {root}'")
    subsets = [root / s for s in ("train", "test") if (root / s).is_dir()]
    if any(any(p.glob("*/mixture.wav")) for p in subsets):
        return True
    if any(any(p.glob("*.stem.mp4")) for p in subsets):
        return False
    raise UserError(f"--data {root} is not a MUSDB18 layout (expected train/<track>/mixture.wav "
                    f"or train/<track>.stem.mp4); render one with 'unetsep data --out DIR'")


def musdb_setup(path: Path | None = None) -> dict:
    """A musdb setup: the file at `path` (a dataset's setup.yaml), else musdb's own
    configs/mus.yaml. A file that does not parse, or lacks a key musdb reads, is a UserError."""
    import musdb
    import yaml

    if path is None:
        with open(Path(musdb.__path__[0]) / "configs" / "mus.yaml") as f:
            return yaml.safe_load(f)
    fix = "start from musdb's configs/mus.yaml, as the one 'unetsep data' writes does"
    try:
        setup = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path} does not parse as YAML ({cause_of(e, 80)}); fix it or {fix}") from None
    missing = [k for k in MUSDB_SETUP_KEYS if not isinstance(setup, dict) or k not in setup]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}, which musdb reads; {fix}")
    for key, kind in MUSDB_SETUP_KEYS.items():
        if not isinstance(setup[key], kind):
            raise UserError(f"{path}: {key} is a {type(setup[key]).__name__}, musdb reads a "
                            f"{kind.__name__}; {fix}")
    unnumbered = [n for n in ("mixture", *setup["sources"]) if n not in setup["stem_ids"]]
    if unnumbered:
        raise UserError(f"{path}: stem_ids lacks {', '.join(unnumbered)}; {fix}")
    return setup


# The keys of a setup file musdb.DB reads, and their types (its sample_rate and sample-url are
# not read).
MUSDB_SETUP_KEYS = {"sources": dict, "targets": dict, "mixture": str, "stem_ids": dict,
                    "validation_tracks": list}


def check_wav_tracks(root: Path, subsets: list[str], setup: dict) -> None:
    """Read the header of every wav of every track in `subsets` (the mixture and the stems the
    musdb `setup` names) and raise a one-line UserError naming the first track and file that
    musdb or the loaders would trip on: unreadable, empty, mono, or another length, rate or
    channel count than the mixture's. Headers only: ~1 ms a file."""
    import soundfile as sf

    mixture_name, stem_names = setup["mixture"], list(setup["sources"].values())
    for subset in subsets:
        for track in sorted(p for p in (root / subset).glob("*") if p.is_dir()):
            mixture = track / mixture_name
            if not mixture.is_file():
                raise UserError(f"track {track} has no {mixture_name}; add it or remove the folder")
            ref = None
            for path in [mixture, *(track / n for n in stem_names)]:
                if not path.is_file():
                    continue
                try:
                    info = sf.info(str(path))
                except (sf.LibsndfileError, RuntimeError, OSError) as e:
                    cause = cause_of(e).rsplit(": ", 1)[-1][:80]  # libsndfile's reason, not the path again
                    raise UserError(f"{path} is not a readable wav ({cause}); "
                                    f"re-render or replace it, or remove the track") from None
                if info.frames == 0:
                    raise UserError(f"{path} is empty (0 samples); re-render or remove the track")
                if info.channels < 2:  # musdb hands mono as 1-D arrays, which nothing here takes
                    raise UserError(f"{path} is mono; MUSDB18 stems are stereo: convert it (e.g. "
                                    f"sox in.wav -c 2 out.wav) or remove the track")
                ref = ref or (info.frames, info.samplerate, info.channels)
                if (info.frames, info.samplerate, info.channels) != ref:
                    raise UserError(f"{path} has {info.frames} samples x {info.channels} channels at "
                                    f"{info.samplerate} Hz, {mixture.name} {ref[0]} x {ref[2]} at {ref[1]} "
                                    f"Hz; every stem must match its mixture: re-render or remove the track")


def open_db(root: str | Path, subsets: str | list[str] = "train", split: str | None = None,
            target: str = "drums", sample_rate: int | None = None, check: bool = True):
    """musdb.DB over `root` with musdb's own splits; checks the target stem and sample rate, and
    with `check` every wav header of `subsets` first (a caller opening another split of the same
    subsets again may skip that)."""
    import musdb

    root = Path(root)
    is_wav = _layout(root)
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r}: choose one of {', '.join(TARGETS)}")
    setup = SETUP_FILE if (root / SETUP_FILE).is_file() else None
    names = musdb_setup(root / SETUP_FILE if setup else None)
    if is_wav and check:  # musdb probes each mixture with ffprobe and would fail with its raw output
        check_wav_tracks(root, [subsets] if isinstance(subsets, str) else list(subsets), names)
    db = musdb.DB(root=str(root), is_wav=is_wav, subsets=subsets, split=split, setup_file=setup)
    for track in db.tracks:
        if target not in track.sources:
            raise UserError(f"track {track.name!r} in {root} has no {target} stem "
                            f"({target}.wav); pick another --target or fix the dataset")
        if sample_rate is not None and int(track.rate) != sample_rate:
            raise UserError(f"track {track.name!r} is at {int(track.rate)} Hz but the model runs at "
                            f"{sample_rate} Hz; resample the dataset (e.g. sox/ffmpeg -ar {sample_rate})")
    return db


def frames_of(audio: np.ndarray, frame: int) -> np.ndarray:
    """(samples, channels) -> (n, frame, 1): consecutive frames of every channel as mono examples."""
    n = audio.shape[0] // frame
    x = audio[: n * frame].T.reshape(audio.shape[1] * n, frame)  # channel-major, (C*n, frame)
    return x[..., None].astype(np.float32)


def read_excerpt(track, target: str, start: float, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, target) of one excerpt, each (samples, channels) float.

    Wav tracks are read with soundfile from the paths musdb lists (musdb itself decodes every
    read through an ffmpeg process, which would cost more CPU than the training step); stem
    files go through musdb's own chunked reading.
    """
    if track.is_wav:
        import soundfile as sf

        a, b = int(start * track.rate), int((start + seconds) * track.rate)
        mix, _ = sf.read(track.path, start=a, stop=b, dtype="float32", always_2d=True)
        tgt, _ = sf.read(track.sources[target].path, start=a, stop=b, dtype="float32", always_2d=True)
        return mix, tgt
    track.chunk_start, track.chunk_duration = start, seconds
    try:
        return track.audio, track.targets[target].audio
    finally:
        track.chunk_start, track.chunk_duration = 0, None


def excerpt_stream(tracks: list, target: str, frame: int, seed: int, augment: bool = False):
    """Endless (mix_frames, target_frames) arrays from random excerpts of random tracks, each
    (n, frame, 1); with `augment`, remixed and rescaled excerpts (augment.augmented_excerpts)."""
    from .augment import augmented_excerpts

    for mix, tgt in augmented_excerpts(tracks, target, CHUNK_SECONDS, seed, augment):
        yield frames_of(mix, frame), frames_of(tgt, frame)


def batch_stream(tracks: list, target: str, frame: int, batch_size: int, seed: int,
                 pool_frames: int = 32768, augment: bool = False):
    """Endless shuffled (mix, target) batches, each (batch_size, frame, 1) float32.

    Frames from ~24 random 1 s excerpts (both channels) fill a pool of `pool_frames`, which is
    permuted and cut into batches; then the pool refills. Shuffling in numpy here rather than
    with tf.data's unbatch/shuffle/batch avoids a per-frame cost that, on 2 cores, held the
    pipeline below the model's own training rate.
    """
    rng = np.random.default_rng(seed + 1)
    excerpts = excerpt_stream(tracks, target, frame, seed, augment)
    while True:
        xs, ys, have = [], [], 0
        while have < pool_frames:
            x, y = next(excerpts)
            xs.append(x)
            ys.append(y)
            have += len(x)
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = rng.permutation(len(x))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def training_dataset(tracks: list, target: str, frame: int, batch_size: int, seed: int,
                     shuffle_frames: int = 32768, augment: bool = False):
    """tf.data over `batch_stream`: shuffled batches from random excerpts, prefetched.

    Peak memory is the shuffle pool (32768 frames = 8 MB for mix and target) whatever the number
    of tracks.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((batch_size, frame, 1), tf.float32)
    ds = tf.data.Dataset.from_generator(
        lambda: batch_stream(tracks, target, frame, batch_size, seed, shuffle_frames, augment),
        output_signature=(spec, spec))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def validation_frames(tracks: list, target: str, frame: int, max_frames: int = 65536,
                      seconds: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation examples: frames of (up to) the first `seconds` of each validation track,
    evenly thinned to at most `max_frames` so that validation costs the same on any dataset."""
    xs, ys = [], []
    for t in tracks:
        mix, tgt = read_excerpt(t, target, 0.0, min(seconds, t.duration))
        xs.append(frames_of(mix, frame))
        ys.append(frames_of(tgt, frame))
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = np.linspace(0, len(x) - 1, min(len(x), max_frames)).astype(int)
    return x[keep], y[keep]


def total_frames(tracks: list, frame: int) -> int:
    """Frames in one pass over `tracks`, both channels (MUSDB18 is stereo): the size of an epoch."""
    return int(sum(t.duration * t.rate // frame * 2 for t in tracks))


# Streaming presets train on continuous segments (the state must learn to carry over seconds),
# each channel of an excerpt one example; the target is stacked with the mixture so that the
# loss can normalise by the mixture's level.


def segment_examples(mix: np.ndarray, tgt: np.ndarray, segment: int, lookahead: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(samples, channels) excerpt -> x (channels, segment, 1), y (channels, segment, 2).

    y holds the target delayed by `lookahead` samples (a model that looks ahead answers that late)
    and the mixture; excerpts shorter than `segment` are padded with silence.
    """
    n = min(len(mix), segment)
    x = np.zeros((mix.shape[1], segment, 1), np.float32)
    y = np.zeros((mix.shape[1], segment, 2), np.float32)
    x[:, :n, 0] = mix[:n].T
    y[:, lookahead:n, 0] = tgt[:n - lookahead].T if n > lookahead else 0.0
    y[:, :n, 1] = mix[:n].T
    return x, y


def segment_batches(source, segment: int, batch_size: int, lookahead: int = 0):
    """Endless (x (B, segment, 1), y (B, segment, 2)) batches from an excerpt generator."""
    xs, ys, have = [], [], 0
    for mix, tgt in source:
        x, y = segment_examples(mix, tgt, segment, lookahead)
        xs.append(x)
        ys.append(y)
        have += len(x)
        while have >= batch_size:
            x, y = np.concatenate(xs), np.concatenate(ys)
            yield x[:batch_size], y[:batch_size]
            xs, ys, have = [x[batch_size:]], [y[batch_size:]], have - batch_size


def segment_dataset(tracks: list, target: str, segment: int, batch_size: int, seed: int,
                    rate: int, lookahead: int = 0, augment: bool = False):
    """tf.data over `segment_batches` of random (augmented) excerpts, prefetched; memory: a few
    batches."""
    import tensorflow as tf

    from .augment import augmented_excerpts

    source = augmented_excerpts(tracks, target, segment / rate, seed, augment)
    ds = tf.data.Dataset.from_generator(
        lambda: segment_batches(source, segment, batch_size, lookahead),
        output_signature=(tf.TensorSpec((batch_size, segment, 1), tf.float32),
                          tf.TensorSpec((batch_size, segment, 2), tf.float32)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(2)


def validation_segments(tracks: list, target: str, segment: int, rate: int, lookahead: int = 0,
                        seconds: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation segments: the first `seconds` of each validation track cut into segments
    (both channels). x (n, segment, 1), y (n, segment, 2)."""
    xs, ys = [], []
    for t in tracks:
        mix, tgt = read_excerpt(t, target, 0.0, min(seconds, t.duration))
        for a in range(0, max(1, len(mix) - segment // 2), segment):
            x, y = segment_examples(mix[a:a + segment], tgt[a:a + segment], segment, lookahead)
            xs.append(x)
            ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)
