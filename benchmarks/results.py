"""Regenerate benchmarks/RESULTS.md: latency of every shipped format (and Keras when a run is
given) and, with --data, separation quality on that dataset's test split.

    python -m unetsep.benchmarks.results [--data DIR] [--keras RUN_DIR] [--tracks N] [--seconds S]
        [--evaluation E.json] [--live L.json ...] [--level LEVEL.json ...] [--bands BANDS.json]
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

from ..runtime.backends import live_model_path, shipped_model
from ..runtime.files import write_text_atomic
from .latency import x_bound
from ..runtime.separate import model_name

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
    """What was tried for speed, with the figures read from a shipped model's export report."""
    raw = {r["format"]: r for r in report.get("converter_output", [])}
    fmt = {r["format"]: r for r in report["formats"]}
    dyn, static = raw.get("tf2onnx (dynamic batch)"), raw.get("tf2onnx (batch 1)")
    lean = fmt["onnx"]
    lite = [f"{s} {fmt[s]['p50_us']:.0f} us" for s in ("tflite", "fp16.tflite", "int8.tflite") if s in fmt]
    parts = [f"Tried for the {report['info']['preset']} model, with figures from its export report "
             "(p50 per frame, batch 1, 1 thread, measured at export):"]
    if dyn and static:
        parts.append(f"tf2onnx's output ({dyn['nodes']} nodes dynamic, {dyn['p50_us']:.0f} us; "
                     f"{static['nodes']} static, {static['p50_us']:.0f} us);")
    parts.append(f"the lean {lean['nodes']}-node graph built from the weights (this is what ships), "
                 f"{lean['p50_us']:.0f} us;")
    if "int8.onnx" in fmt:
        parts.append(f"onnxruntime static QDQ int8, {fmt['int8.onnx']['p50_us']:.0f} us;")
    if lite:
        parts.append(f"LiteRT with XNNPACK: {', '.join(lite)}.")
    return " ".join(parts)


def _bench(cli: list[str], models: list[str], frames: int, out: Path, batches=None, plot=None) -> list[dict]:
    cmd = ["bench", "--frames", str(frames), "--json", str(out)] + [a for m in models for a in ("--model", m)]
    cmd += ["--batch", *map(str, batches)] if batches else []
    cmd += ["--plot", str(plot)] if plot else []
    subprocess.run(cli + cmd, check=True)
    return json.loads(out.read_text())


def _sdr_cell(e: dict, group: str | None, method: str) -> str:
    med = e["median"] if group is None else e.get("groups", {}).get(group, {}).get("median", {})
    return f"{med[method]['sdr']:.2f}" if method in med else "-"


def cuda_section(path: str) -> list[str]:
    """RESULTS.md lines quoting a `benchmarks/cuda_latency.py` JSON file (timed on a lent GPU:
    CI and this machine have none)."""
    c = json.loads(Path(path).read_text())
    lines = ["", "## CUDA provider (`python -m unetsep.benchmarks.cuda_latency`)", "",
             f"{c.get('device', 'a CUDA device')}; {c.get('onnxruntime', '')}; {c.get('date', '')}. "
             "Each call copies the frame (or hop) host -> device, runs with IOBinding on device-resident "
             "tensors (a stream model's states ping-pong on the GPU), and copies the estimate back."
             + (f" Models: {c['weights']}." if c.get("weights") else ""), "",
             "| model | streams | hops per call | CUDA graph | p50 us | p99 us | p99.9 us | max us | audio s/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in c["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['channels']} | {r['hops']} | {r['cuda_graph']} | "
                         f"refused: {r['error']} |||||")
        else:
            lines.append(f"| {r['model']} | {r['channels']} | {r['hops']} | {r['cuda_graph']} | "
                         f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p999_us']:.0f} | {r['max_us']:.0f} | "
                         f"{r['seconds_per_second']:.1f} |")
    shapes = c.get("shape_changes") or {}
    if isinstance(shapes, list):  # rows alone
        shapes = {"rows": shapes}
    rows = shapes.get("rows", [])
    if rows:
        lines += ["", "One CUDA session whose input shape changes between calls (host arrays, "
                  "`session.run`, as the runtime calls it): " + shapes.get("what", "") + ".", "",
                  "| model | cudnn_conv_algo_search | calls | p50 us | p99 us |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['cudnn_conv_algo_search']} | {r['calls']} | "
                         + (f"{r['p50_us']:.0f} | {r['p99_us']:.0f} |" if "p50_us" in r else f"{r['note']} ||"))
    host = c.get("host_path")
    if host:
        lines += ["", f"The runtime's own call path ({host['what']}), CPU and CUDA on the same machine:", "",
                  "| model | provider | batch | p50 us | p99 us |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['provider']} | {r['batch']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |"
                  for r in host["rows"]]
    sep = c.get("separate")
    if sep:
        lines += ["", f"{sep['what']}: CUDA {sep['cuda_s']:.2f} s, CPU (2 threads) {sep['cpu_2_threads_s']:.2f} s; "
                  f"largest difference between the two outputs {sep['max_abs_diff_cuda_vs_cpu']:.1e} "
                  f"(output RMS {sep['output_rms']:.3f})."]
    if c.get("node_placement"):
        lines += ["", c["node_placement"] + "."]
    for note in c.get("notes", []):  # figures measured beside the tables (how: in the note)
        lines += ["", note]
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset for `unetsep evaluate` (its test split)")
    p.add_argument("--keras", help="run directory of the default model: add Keras to the latency table")
    p.add_argument("--tracks", type=int, help="evaluate only the first N test tracks")
    p.add_argument("--seconds", type=float, help="evaluate only the first S seconds of each track")
    p.add_argument("--frames", type=int, default=10000)
    p.add_argument("--live", nargs="+", default=[],
                   help="`unetsep live --json` files to quote in the speed goals (e.g. the default "
                        "model's and the identity floor's)")
    p.add_argument("--evaluation", help="reuse this `unetsep evaluate --json` file instead of rerunning it")
    p.add_argument("--level", nargs="+", default=[],
                   help="`python -m unetsep.benchmarks.level --json` files to quote")
    p.add_argument("--bands", help="a `python -m unetsep.benchmarks.bands --json` file to quote")
    p.add_argument("--cuda", help="a `python -m unetsep.benchmarks.cuda_latency --json` file to quote "
                   "(timed on a machine with a GPU)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    cli = [sys.executable, "-m", "unetsep.cli"]
    default = shipped_model("default")
    seed = shipped_model("seed")
    # `unetsep live` runs the default's LiteRT int8 file where LiteRT is installed: time that too.
    lite = live_model_path("default", "auto", "cpu")
    lite = lite if lite != default else None
    shipped = [str(x) for x in sorted(default.parent.glob("*.onnx"))] + ([str(lite)] if lite else []) \
        + [str(seed)]
    b = _bench(cli, shipped, args.frames, tmp / "b.json", plot=HERE / "latency.png")
    # The live case runs one model alone: interleaving with other models evicts its weights from
    # the cache between calls, so time each float32 model (and the live default) by itself too.
    # Named as bench names them (model_name): default, seed, default-int8-tflite.
    alone = [(model_name(p, p.name.split(".")[0]), p) for p in (default, seed, lite) if p]
    bounds = b.get("bounds") or ({"default": b["bound"]} if b.get("bound") else {})
    for name, path in alone:
        for r in _bench(cli, [str(path)], 2 * args.frames, tmp / f"{name}-alone.json", [1, 2])["results"]:
            r["model"] = f"{name} (alone)"
            # A run of one LiteRT file measures no bound: that of its float model in the main run.
            xb = None if "x_bound" in r else x_bound(name, r["p50_us_per_frame"], bounds)
            if xb is not None:
                r["x_bound"] = xb
            b["results"].append(r)
    if args.keras:
        # Keras is timed in its own process: TensorFlow's spinning thread pools and cache traffic
        # would otherwise slow the runtimes it is interleaved with.
        subprocess.run(cli + ["bench", "--model", str(default), "--keras", args.keras, "--batch", "1", "2",
                              "--frames", str(min(args.frames, 3000)), "--json", str(tmp / "k.json")],
                       check=True)
        b["results"] += [r for r in json.loads((tmp / "k.json").read_text())["results"]
                         if r["model"] == "keras"]
    deadline = min(r["deadline_us"] for r in b["results"])  # one period of the shipped model
    frame = json.loads(default.with_name("report.json").read_text())["info"]["frame"]
    lines = ["# Results", "", f"Generated {datetime.date.today()} on {machine()} by "
             f"`python -m unetsep.benchmarks.results {' '.join(argv or sys.argv[1:])}`.", "",
             "## Latency per call (`unetsep bench`, 1 intra-op thread, interleaved)", "",
             f"`unetsep bench --frames {args.frames} --model` (the shipped default's formats and the "
             f"seed); at least {args.frames} frames per configuration. Batch 1 = mono live, 2 = stereo "
             f"live (one {frame}-sample period each; the streaming default carries its state from call "
             f"to call), 256 = file mode (128 stereo frames). Deadline: {deadline:.0f} us per period. "
             f"`default` is the streaming model (preset `stream`), `seed` the frame-by-frame one.", "",
             "| model | backend | batch | p50 us | p99 us | p99.9 us | max us | us/frame p50 | "
             "deadline misses | x bound | stereo s/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in b["results"]:
        sps = r.get("stereo_seconds_per_second")
        lines.append(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                     f"{r['p999_us']:.0f} | {r['max_us']:.0f} | {r['p50_us_per_frame']:.1f} | "
                     f"{r['deadline_misses']} / {r['calls']} | {r.get('x_bound', float('nan')):.1f} | "
                     f"{'-' if sps is None else f'{sps:.0f}'} |")
    for name, bd in bounds.items():
        lines += ["", f"Physical bound of {name} (same run): "
                  f"{bd['flops_per_frame'] / 1e6:.2f} MFLOP and "
                  f"{bd['weight_bytes'] / 1e6:.2f} MB of float32 weights per frame; this core's float32 "
                  f"GEMM {bd['gemm_gflops']:.1f} GFLOP/s and memory read {bd['memory_gbs']:.1f} GB/s give "
                  f"{bd['compute_bound_us']:.1f} us (compute) and {bd['memory_bound_us']:.1f} us (weights "
                  f"from DRAM) per frame."]
        if "cached_read_us" in bd:  # bench JSON written before the cache rate was measured lacks it
            lines[-1] += (f" A frame at batch 1 reads every weight once (a matrix-vector product per "
                          f"layer): from cache, {bd['cached_read_gbs']:.1f} GB/s for a hot matrix of "
                          f"that size, that alone takes {bd['cached_read_us']:.1f} us per frame.")
    lines += ["", "x bound = p50 per frame / that model's compute bound.", "", "![latency CDF](latency.png)"]

    def verdict(value, goal):
        return f"{value:.0f} us (goal <= {goal}: {'met' if value <= goal else 'NOT met'})"

    lines += ["", "## Speed goals, each model alone, 1 thread (float32 ONNX; the default's LiteRT int8 "
              "file, which `unetsep live` runs where LiteRT is installed)", ""]
    for name, _ in alone:
        by_batch = {r["batch"]: r for r in b["results"] if r["model"] == f"{name} (alone)"}
        if 1 in by_batch and 2 in by_batch:
            mono, stereo = by_batch[1], by_batch[2]
            lines += [f"- {name}: mono frame p50 {verdict(mono['p50_us'], 250)}, p99.9 "
                      f"{verdict(mono['p999_us'], 600)}; stereo frame (batch 2) p50 "
                      f"{stereo['p50_us']:.0f} us, p99.9 {verdict(stereo['p999_us'], 1000)}"]
    files = {r["model"]: r for r in b["results"] if r["batch"] == 256}
    for name in ("default", "seed"):
        if name in files:
            lines.append(f"- {name}, file mode, batch 256, 1 thread: "
                         f"{files[name]['stereo_seconds_per_second']:.1f} s of stereo audio per second "
                         f"(`unetsep separate` uses 2 threads)")
    for path in args.live:
        lv = json.loads(Path(path).read_text())
        after = lv.get("xruns_after_first_second", lv["xruns"])
        lines.append(f"- `unetsep live` stereo with `{Path(lv.get('model', path)).name}`, "
                     f"{lv.get('frames_per_period', frame)}-sample period, {lv['seconds']:.0f} s on the JACK "
                     f"dummy driver: {lv['callbacks']} callbacks, {after} xruns after the first second "
                     f"(goal 0: {'met' if after == 0 else 'NOT met'}), callback p99 "
                     f"{lv.get('callback_p99_us', 0):.0f} us, max {lv.get('callback_max_us', 0):.0f} us")
    for name, path in (("default", default), ("seed", seed)):
        lines += ["", tried(json.loads(path.with_name("report.json").read_text()))]
    if args.cuda:
        lines += cuda_section(args.cuda)
    if args.data:
        ev_cmd = ["evaluate", "--data", args.data, "--json", str(tmp / "e.json"),
                  "--plot", str(HERE / "sdr.png"), "--model", str(default), "--model", str(seed)] \
            + (["--tracks", str(args.tracks)] if args.tracks else []) \
            + (["--seconds", str(args.seconds)] if args.seconds else [])
        if args.evaluation:
            e = json.loads(Path(args.evaluation).read_text())
        else:
            subprocess.run(cli + ev_cmd, check=True)
            e = json.loads((tmp / "e.json").read_text())
        groups = list(e.get("groups", {}))
        lines += ["", f"## Separation quality (`unetsep evaluate --data {args.data}`)", "",
                  f"{e['target']} on {len(e['tracks'])} test tracks"
                  + (f" (first {args.seconds:g} s of each)" if args.seconds else "")
                  + "; museval v4, median over 1 s frames, then over tracks. "
                  + ("In-kit songs use drum kits and sound sets the training songs use; held-out songs "
                     "use ones no training song uses." if groups else ""), "",
                  "| method | SDR | SIR | SAR |" + "".join(f" SDR {g} |" for g in groups),
                  "|---|---|---|---|" + "---|" * len(groups)]
        for m, sc in e["median"].items():
            lines.append(f"| {m} | {sc['sdr']:.2f} | {sc['sir']:.2f} | {sc['sar']:.2f} |"
                         + "".join(f" {_sdr_cell(e, g, m)} |" for g in groups))
        lines += ["", "![SDR per track](sdr.png)"]
    if args.level:
        lines += ["", "## Level invariance (`python -m unetsep.benchmarks.level`)", "",
                  "Median drums SDR with the whole song played at each gain (goal: spread <= 0.5 dB).", ""]
        for path in args.level:
            lv = json.loads(Path(path).read_text())
            lines.append(f"- {lv['model']}: " + ", ".join(f"{g:+g} dB: {s:.2f}" for g, s in
                                                           zip(lv["gains_db"], lv["median_sdr"]))
                         + f"; spread {lv['spread_db']:.2f} dB")
    if args.bands:
        bd = json.loads(Path(args.bands).read_text())
        names = [k for k in bd if isinstance(bd[k], dict) and "pumping_db" in bd[k]]
        bands = [x[2] for x in bd["bands_hz"]]
        lines += ["", "## What the errors sound like (`python -m unetsep.benchmarks.bands`)", "",
                  f"Median over {len(bd['tracks'])} test tracks: per band, the estimate's level against "
                  "the true drums (below 0: drums lost), the SDR in the band, and how much of the rest "
                  "is kept (bleed); pumping = spread of the no-drums output's level against the true "
                  "rest over 20 ms windows.", "",
                  "| model | " + " | ".join(f"{x} level / SDR / bleed" for x in bands) + " | pumping dB |",
                  "|---|" + "---|" * (len(bands) + 1)]
        for n in names:
            pump = bd[n]["pumping_db"]
            lines.append(f"| {n} | " + " | ".join(
                f"{bd[n][x]['level_db']:.1f} / {bd[n][x]['sdr_db']:.1f} / {bd[n][x]['bleed_db']:.1f}"
                for x in bands) + f" | {'-' if pump is None else f'{pump:.2f}'} |")
    write_text_atomic(HERE / "RESULTS.md", "\n".join(lines) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")

if __name__ == "__main__":
    main()
