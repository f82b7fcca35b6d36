"""What a drums model gets wrong, band by band: kick loss, cymbal bleed, pumping.

    python -m unetsep.benchmarks.bands --data DIR [--model M.onnx ...] [--tracks 8] [--seconds 10]
        [--json bands.json] [--plot bands.png]

SDR says how wrong an estimate is, not how it sounds wrong. This splits each test track's true
drums, the estimate and the mixture into bands (a 4th-order Butterworth band-pass, zero phase)
and reports, per band, medians over tracks of:

- `level_db`: estimate energy over true drums energy. Below 0: drums lost in that band (a weak
  kick shows in the lowest band); above 0: something else kept as drums.
- `sdr_db`: 10 log10(|drums|^2 / |estimate - drums|^2) in that band, whole track (not museval).
- `bleed_db`: energy of what the estimate keeps from the *rest* (mixture - drums), over the true
  drums' energy, from the least-squares projection of the error on the rest. Cymbal bleed is
  guitars and voices kept in the top bands.

and, over the whole band, `pumping_db`: the standard deviation over 20 ms windows of the level of
the no-drums output against the true rest (dB), on windows where the rest is within 30 dB of its
peak: a mask that ducks the accompaniment on every hit makes this large. The mixture taken as
the estimate is scored as the floor of the band figures (its no-drums output is silence, so it has
no pumping figure).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BANDS = ((20.0, 150.0, "kick"), (150.0, 1000.0, "low-mid"), (1000.0, 5000.0, "snare/high-mid"),
         (5000.0, 18000.0, "cymbals"))
WINDOW_S = 0.02


def _band(x: np.ndarray, lo: float, hi: float, rate: int) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [lo, min(hi, 0.45 * rate)], btype="bandpass", fs=rate, output="sos")
    return sosfiltfilt(sos, x, axis=0)


def _db(num: float, den: float) -> float:
    return float(10 * np.log10((num + 1e-12) / (den + 1e-12)))


def band_scores(mix: np.ndarray, drums: np.ndarray, est: np.ndarray, rate: int) -> dict:
    """Per-band figures (see the module docstring) for one track; arrays (samples, channels)."""
    rest = mix - drums
    out = {}
    for lo, hi, name in BANDS:
        d, e, r = (_band(a.astype(np.float64), lo, hi, rate) for a in (drums, est, rest))
        err = e - d
        # The part of the error that is the rest, scaled: what the mask let through from it.
        g = float(np.sum(err * r) / (np.sum(r * r) + 1e-12))
        out[name] = {"level_db": _db(np.sum(e * e), np.sum(d * d)),
                     "sdr_db": _db(np.sum(d * d), np.sum(err * err)),
                     "bleed_db": _db(np.sum((max(g, 0.0) * r) ** 2), np.sum(d * d))}
    win = int(WINDOW_S * rate)
    n = len(mix) // win * win

    def env(a):  # RMS per window, both channels together
        return np.sqrt(np.mean(a[:n].reshape(-1, win * a.shape[1]) ** 2, axis=1) + 1e-12)

    true_rest, out_rest = env(rest), env(mix - est)
    keep = true_rest > true_rest.max() * 10 ** (-30 / 20)
    ratio = 20 * np.log10(out_rest[keep] / true_rest[keep])
    out["pumping_db"] = float(np.std(ratio)) if keep.any() else None
    return out


def run(data: str, models: list, tracks: int | None, seconds: float | None, progress=None) -> dict:
    """{model name: {band: medians, pumping_db}, tracks: [...]} over the test split of `data`."""
    from ..runtime.separate import estimate, model_name
    from ..train.dataset import open_db

    rate = models[0].info.sample_rate
    db = open_db(data, "test", None, "drums", rate)
    chosen = db.tracks[:tracks] if tracks else db.tracks
    per = {model_name(Path(m.path), m.info.target): [] for m in models}
    per["mixture"] = []
    for t in chosen:
        mix = t.audio.astype(np.float32)
        drums = t.sources["drums"].audio.astype(np.float32)
        n = len(mix) if seconds is None else min(len(mix), int(seconds * rate))
        mix, drums = mix[:n], drums[:n]
        for m in models:
            per[model_name(Path(m.path), m.info.target)].append(band_scores(mix, drums, estimate(m, mix), rate))
        floor = band_scores(mix, drums, mix, rate)
        floor["pumping_db"] = None  # its no-drums output is silence: no level to follow
        per["mixture"].append(floor)
        if progress:
            progress(t.name)
    result = {"tracks": [t.name for t in chosen], "seconds": seconds, "bands_hz": BANDS}
    for name, rows in per.items():
        result[name] = {b: {k: float(np.median([r[b][k] for r in rows])) for k in rows[0][b]}
                        for _, _, b in BANDS}
        pumps = [r["pumping_db"] for r in rows if r["pumping_db"] is not None]
        result[name]["pumping_db"] = float(np.median(pumps)) if pumps else None
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..runtime.files import save_figure

    names = [k for k in result if isinstance(result[k], dict) and "pumping_db" in result[k]]
    bands = [b for _, _, b in BANDS]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("level_db", "sdr_db", "bleed_db"),
                              ("estimate / true drums level", "SDR in the band", "rest kept, vs drums")):
        for i, name in enumerate(names):
            ax.bar(np.arange(len(bands)) + (i - (len(names) - 1) / 2) * 0.8 / len(names),
                   [result[name][b][key] for b in bands], 0.8 / len(names), label=name)
        ax.set_xticks(range(len(bands)), bands, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("dB")
        ax.axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from ..runtime.backends import open_model
    from ..runtime.errors import UserError
    from ..runtime.files import check_report_paths, write_text_atomic

    p = argparse.ArgumentParser(prog="python -m unetsep.benchmarks.bands", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="musdb-layout folder (its test split is scored)")
    p.add_argument("--model", nargs="+", help="models (default: the shipped drums.onnx)")
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--plot", help="write a bar chart here (.png, .pdf or .svg)")
    args = p.parse_args(argv)
    try:
        check_report_paths(args.json, args.plot)
        say = lambda m: print(m, file=sys.stderr)  # noqa: E731
        models = [open_model(m, "cpu", threads=2, say=say) for m in (args.model or [None])]
        res = run(args.data, models, args.tracks, args.seconds, progress=lambda n: say(f"scored {n}"))
    except UserError as e:
        print(f"bands: error: {e}", file=sys.stderr)
        return 2
    names = [k for k in res if isinstance(res[k], dict) and "pumping_db" in res[k]]
    print(f"median over {len(res['tracks'])} tracks x {args.seconds:g} s: level / SDR / rest kept (dB)")
    print(f"{'model':<22}" + "".join(f"{b:>24}" for _, _, b in BANDS) + f"{'pumping':>10}")
    for name in names:
        cells = "".join(f"{res[name][b]['level_db']:>8.1f}{res[name][b]['sdr_db']:>8.1f}"
                        f"{res[name][b]['bleed_db']:>8.1f}" for _, _, b in BANDS)
        pump = res[name]["pumping_db"]
        print(f"{name:<22}{cells}{'-' if pump is None else f'{pump:.2f}':>10}")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(res, indent=2))
    if args.plot:
        plot(res, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
