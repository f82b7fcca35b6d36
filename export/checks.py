"""How close a converted model is to Keras: max error, output SNR, drums SDR (museval), speed."""
from __future__ import annotations

import time

import numpy as np


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10*log10(reference energy / error energy); inf when identical."""
    err = np.sum((reference.astype(np.float64) - estimate) ** 2)
    ref = np.sum(reference.astype(np.float64) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(ref / err))


def to_frames(audio: np.ndarray, frame: int) -> np.ndarray:
    """(samples, channels) -> (channels * samples // frame, frame, 1), channel after channel."""
    n = audio.shape[0] // frame * frame
    return np.ascontiguousarray(audio[:n].T.reshape(-1, frame, 1), dtype=np.float32)


def from_frames(frames: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of to_frames: (channels * n, frame, 1) -> (n * frame, channels)."""
    return frames.reshape(channels, -1).T


def run_batched(run, frames: np.ndarray, batch: int = 1024) -> np.ndarray:
    return np.concatenate([run(frames[i:i + batch]) for i in range(0, len(frames), batch)])


def drums_sdr(mix: np.ndarray, target: np.ndarray, estimate: np.ndarray, rate: int) -> float:
    """museval v4 SDR of the target estimate, median over 1 s frames.

    Scored as a two-source separation (target, mixture minus target), as a user of the two stems
    hears it. All arrays (samples, channels).
    """
    import museval

    if not np.any(estimate):
        return float("-inf")  # museval cannot score a silent estimate; it separated nothing
    refs = np.stack([target, mix - target])
    ests = np.stack([estimate, mix - estimate])
    sdr, _, _, _ = museval.evaluate(refs, ests, win=rate, hop=rate)
    return float(np.nanmedian(sdr[0]))


def per_frame_us(run, frame: int, calls: int = 1000, warmup: int = 100) -> float:
    """Median microseconds of one batch-1 call on a fixed random frame."""
    x = np.random.default_rng(0).standard_normal((1, frame, 1)).astype(np.float32) * 0.1
    for _ in range(warmup):
        run(x)
    times = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        run(x)
        times[i] = time.perf_counter() - t
    return float(np.median(times) * 1e6)
