"""A training split packed small enough to carry to a lent GPU machine, and its batches there.

A lent machine takes the working tree plus at most 64 MiB and has no TensorFlow, no fluidsynth and
no sound fonts, so the data cannot be rendered or read there as `unetsep train` does. A bundle is:

    manifest.json        source data folder, data seed, seconds, bits, and per song: its track,
                         first sample, scales and bytes
    NNNN-target.flac     the target stem, mono mid channel ((L+R)/2), `seconds` from a seeded start,
                         scaled to peak 1 (the manifest keeps each file's scale)
    NNNN-rest.flac       the rest (mixture - target), the same samples
    init.npz             (optional) the weights training starts from, in get_weights() order

Quantised to `bits` before FLAC, which stores the unused low bits for free: at 9 bits the
quantisation noise sits ~50 dB under each stem's peak, far under the error of any separation the
model learns, and a 10 s song pair takes ~0.43 MB. The mixture is rebuilt as target + rest after decoding,
so input and target stay an exact sum, as in `augment.augmented_excerpts`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..runtime.errors import UserError
from ..runtime.files import write_atomic, write_text_atomic

MANIFEST = "manifest.json"


def _write_flac(path: Path, audio: np.ndarray, rate: int) -> int:
    import soundfile as sf

    write_atomic(path, lambda tmp: sf.write(tmp, audio, rate, format="FLAC", subtype="PCM_16"))
    return path.stat().st_size


def pack(tracks: list, target: str, out: str | Path, seconds: float, bits: int, seed: int,
         max_bytes: int, rate: int, source: str = "") -> dict:
    """Songs from `tracks` (musdb tracks, shuffled by `seed`) into `out`, as many as fit in
    `max_bytes` of FLAC.

    Each song: `seconds` from a random start, mid channel, quantised to `bits`; returns the manifest.
    """
    from .dataset import read_excerpt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tracks))
    step = np.float32(2.0 ** (1 - bits))
    from tqdm import tqdm

    songs, used = [], 0
    bar = tqdm(total=max_bytes, unit="B", unit_scale=True, desc="packing", leave=False)
    for n, i in enumerate(order):
        t = tracks[i]
        length = min(seconds, t.duration)
        start = float(rng.uniform(0, t.duration - length))
        mix, tgt = read_excerpt(t, target, start, length)
        pair = [a.mean(axis=1) for a in (tgt, mix - tgt)]  # (samples,) x 2
        scales = [float(np.abs(a).max() / (1 - step)) or 1.0 for a in pair]  # no clipped peak
        sizes = [_write_flac(out / f"{n:04d}-{kind}.flac", np.round(a / s / step) * step, rate)
                 for kind, a, s in zip(("target", "rest"), pair, scales)]
        if used + sum(sizes) > max_bytes:  # this song would overflow: drop it and stop
            for kind in ("target", "rest"):
                (out / f"{n:04d}-{kind}.flac").unlink()
            break
        used += sum(sizes)
        bar.update(sum(sizes))
        songs.append({"file": f"{n:04d}", "track": t.name, "start_sample": int(start * t.rate),
                      "scales": scales, "bytes": sum(sizes)})
    bar.close()
    if not songs:
        raise UserError(f"not one song of {seconds:g} s fits in {max_bytes / 1e6:.1f} MB; raise --max-mb")
    manifest = {"source": source, "target": target, "rate": rate, "seconds": seconds, "bits": bits,
                "seed": seed, "songs": songs, "bytes": used}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(folder: str | Path) -> dict:
    """A bundle's manifest.json; a folder without one is refused in one line."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"{folder} is not a bundle (no {MANIFEST}): make one with "
                        f"'python -m unetsep.train.fit_jax pack'")
    return json.loads((folder / MANIFEST).read_text())


def summary(manifest: dict) -> dict:
    """What a run trained on, for its config: the bundle's source data, data seed, seconds per song,
    bits and number of songs (the config it was packed with names the data of its earlier training)."""
    return {**{k: manifest[k] for k in ("source", "seed", "seconds", "bits")},
            "songs": len(manifest["songs"])}


def load(folder: str | Path) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """manifest, [(target, rest)] float32 mono arrays of every song in a bundle."""
    import soundfile as sf

    folder = Path(folder)
    manifest = read_manifest(folder)
    pairs = []
    for s in manifest["songs"]:
        tgt, rest = (sf.read(folder / f"{s['file']}-{kind}.flac", dtype="float32")[0] * np.float32(scale)
                     for kind, scale in zip(("target", "rest"), s["scales"]))
        pairs.append((tgt, rest))
    return manifest, pairs


def batch(pairs: list, segment: int, batch_size: int, lookahead: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """One training batch from a bundle, as `dataset.segment_batches` makes them from songs:
    x (B, segment, 1), y (B, segment, 2) (the target delayed by `lookahead`, then the mixture).

    Each example remixes two songs (the target of one, the rest of another, drawn independently
    so now and then the same song) through `augment.augment_stems`, as
    `augment.augmented_excerpts` does."""
    from .augment import augment_stems
    from .dataset import segment_examples

    lengths = np.array([len(t) for t, _ in pairs], dtype=float)
    p = lengths / lengths.sum()
    xs, ys = [], []
    for _ in range(batch_size):
        a, b = rng.choice(len(pairs), size=2, p=p)
        cut = []
        for song, part in ((a, 0), (b, 1)):
            audio = pairs[song][part]
            start = int(rng.integers(0, max(1, len(audio) - segment + 1)))
            cut.append(audio[start:start + segment, None])  # (n, 1)
        n = min(len(cut[0]), len(cut[1]))
        tgt, rest = augment_stems(cut[0][:n], cut[1][:n], rng)
        x, y = segment_examples(tgt + rest, tgt, segment, lookahead)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)
