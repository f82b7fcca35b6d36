"""Mix rendered stems like a produced song: EQ, compression, panning, rooms, saturation, levels.

Pure functions on float arrays of shape (samples, 2); every random choice comes from the
`numpy.random.Generator` passed in. Everything is applied per stem, so the mixture written to disk
stays exactly the sum of the stems.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve, lfilter, sosfilt

from ..runtime.contract import SAMPLE_RATE

# Drums-to-rest level (dB, RMS over the song) drawn per song. Mixture-as-estimate drums SDR is close
# to this figure; real recordings sit around -6..+2 dB (a rock track measured -4.2 dB).
DRUMS_TO_REST_DB = (0.5, 3.0, -6.0, 6.0)  # mean, spread, low, high


def biquad(kind: str, f0: float, gain_db: float, q: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """One RBJ-cookbook biquad ('peak', 'lowshelf', 'highshelf') as a (1, 6) second-order section."""
    a_ = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / rate
    alpha = np.sin(w) / (2 * q)
    c = np.cos(w)
    if kind == "peak":
        b = [1 + alpha * a_, -2 * c, 1 - alpha * a_]
        a = [1 + alpha / a_, -2 * c, 1 - alpha / a_]
    else:
        sa = 2 * np.sqrt(a_) * alpha
        s = 1 if kind == "lowshelf" else -1
        b = [a_ * ((a_ + 1) - s * (a_ - 1) * c + sa), s * 2 * a_ * ((a_ - 1) - s * (a_ + 1) * c),
             a_ * ((a_ + 1) - s * (a_ - 1) * c - sa)]
        a = [(a_ + 1) + s * (a_ - 1) * c + sa, -s * 2 * ((a_ - 1) + s * (a_ + 1) * c),
             (a_ + 1) + s * (a_ - 1) * c - sa]
    return np.concatenate([np.array(b) / a[0], np.array(a) / a[0]])[None, :]


def random_eq(x: np.ndarray, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A low shelf, a high shelf and one peak with random gains (+-6 dB): (n, 2) -> (n, 2)."""
    sos = np.concatenate([
        biquad("lowshelf", rng.uniform(80, 300), rng.uniform(-6, 6), 0.7, rate),
        biquad("highshelf", rng.uniform(3000, 10000), rng.uniform(-6, 6), 0.7, rate),
        biquad("peak", np.exp(rng.uniform(np.log(200), np.log(5000))), rng.uniform(-6, 6),
               rng.uniform(0.5, 2.0), rate)])
    return sosfilt(sos, x, axis=0).astype(np.float32)


def compress(x: np.ndarray, threshold_db: float, ratio: float, time_s: float = 0.01,
             rate: int = SAMPLE_RATE) -> np.ndarray:
    """Feed-forward compressor with make-up gain: (n, 2) -> (n, 2).

    The envelope is a one-pole smoothing (lfilter) of the squared, channel-linked signal, so the
    whole thing is vectorised; a single time constant stands in for attack and release.
    """
    power = np.mean(np.square(x, dtype=np.float32), axis=1)
    k = np.exp(-1 / (time_s * rate))
    env_db = 10 * np.log10(lfilter([1 - k], [1, -k], power).astype(np.float32) + 1e-12)
    over = np.maximum(env_db - threshold_db, 0)
    gain_db = -over * (1 - 1 / ratio)
    makeup = -np.median(gain_db[env_db > threshold_db]) if np.any(env_db > threshold_db) else 0.0
    return x * (10 ** ((gain_db + makeup / 2) / 20)).astype(np.float32)[:, None]


def pan(x: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan, position in -1 (left) .. 1 (right): (n, 2) -> (n, 2)."""
    theta = (position + 1) * np.pi / 4
    return (x * np.array([np.cos(theta), np.sin(theta)], np.float32) * np.sqrt(2)).astype(np.float32)


def room_ir(rt60: float, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room: stereo noise decaying by 60 dB over `rt60` s, darker as it decays: (m, 2)."""
    m = int(rt60 * rate)
    t = np.arange(m) / rate
    ir = rng.standard_normal((m, 2)) * np.exp(-6.9 * t / rt60)[:, None]
    ir = lfilter([0.6], [1, -0.4], ir, axis=0)  # gentle low-pass: air absorbs the highs
    ir[: int(rng.uniform(0.005, 0.03) * rate)] = 0  # pre-delay before the first reflections
    return (ir / np.sqrt(np.sum(ir ** 2) / 2)).astype(np.float32)


def reverb(x: np.ndarray, ir: np.ndarray, wet: float) -> np.ndarray:
    """Dry signal plus `wet` times its convolution with a room `ir`: (n, 2) -> (n, 2)."""
    tail = fftconvolve(x, ir, axes=0)[: len(x)]
    return (x + wet * tail).astype(np.float32)


def saturate(x: np.ndarray, drive: float) -> np.ndarray:
    """tanh saturation at unchanged small-signal gain: (n, 2) -> (n, 2)."""
    return (np.tanh(drive * x) / drive).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def produce(stems: dict[str, np.ndarray], rng: np.random.Generator,
            rate: int = SAMPLE_RATE) -> tuple[dict[str, np.ndarray], float]:
    """Mix stems {name: (n, 2)} like a produced song; returns the processed stems (same shapes)
    and the drums-to-rest level drawn for the song (dB).

    Drums and the rest get rooms of their own. Levels: the rest's stems at random levels among
    themselves, then the drums set to the drawn drums-to-rest RMS ratio.
    """
    drum_room = room_ir(rng.uniform(0.3, 1.2), rng, rate)
    band_room = room_ir(rng.uniform(0.6, 2.5), rng, rate)
    out = {}
    for name, x in stems.items():
        if not np.any(x):
            out[name] = x.astype(np.float32)
            continue
        y = random_eq(x, rng, rate)
        y = compress(y / (np.abs(y).max() + 1e-9), rng.uniform(-30, -12), rng.uniform(1.5, 6))
        if name != "drums":
            y = pan(y, rng.uniform(-0.6, 0.6) if name == "other" else rng.uniform(-0.2, 0.2))
        y = reverb(y, drum_room if name == "drums" else band_room,
                   rng.uniform(0.05, 0.3) if name == "drums" else rng.uniform(0.1, 0.5))
        y = y / (np.abs(y).max() + 1e-9)
        out[name] = saturate(y, rng.uniform(1.0, 2.5))
    # Levels: rest stems within 8 dB of each other, drums at the drawn ratio to their sum.
    rest_names = [s for s in out if s != "drums"]
    for s in rest_names:
        if np.any(out[s]):
            out[s] = out[s] * np.float32(10 ** ((rng.uniform(-8, 0) - rms_db(out[s])) / 20))
    mean, spread, lo, hi = DRUMS_TO_REST_DB
    target = float(np.clip(rng.normal(mean, spread), lo, hi))
    rest = sum(out[s] for s in rest_names)
    if "drums" in out and np.any(out["drums"]) and np.any(rest):
        out["drums"] = out["drums"] * np.float32(10 ** ((target + rms_db(rest) - rms_db(out["drums"])) / 20))
    return out, target
