"""Level invariance: the same model's drums SDR when the whole song is played louder or quieter.

    python -m unetsep.benchmarks.level --data DIR [--model M.onnx] [--gains -18 -12 -6 0 6]
        [--tracks 8] [--seconds 10] [--json level.json]

A separator must not care how loud the song is. For each input gain the test songs (mixture and
references alike) are scaled, separated and scored with museval (the model and the mixture-as-
estimate only; SDR compares the estimate at the scaled level, i.e. rescaled to the original).
Prints the median SDR per gain and the spread (max - min); the goal is a spread <= 0.5 dB.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def sweep(data: str, model, gains: list[float], tracks: int | None, seconds: float | None,
          progress=None) -> dict:
    """{gains, median_sdr per gain, spread_db, per-gain evaluate() results} for one model."""
    from .quality import evaluate

    runs = []
    for g in gains:
        res = evaluate(data, [model], max_tracks=tracks, seconds=seconds, gain_db=g, oracles=False)
        runs.append(res)
        if progress:
            progress(g, res)
    name = runs[0]["methods"][0]
    sdrs = [r["median"][name]["sdr"] for r in runs]
    return {"model": name, "gains_db": gains, "median_sdr": sdrs, "spread_db": max(sdrs) - min(sdrs),
            "mixture_sdr": [r["median"]["mixture"]["sdr"] for r in runs],
            "groups": [{k: v["median"][name]["sdr"] for k, v in r["groups"].items()} for r in runs]}


def main(argv: list[str] | None = None) -> int:
    from ..runtime.backends import open_model
    from ..runtime.errors import UserError
    from ..runtime.files import write_text_atomic

    p = argparse.ArgumentParser(prog="python -m unetsep.benchmarks.level", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="musdb-layout folder (its test split is scored)")
    p.add_argument("--model", help="model file (default: the shipped drums.onnx)")
    p.add_argument("--gains", type=float, nargs="+", default=[-18.0, -12.0, -6.0, 0.0, 6.0])
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    try:
        model = open_model(args.model, "cpu", threads=2, say=lambda m: print(m, file=sys.stderr))
        res = sweep(args.data, model, args.gains, args.tracks, args.seconds,
                    progress=lambda g, r: print(f"gain {g:+5.1f} dB: {res_line(r)}", flush=True))
    except UserError as e:
        print(f"level: error: {e}", file=sys.stderr)
        return 2
    print(f"{res['model']}: median drums SDR over gains {res['gains_db']}: "
          + ", ".join(f"{s:.2f}" for s in res["median_sdr"]) + f" dB; spread {res['spread_db']:.2f} dB")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(res, indent=2))
    return 0


def res_line(r: dict) -> str:
    name = r["methods"][0]
    groups = ", ".join(f"{k} {v['median'][name]['sdr']:.2f}" for k, v in r["groups"].items())
    return f"{name} {r['median'][name]['sdr']:.2f} dB" + (f" ({groups})" if groups else "")


if __name__ == "__main__":
    sys.exit(main())
