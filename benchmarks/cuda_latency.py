"""Latency per frame on onnxruntime's CUDA provider, the way a live callback would use it.

    python -m unetsep.benchmarks.cuda_latency [--model M.onnx ...] [--frames 5000] [--json out.json]

Calls go through the runtime's own runners (runtime.stream's StatefulRunner / Runner), as live
audio does: every tensor lives on the GPU, bound once with IOBinding; each call copies one frame
(or hop) of audio host -> device, runs, and copies the estimate back. A streaming (version 2)
model's states stay on the GPU, ping-ponging between two bound sets. Every model is also timed
with captured CUDA graphs (one per binding, each with its own `gpu_graph_id`, since a graph
replays fixed addresses). Long file-mode calls
(2048 hops of each of 2 streams: T = 2048 for a stream model, a batch of 4096 frames for the seed)
give the throughput. `--shape-changes` also times one CUDA session called
on host arrays with a constant batch against batch 1 and 2 in turn, for each cuDNN convolution
algorithm search. Needs onnxruntime-gpu and a CUDA device. Figures: benchmarks/cuda-h200.json
(benchmarks/cuda-h100.json: before the runtime replayed graphs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..runtime.separate import model_name


def time_hops(model, channels: int, hops: int, calls: int, graph: bool = False,
              device: str | None = None) -> dict:
    """Per-call microseconds of `hops` hops of each of `channels` streams (version 2: T = `hops`;
    version 1: one batch of channels x hops frames), and seconds of audio per second, through the
    runtime's own runner (runtime.stream's StatefulRunner / Runner: tensors on the device, bound
    once, a stream model's state ping-ponging there; with `graph`, one captured CUDA graph per
    binding), copies of the audio in and the estimate out included. `device` (tests): another
    onnxruntime device than CUDA."""
    from ..runtime.stream import Runner, StatefulRunner

    info = model.info
    capture = None if graph else []  # None: the runner captures its one call shape
    if info.streaming:
        runner, key = StatefulRunner(model, channels, [hops], device=device, capture=capture), hops
    else:  # a frame-by-frame model takes every hop of every stream as one batch
        key = channels * hops
        runner = Runner(model, [key], device=device, capture=capture)
    if graph and not any(g > 0 for g in runner.graph_ids.values()):
        raise RuntimeError(getattr(model, "graph_refused", None) or "CUDA graph capture failed")
    runner.x[key][...] = np.random.default_rng(0).standard_normal(runner.x[key].shape) * 0.1
    times = np.empty(calls)
    for i in range(calls + 50):  # 50 warm-up calls
        t = time.perf_counter()
        runner(key)
        if i >= 50:
            times[i - 50] = time.perf_counter() - t
    us = times * 1e6
    seconds = hops * info.frame / info.sample_rate  # of audio per call, each stream counted once
    return {"model": model_name(model.path, info.target), "channels": channels, "hops": hops,
            "cuda_graph": graph, "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "p999_us": float(np.percentile(us, 99.9)), "max_us": float(us.max()),
            "seconds_per_second": float(seconds / np.median(times))}


def shape_changes(path: Path, info, calls: int = 200) -> list[dict]:
    """p50/p99 us per session.run (host arrays, 1 thread) with batch 1 throughout, and with batch
    1 and 2 in turn, under each cudnn_conv_algo_search: what a changing input shape costs."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = []
    for batch in (1, 2):  # one frame (v1) or one hop with zero state (v2), shapes from the metadata
        width = info.frame if info.streaming else info.context
        f = {info.input_name: (rng.standard_normal((batch, width, 1)) * 0.1).astype(np.float32)}
        f.update({s.input: np.zeros((batch, *s.shape), np.float32) for s in info.states})
        feeds.append(f)

    rows = []
    for algo in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = 1, 4
        sess = ort.InferenceSession(str(path), so, providers=[
            ("CUDAExecutionProvider", {"cudnn_conv_algo_search": algo})])
        if sess.get_providers()[0] != "CUDAExecutionProvider":  # never time the CPU as CUDA
            raise RuntimeError(f"the CUDA provider did not start for {path}")
        for label, seq in (("batch 1 only", [feeds[0]] * calls),
                           ("batch 1 and 2 in turn", feeds * (calls // 2))):
            times, start = [], time.perf_counter()
            for f in seq:
                t = time.perf_counter()
                sess.run(None, f)
                times.append(time.perf_counter() - t)
                if time.perf_counter() - start > 30:  # EXHAUSTIVE re-plans for >100 ms a call
                    break
            us = np.array(times[len(times) // 5:]) * 1e6
            rows.append({"model": model_name(path, info.target), "cudnn_conv_algo_search": algo,
                         "calls": label, "timed": len(us), "p50_us": float(np.median(us)),
                         "p99_us": float(np.percentile(us, 99))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def gpu_name() -> str:
    """The GPU's name and driver as nvidia-smi gives them, or "a CUDA device"."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        name, driver = out[0].split(", ")
        return f"{name} (driver {driver})"
    except Exception:  # no nvidia-smi, or an answer in another form: the table still renders
        return "a CUDA device"


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from ..runtime.backends import OrtModel, cuda_fallback, default_model_path
    from ..runtime.files import write_text_atomic

    p = argparse.ArgumentParser(prog="python -m unetsep.benchmarks.cuda_latency",
                                description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", help="ONNX models (default: the shipped one)")
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--json")
    p.add_argument("--shape-changes", action="store_true",
                   help="also time batch changes between calls on one session (see the docstring)")
    args = p.parse_args(argv)
    # Errors only from onnxruntime's default logger: with --shape-changes its CUDA provider warns
    # once per convolution and call that cuDNN runs it "in Fallback mode" (hundreds of lines,
    # the cost shows in the table); failures still raise.
    ort.set_default_logger_severity(3)
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}", flush=True)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("cuda_latency: error: this onnxruntime has no CUDA provider; install onnxruntime-gpu "
              "(the gpu extra)", file=sys.stderr)
        return 2
    rows = []
    paths = [Path(m) for m in (args.model or [default_model_path()])]
    models = [OrtModel(path, "cuda") for path in paths]
    infos = [m.info for m in models]
    for model, info in zip(models, infos):
        if model.provider != "CUDAExecutionProvider":  # never time the CPU as CUDA
            print(f"cuda_latency: error: the CUDA provider did not start for {model.path} "
                  f"({cuda_fallback(model)})", file=sys.stderr)
            return 2
        configs = [(1, 1, False), (2, 1, False), (1, 1, True), (2, 1, True)]
        configs += [(2, 2048, False)]
        for channels, hops, graph in configs:
            try:
                r = time_hops(model, channels, hops, args.frames if hops == 1 else 50, graph)
            except Exception as e:  # a provider that cannot capture this graph: say so, go on
                r = {"model": model_name(model.path, info.target), "channels": channels, "hops": hops, "cuda_graph": graph,
                     "error": str(e).splitlines()[0][:160]}
            rows.append(r)
            print(json.dumps(r), flush=True)
    out = {"device": gpu_name(), "onnxruntime": f"onnxruntime {ort.__version__}",
           "date": str(datetime.date.today()), "command": " ".join(sys.argv), "results": rows}
    if args.shape_changes:
        out["shape_changes"] = {"what": "1 thread; 200 calls of batch 1, or batch 1 and 2 in turn "
                                        "(100 pairs, at most 30 s); the first fifth dropped",
                                "rows": [r for p, i in zip(paths, infos) for r in shape_changes(p, i)]}
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
