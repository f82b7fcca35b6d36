"""Regenerate benchmarks/RESULTS.md: latency of every shipped format (and Keras when a run is
given) and, with --data, separation quality on that dataset's test split.

    python -m unetsep.benchmarks.results [--data DIR] [--keras RUN_DIR] [--tracks N]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from ..runtime.backends import shipped_model
from ..runtime.files import write_text_atomic

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")


def tried(report: dict) -> str:
    """What was tried for speed, with the figures read from the shipped model's export report."""
    raw = {r["format"]: r for r in report.get("converter_output", [])}
    fmt = {r["format"]: r for r in report["formats"]}
    dyn, static = raw.get("tf2onnx (dynamic batch)"), raw.get("tf2onnx (batch 1)")
    lean = fmt["onnx"]
    lite = [f"{s} {fmt[s]['p50_us']:.0f} us" for s in ("tflite", "fp16.tflite", "int8.tflite") if s in fmt]
    parts = ["Tried, with figures from the shipped model's export report (p50 per frame, batch 1, "
             "1 thread, measured at export):"]
    if dyn and static:
        parts.append(f"tf2onnx's output ({dyn['nodes']} nodes dynamic, {dyn['p50_us']:.0f} us; "
                     f"{static['nodes']} static, {static['p50_us']:.0f} us);")
    parts.append(f"the lean {lean['nodes']}-node graph (BN folded, Gemm for the length-1/2 layers: this "
                 f"is what ships), {lean['p50_us']:.0f} us;")
    if "int8.onnx" in fmt:
        parts.append(f"onnxruntime static QDQ int8, {fmt['int8.onnx']['p50_us']:.0f} us;")
    if lite:
        parts.append(f"LiteRT with XNNPACK: {', '.join(lite)}.")
    parts.append("Not tried yet: sub-pixel Conv for the remaining ConvTranspose, NCHWc layouts, a "
                 "per-op profile.")
    return " ".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset for `unetsep evaluate` (its test split)")
    p.add_argument("--keras", help="run directory: add the Keras reference to the latency table")
    p.add_argument("--tracks", type=int, help="evaluate only the first N test tracks")
    p.add_argument("--seconds", type=float, help="evaluate only the first S seconds of each track")
    p.add_argument("--frames", type=int, default=10000)
    p.add_argument("--live", help="a `unetsep live --json` file to quote in the speed goals")
    p.add_argument("--evaluation", help="reuse this `unetsep evaluate --json` file instead of rerunning it")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    cli = [sys.executable, "-m", "unetsep.cli"]
    bench_cmd = ["bench", "--frames", str(args.frames), "--json", str(tmp / "b.json"),
                 "--plot", str(HERE / "latency.png")]
    subprocess.run(cli + bench_cmd, check=True)
    b = json.loads((tmp / "b.json").read_text())
    # The live case runs one model alone: interleaving with other models evicts its weights from
    # the cache between calls, so time the default model by itself too.
    default = str(shipped_model("default"))
    subprocess.run(cli + ["bench", "--model", default, "--batch", "1", "2", "--frames",
                          str(2 * args.frames), "--json", str(tmp / "alone.json")], check=True)
    for r in json.loads((tmp / "alone.json").read_text())["results"]:
        r["model"] += " (alone)"
        b["results"].append(r)
    if args.keras:
        # Keras is timed in its own process: TensorFlow's spinning thread pools and cache traffic
        # would otherwise slow the runtimes it is interleaved with.
        model = default
        subprocess.run(cli + ["bench", "--model", model, "--keras", args.keras, "--batch", "1", "2",
                              "--frames", str(min(args.frames, 3000)), "--json", str(tmp / "k.json")],
                       check=True)
        b["results"] += [r for r in json.loads((tmp / "k.json").read_text())["results"]
                         if r["model"] == "keras"]
    deadline = min(r["deadline_us"] for r in b["results"])  # one period of the shipped model
    frame = json.loads(Path(shipped_model("default")).with_name("report.json").read_text())["info"]["frame"]
    lines = ["# Results", "", f"Generated {datetime.date.today()} on {machine()} by "
             f"`python -m unetsep.benchmarks.results {' '.join(argv or sys.argv[1:])}`.", "",
             "## Latency per call (`unetsep bench`, 1 intra-op thread, interleaved)", "",
             f"`unetsep {' '.join(bench_cmd[:3])}`; at least {args.frames} frames per configuration. "
             f"Batch 1 = mono live, 2 = stereo live (one {frame}-sample period each), 256 = file mode "
             f"(128 stereo frames). Deadline: {deadline:.0f} us per period.", "",
             "| model | backend | batch | p50 us | p99 us | p99.9 us | max us | us/frame p50 | "
             "deadline misses | x bound | stereo s/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in b["results"]:
        sps = r.get("stereo_seconds_per_second")
        lines.append(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                     f"{r['p999_us']:.0f} | {r['max_us']:.0f} | {r['p50_us_per_frame']:.1f} | "
                     f"{r['deadline_misses']} / {r['calls']} | {r.get('x_bound', float('nan')):.1f} | "
                     f"{'-' if sps is None else f'{sps:.0f}'} |")
    bd = b.get("bound")
    if bd:
        lines += ["", f"Physical bound (same run): {bd['flops_per_frame'] / 1e6:.2f} MFLOP and "
                  f"{bd['weight_bytes'] / 1e6:.2f} MB of float32 weights per frame; this core's float32 "
                  f"GEMM {bd['gemm_gflops']:.1f} GFLOP/s and memory read {bd['memory_gbs']:.1f} GB/s give "
                  f"{bd['compute_bound_us']:.1f} us (compute) and {bd['memory_bound_us']:.1f} us (weights "
                  f"from DRAM) per frame; x bound = p50 per frame / {bd['bound_us']:.1f} us.",
                  "", "![latency CDF](latency.png)"]
    alone = {r["batch"]: r for r in b["results"] if r["model"].endswith("(alone)")}
    if 1 in alone and 2 in alone:
        def verdict(value, goal):
            return f"{value:.0f} us (goal <= {goal}: {'met' if value <= goal else 'NOT met'})"

        lines += ["", "## Speed goals (issue 6), default float32 ONNX alone, 1 thread", "",
                  f"- mono frame p50 {verdict(alone[1]['p50_us'], 250)}, p99.9 "
                  f"{verdict(alone[1]['p999_us'], 600)}",
                  f"- stereo frame (batch 2) p99.9 {verdict(alone[2]['p999_us'], 1000)}",
                  f"- float32 ONNX p50 {verdict(alone[1]['p50_us'], 500)}",
                  f"- file mode, batch 256, 1 thread: "
                  f"{[r for r in b['results'] if r['model'] == 'default' and r['batch'] == 256][0]['stereo_seconds_per_second']:.1f}"
                  " s of stereo audio per second (`unetsep separate` uses 2 threads)"]
        if args.live:
            lv = json.loads(Path(args.live).read_text())
            lines.append(f"- `unetsep live` stereo, 64-sample period, {lv['seconds']:.0f} s on the JACK dummy "
                         f"driver: {lv['callbacks']} callbacks, {lv.get('xruns_after_first_second', lv['xruns'])} "
                         f"xruns after the first second (goal 0: "
                         f"{'met' if lv.get('xruns_after_first_second', lv['xruns']) == 0 else 'NOT met'}), "
                         f"callback p99 {lv.get('callback_p99_us', 0):.0f} us, max {lv.get('callback_max_us', 0):.0f} us")
        lines += ["", tried(json.loads(Path(default).with_name("report.json").read_text()))]
    if args.data:
        ev_cmd = ["evaluate", "--data", args.data, "--json", str(tmp / "e.json"),
                  "--plot", str(HERE / "sdr.png")] + (["--tracks", str(args.tracks)] if args.tracks else []) \
            + (["--seconds", str(args.seconds)] if args.seconds else [])
        if args.evaluation:
            e = json.loads(Path(args.evaluation).read_text())
        else:
            subprocess.run(cli + ev_cmd, check=True)
            e = json.loads((tmp / "e.json").read_text())
        lines += ["", f"## Separation quality (`unetsep evaluate --data {args.data}`)", "",
                  f"{e['target']} on {len(e['tracks'])} test tracks"
                  + (f" (first {args.seconds:g} s of each)" if args.seconds else "") + "; museval v4, median over 1 s frames, "
                  "then over tracks.", "", "| method | SDR | SIR | SAR |", "|---|---|---|---|"]
        for m, s in e["median"].items():
            lines.append(f"| {m} | {s['sdr']:.2f} | {s['sir']:.2f} | {s['sar']:.2f} |")
        lines += ["", "![SDR per track](sdr.png)"]
    write_text_atomic(HERE / "RESULTS.md", "\n".join(lines) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
