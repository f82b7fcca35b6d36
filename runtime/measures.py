"""Every measure in one place: per-frame timing (tails, deadline misses), output SNR, museval SDR
and the oracle masks it is compared with. Export's checks, `bench`, `evaluate`, `demo` and
benchmarks/ all call these; the frame, the rate and so the deadline come from the model's
ModelInfo, never from numbers typed by hand.

No heavy import at module level (the runtime stays TensorFlow-free): museval and scipy are
imported inside the functions that need them (the train extra).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .contract import ModelInfo


def deadline_us(info: ModelInfo, periods: int = 1) -> float:
    """Microseconds of audio in `periods` frames of `info`: the time one call may take live
    (64 samples at 44.1 kHz: 1451 us)."""
    return periods * info.frame / info.sample_rate * 1e6


def periods_per_call(batch: int) -> int:
    """Audio periods one call at `batch` covers: batch 1 = one mono frame, batch 2 = one stereo
    frame, batch 256 = 128 stereo frames (file mode)."""
    return max(1, batch // 2)


@dataclass
class Timed:
    """One configuration to time: `run(x (batch, info.context, 1)) -> (batch, info.frame, 1)`
    (runtime.stream.frame_call builds it as live runs it), plus labels copied into the result."""
    run: Callable[[np.ndarray], object]
    info: ModelInfo
    batch: int
    labels: dict = field(default_factory=dict)  # model, backend, provider: for the report


def time_calls(configs: list[Timed], frames: int, warmup: int = 200, seed: int = 0) -> list[dict]:
    """Time each configuration for >= `frames` frames, interleaved round-robin (A B C A B C ...)
    so that drift on a shared machine hits all alike. Returns one dict per configuration: its
    labels, batch, frames, calls, warmup_us_per_call, p50/p99/p999/max_us per call,
    p50_us_per_frame, deadline_us, deadline_misses, realtime_factor, stereo_seconds_per_second
    (batch >= 2) and times_us (calls,)."""
    rng = np.random.default_rng(seed)
    xs, times, calls = [], [], []
    warm = []
    for c in configs:
        x = (rng.standard_normal((c.batch, c.info.context, 1)) * 0.1).astype(np.float32)
        t = time.perf_counter()
        for _ in range(warmup):
            c.run(x)
        warm.append((time.perf_counter() - t) / max(1, warmup) * 1e6)
        xs.append(x)
        calls.append(max(1, -(-frames // c.batch)))
        times.append(np.empty(calls[-1]))
    for i in range(max(calls, default=0)):
        for c, x, n, ts in zip(configs, xs, calls, times):
            if i < n:
                t = time.perf_counter()
                c.run(x)
                ts[i] = time.perf_counter() - t
    return [summarize(ts * 1e6, c, w) for c, ts, w in zip(configs, times, warm)]


def summarize(us: np.ndarray, c: Timed, warmup_us: float = float("nan")) -> dict:
    """Tails and deadline misses of `us` (calls,) microseconds per call of configuration `c`."""
    periods = periods_per_call(c.batch)
    limit = deadline_us(c.info, periods)
    p50 = float(np.percentile(us, 50))
    return {**c.labels, "batch": c.batch, "frames": int(len(us) * c.batch), "calls": int(len(us)),
            "warmup_us_per_call": warmup_us, "p50_us": p50, "p99_us": float(np.percentile(us, 99)),
            "p999_us": float(np.percentile(us, 99.9)), "max_us": float(us.max()),
            "p50_us_per_frame": p50 / c.batch, "deadline_us": limit,
            "deadline_misses": int((us > limit).sum()), "realtime_factor": p50 / limit,
            "stereo_seconds_per_second": limit / p50 if c.batch >= 2 else None, "times_us": us}


def time_model(model, batch: int = 1, frames: int = 1000, warmup: int = 100) -> dict:
    """time_calls for one loaded model at `batch`, one frame (one hop) per call as live runs it."""
    from .stream import frame_call

    return time_calls([Timed(frame_call(model, batch), model.info, batch)], frames, warmup)[0]


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10*log10(reference energy / error energy) over arrays of one shape; inf when identical."""
    ref = reference.astype(np.float64)
    err = np.sum((ref - estimate) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref ** 2) / err))


def museval_sdr(references: np.ndarray, estimates: np.ndarray, rate: int,
                sir_sar: bool = True) -> dict:
    """references/estimates (2, samples, channels): target and rest -> the target's {sdr, sir,
    sar}, museval v4, median over 1 s frames. An all-zero estimate scores -inf SDR.

    `sir_sar=False`: {sdr} alone, the same figure ~4x faster. museval's SDR of a source is its
    reference against the estimate's error, frame by frame (the other sources enter SIR and SAR
    only), so the target is scored as the one source; what the other source still decides is
    which frames count: museval leaves out a frame where any reference or estimate is silent (an
    accompaniment that rests), and so does this. tests/test_benchmarks.py checks the equality."""
    import museval

    if not np.any(estimates[0]):
        return {"sdr": float("-inf"), "sir": float("nan"), "sar": float("nan")}
    if sir_sar:
        sdr, _, sir, sar = museval.evaluate(references, estimates, win=rate, hop=rate)
        return {"sdr": float(np.nanmedian(sdr[0])), "sir": float(np.nanmedian(sir[0])),
                "sar": float(np.nanmedian(sar[0]))}
    from museval.metrics import Framing

    sdr = museval.evaluate(references[:1], estimates[:1], win=rate, hop=rate)[0][0]  # (frames,)
    others = [*references[1:], *estimates[1:]]
    for t, frame in enumerate(Framing(rate, rate, references.shape[1])):
        if any(not np.any(o[frame].sum(axis=-1)) for o in others):  # museval's silence test
            sdr[t] = np.nan
    return {"sdr": float(np.nanmedian(sdr))}


def target_sdr(mix: np.ndarray, target: np.ndarray, estimate: np.ndarray, rate: int,
               sir_sar: bool = True) -> dict:
    """museval_sdr of a target `estimate` (samples, channels) as a two-source separation of `mix`:
    (target, mix - target) against (estimate, mix - estimate)."""
    return museval_sdr(np.stack([target, mix - target]), np.stack([estimate, mix - estimate]), rate,
                       sir_sar)


def mixture_sdr(mix: np.ndarray, target: np.ndarray, rate: int, sir_sar: bool = True) -> dict:
    """The floor: museval_sdr of the mixture itself taken as the estimate of both sources."""
    return museval_sdr(np.stack([target, mix - target]), np.stack([mix, mix]), rate, sir_sar)


def oracle_irm(mix: np.ndarray, stems: dict[str, np.ndarray], target: str, window: int) -> np.ndarray:
    """The target through its ideal (power) ratio mask at an STFT of `window` samples, hop window/2.

    mix and stems (samples, channels); returns (samples, channels).
    """
    from scipy.signal import istft, stft

    def spec(x):
        return stft(x.T, nperseg=window, noverlap=window // 2, window="hann")[2]  # (ch, freq, time)

    power = {k: np.abs(spec(v)) ** 2 for k, v in stems.items()}
    total = sum(power.values()) + 1e-12
    mask = power[target] / total
    est = istft(mask * spec(mix), nperseg=window, noverlap=window // 2, window="hann")[1].T
    out = np.zeros_like(mix)
    n = min(len(est), len(mix))
    out[:n] = est[:n]
    return out
