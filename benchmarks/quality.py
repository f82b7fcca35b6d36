"""Separation quality: museval v4 SDR/SIR/SAR of a model next to its floor and ceilings.

Methods scored on each track, all as a two-source separation (target, everything else):
* the model (each format given),
* `mixture`: the mixture itself as the estimate of both (the floor),
* `irm<frame>` / `irm2048`: oracle ideal ratio masks (power) computed from the true stems at an STFT
  window of the model's frame (its latency; irm64) and at 2048 samples (the SiSEC 2018 IRM setting).
The measures themselves live in runtime/measures.py.
Figures are the median over 1 s frames per track, then the median over tracks (the field's
convention for MUSDB18 tables).
"""
from __future__ import annotations

import numpy as np

from ..runtime.measures import mixture_sdr, museval_sdr, oracle_irm


def score_track(mix: np.ndarray, stems: dict[str, np.ndarray], target: str, estimates: dict,
                rate: int, oracles: bool = True, frame: int = 64) -> dict:
    """{method: {sdr, sir, sar}} for one track; `estimates` maps a model label to its target
    estimate (samples, channels); `frame` is the models' frame (ModelInfo.frame), the short oracle's window."""
    truth = stems[target]
    refs = np.stack([truth, mix - truth])
    methods = dict(estimates)
    if oracles:
        methods[f"irm{frame}"] = oracle_irm(mix, stems, target, frame)
        methods["irm2048"] = oracle_irm(mix, stems, target, 2048)
    out = {}
    for name, est in methods.items():
        out[name] = museval_sdr(refs, np.stack([est, mix - est]), rate)
    out["mixture"] = mixture_sdr(mix, truth, rate)
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

    for m in models:
        if m.info.target != target:
            raise UserError(f"{m.path} separates {m.info.target}, not {target}; pass --target "
                            f"{m.info.target} or a {target} model")
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
        frame = models[0].info.frame
        n = n // frame * frame  # museval runs ~1x real time
        whole = -(-rate // frame) * frame  # the fewest whole frames that fill museval's 1 s window
        if n < rate and len(mix) >= whole:  # --seconds 1: round up rather than refuse
            n = whole
        if n < rate:  # museval scores whole 1 s windows
            raise UserError(f"track {t.name!r} is shorter than museval's 1 s window; remove it from "
                            f"{data}/{subset}/ or pass --tracks")
        mix, stems = mix[:n], {k: v[:n] for k, v in stems.items()}
        ests = {model_name(Path(m.path), target): estimate(m, mix) for m in models}
        scores = score_track(mix, stems, target, ests, rate, oracles=oracles, frame=models[0].info.frame)
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
