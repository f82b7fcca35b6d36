"""Separation quality: museval v4 SDR/SIR/SAR of a model next to its floor and ceilings.

Methods scored on each track, all as a two-source separation (target, everything else):
* the model (each format given),
* `mixture`: the mixture itself as the estimate of both (the floor),
* `irm64` / `irm2048`: oracle ideal ratio masks (power) computed from the true stems at a 64-sample
  STFT window (the runtime's latency) and at 2048 samples (the SiSEC 2018 IRM setting).
Figures are the median over 1 s frames per track, then the median over tracks (the field's
convention for MUSDB18 tables).
"""
from __future__ import annotations

import numpy as np


def museval_scores(references: np.ndarray, estimates: np.ndarray, rate: int) -> dict:
    """references/estimates (2, samples, channels): target and rest -> target's median SDR/SIR/SAR."""
    import museval

    if not np.any(estimates[0]):
        return {"sdr": float("-inf"), "sir": float("nan"), "sar": float("nan")}
    sdr, _, sir, sar = museval.evaluate(references, estimates, win=rate, hop=rate)
    return {"sdr": float(np.nanmedian(sdr[0])), "sir": float(np.nanmedian(sir[0])),
            "sar": float(np.nanmedian(sar[0]))}


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


def score_track(mix: np.ndarray, stems: dict[str, np.ndarray], target: str, estimates: dict,
                rate: int, oracles: bool = True) -> dict:
    """{method: {sdr, sir, sar}} for one track; `estimates` maps a model label to its target estimate."""
    truth = stems[target]
    refs = np.stack([truth, mix - truth])
    methods = dict(estimates)
    if oracles:
        methods["irm64"] = oracle_irm(mix, stems, target, 64)
        methods["irm2048"] = oracle_irm(mix, stems, target, 2048)
    out = {}
    for name, est in methods.items():
        out[name] = museval_scores(refs, np.stack([est, mix - est]), rate)
    out["mixture"] = museval_scores(refs, np.stack([mix, mix]), rate)
    return out


def evaluate(data: str, models: list, target: str = "drums", subset: str = "test",
             max_tracks: int | None = None, seconds: float | None = None, progress=None,
             gain_db: float = 0.0, oracles: bool = True) -> dict:
    """Score `models` (loaded runtime backends) on a musdb-layout folder's `subset` tracks.

    `gain_db` scales the mixture fed to the models (and the references with it: SDR then measures
    the estimate rescaled to the original level). Tracks a rendered dataset's manifest marks as
    using held-out drum kits or sound sets are reported apart from the in-kit ones ("groups").
    """
    from ..runtime.separate import estimate, model_name
    from ..train.dataset import open_db
    from ..train.render import heldout_tracks
    from pathlib import Path

    from ..runtime.errors import UserError

    rate = models[0].info.sample_rate
    db = open_db(data, subset, None, target, rate)
    tracks = db.tracks[:max_tracks] if max_tracks else db.tracks
    if not tracks:
        raise UserError(f"--data {data} has no {subset} tracks ({subset}/ is empty or missing); "
                        f"evaluate scores the {subset} split: add tracks there")
    if seconds is not None and seconds < 1.0:
        raise UserError(f"--seconds {seconds:g} is shorter than museval's 1 s window; pass 1 or more")
    heldout = heldout_tracks(data)
    gain = np.float32(10 ** (gain_db / 20))
    rows = []
    for t in tracks:
        mix = t.audio.astype(np.float32) * gain
        stems = {k: v.audio.astype(np.float32) * gain for k, v in t.sources.items()}
        n = len(mix) if seconds is None else min(len(mix), int(seconds * rate))
        n = n // models[0].info.frame * models[0].info.frame  # museval runs ~1x real time
        if n < rate:  # museval scores whole 1 s windows
            raise UserError(f"track {t.name!r} is shorter than museval's 1 s window; remove it from "
                            f"{data}/{subset}/ or pass --tracks")
        mix, stems = mix[:n], {k: v[:n] for k, v in stems.items()}
        ests = {model_name(Path(m.path), target): estimate(m, mix) for m in models}
        scores = score_track(mix, stems, target, ests, rate, oracles=oracles)
        rows.append({"name": t.name, "scores": scores, "heldout": heldout.get(t.name)})
        if progress:
            progress(t.name, scores)
    methods = list(rows[0]["scores"]) if rows else []

    def medians(rs: list) -> dict:
        return {m: {k: float(np.nanmedian([r["scores"][m][k] for r in rs])) for k in ("sdr", "sir", "sar")}
                for m in methods}

    groups = {}
    for label, flag in (("in-kit", False), ("held-out", True)):
        rs = [r for r in rows if r["heldout"] is flag]
        if rs:
            groups[label] = {"tracks": len(rs), "median": medians(rs)}
    return {"target": target, "data": str(data), "subset": subset, "seconds_per_track": seconds,
            "gain_db": gain_db, "methods": methods, "median": medians(rows) if rows else {},
            "groups": groups, "rows": rows}
