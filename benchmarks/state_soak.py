"""Long streaming soak of a version-2 model: does its output fade or its state drift?

    python -m unetsep.benchmarks.state_soak [--model M.onnx] --audio FILE... [--seconds 120]
        [--json soak.json]

The audio (files end to end, looped to `seconds`) is streamed one hop per call, as live audio runs
it, and every 10 s window reports the input and output level (dBFS RMS), the output relative to
the input, and the norm of the carried state at the window's end (all of it, and the recurrent
memory alone). Loop one song to compare the same music early and late. A causal model trained only on zero-padded chunks
is reported to decay to silence within seconds of such streaming; a healthy one keeps its
output-to-input ratio and state norm steady from window to window.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

WINDOW_S = 10.0


def soak(model, audio: np.ndarray, seconds: float) -> list[dict]:
    """audio (samples, channels) looped to `seconds`, streamed hop by hop -> one row per window."""
    from ..runtime.stream import StatefulRunner

    info = model.info
    if not info.streaming:
        raise ValueError("the state soak needs a streaming (version 2) model")
    frame, channels = info.frame, audio.shape[1]
    hops = int(seconds * info.sample_rate) // frame
    per_window = int(WINDOW_S * info.sample_rate) // frame
    reps = -(-hops * frame // len(audio))
    x = np.ascontiguousarray(np.tile(audio, (reps, 1))[:hops * frame].T)  # (channels, samples)
    runner = StatefulRunner(model, channels, [1])
    rows, acc = [], {"in": 0.0, "out": 0.0, "state": 0.0}
    for n in range(hops):
        runner.x[1][:, :, 0] = x[:, n * frame:(n + 1) * frame]
        y = runner(1)
        acc["in"] += float(np.sum(runner.x[1] ** 2))
        acc["out"] += float(np.sum(y ** 2))
        if (n + 1) % per_window == 0:
            samples = per_window * frame * channels
            norm = np.sqrt(sum(float(np.sum(v ** 2)) for v in runner.state.values()))
            # The recurrent memory alone (the conv caches only hold the last few samples heard).
            mem = np.sqrt(sum(float(np.sum(runner.state[s.input] ** 2)) for s in info.states
                              if s.name == "memory"))
            rin, rout = (10 * np.log10(acc[k] / samples + 1e-20) for k in ("in", "out"))
            rows.append({"end_s": (n + 1) * frame / info.sample_rate, "input_dbfs": rin,
                         "output_dbfs": rout, "output_vs_input_db": rout - rin, "state_norm": norm,
                         "memory_norm": mem})
            acc = {"in": 0.0, "out": 0.0, "state": 0.0}
    return rows


def main(argv: list[str] | None = None) -> int:
    import soundfile as sf

    from ..runtime.backends import open_model
    from ..runtime.errors import UserError
    from ..runtime.files import write_text_atomic

    p = argparse.ArgumentParser(prog="python -m unetsep.benchmarks.state_soak",
                                description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a version-2 .onnx model (default: the shipped one)")
    p.add_argument("--audio", nargs="+", required=True, help="audio files at the model's rate")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    try:
        model = open_model(args.model, "cpu", say=lambda m: print(m, file=sys.stderr))
        parts = [sf.read(f, dtype="float32", always_2d=True)[0] for f in args.audio]
        rows = soak(model, np.concatenate(parts), args.seconds)
    except (UserError, ValueError) as e:
        print(f"state_soak: error: {e}", file=sys.stderr)
        return 2
    print(f"{'until':>6s} {'input dBFS':>11s} {'output dBFS':>12s} {'out-in dB':>10s} {'state norm':>11s} "
          f"{'memory norm':>12s}")
    for r in rows:
        print(f"{r['end_s']:5.0f}s {r['input_dbfs']:11.1f} {r['output_dbfs']:12.1f} "
              f"{r['output_vs_input_db']:10.2f} {r['state_norm']:11.2f} {r['memory_norm']:12.2f}")
    ratio = [r["output_vs_input_db"] for r in rows[1:]]
    mems = [r["memory_norm"] for r in rows[1:]]
    if ratio:
        print(f"after the first window: output-to-input ratio {min(ratio):.2f}..{max(ratio):.2f} dB, "
              f"memory norm {min(mems):.2f}..{max(mems):.2f}")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps({"model": str(model.path), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
