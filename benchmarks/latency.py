"""What bench adds around the timing itself (runtime/measures.py: time_calls): the physical bound
per frame (FLOPs and weights of the ONNX graph, this core's GEMM rate, cache and memory bandwidth) and the
latency CDF plot.
"""
from __future__ import annotations

import time

import numpy as np

from ..runtime.contract import FRAME
from ..runtime.files import save_figure


def physical_bound(flops_per_frame: float, weight_bytes: float, seconds: float = 1.0,
                   rates: tuple[float, float] | None = None) -> dict:
    """This core's float32 GEMM rate (onnxruntime MatMul, 1 thread), memory read bandwidth (numpy
    sum over 256 MB) and the rate at which it reads `weight_bytes` of weights from its cache, and
    the resulting lower bounds per frame. `rates` (GFLOP/s, GB/s) measured before skips measuring
    the first two (the cache rate depends on the model's size: measured each time)."""
    if rates:
        gflops, gbs = rates
    else:
        gflops, gbs = machine_rates(seconds)
    cached_gbs = weight_read_rate(weight_bytes, seconds / 2)
    compute_us = flops_per_frame / (gflops * 1e9) * 1e6
    memory_us = weight_bytes / (gbs * 1e9) * 1e6
    cached_us = weight_bytes / (cached_gbs * 1e9) * 1e6
    return {"gemm_gflops": gflops, "memory_gbs": gbs, "cached_read_gbs": cached_gbs,
            "flops_per_frame": flops_per_frame, "weight_bytes": weight_bytes,
            "compute_bound_us": compute_us, "memory_bound_us": memory_us,
            "cached_read_us": cached_us, "bound_us": compute_us,
            "note": "bound = FLOPs / GEMM rate. One frame (a hop) at batch 1 multiplies each weight "
                    "matrix by a vector, so each frame reads every weight once: from the cache "
                    "between frames (cached_read_us; DRAM's memory_bound_us is not a floor), at the "
                    "rate of the cache level that holds that many bytes"}


def x_bound(model: str, p50_us_per_frame: float, bounds: dict) -> float | None:
    """p50 per frame over the compute bound of `model` (bench's name), or of the float32 model a
    converted file came from (default-int8-tflite: default's); None where no bound was measured."""
    from ..runtime.separate import float_model_name

    b = bounds.get(model) or bounds.get(float_model_name(model))
    return p50_us_per_frame / b["bound_us"] if b else None


def gemm_model(n: int):
    """An onnx model of one (n, n) @ (n, n) float32 MatMul, at IR 8 / opset 17 as the exported
    models: the onnx package's newest IR can be ahead of the installed onnxruntime (onnx 1.23
    writes IR 14, which onnxruntime-gpu 1.30 refuses)."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    return helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def gemv_model(k: int, n: int):
    """An onnx model of x (1, k) @ W (k, n), W a float32 initializer (as a layer's weights are)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def weight_read_rate(weight_bytes: float, seconds: float = 0.5) -> float:
    """GB/s at which one core streams `weight_bytes` of float32 weights it read the call before,
    through a batch-1 matrix-vector product (onnxruntime MatMul, 1 thread): the median call. What
    a hop does with each layer's weights, so weight_bytes / this rate is a floor per hop; it
    depends on which cache level holds that many bytes (a few MB can exceed a core's L2)."""
    import onnxruntime as ort

    k = 1024
    n = max(1, round(weight_bytes / 4 / k))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(gemv_model(k, n).SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.ones((1, k), np.float32)
    s.run(None, {"x": x})
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t = time.perf_counter()
        s.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    return 4 * k * n / float(np.median(times)) / 1e9


def machine_rates(seconds: float = 1.0) -> tuple[float, float]:
    """(GEMM GFLOP/s on one core through onnxruntime, memory read GB/s through numpy)."""
    import onnxruntime as ort

    n = 512
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(gemm_model(n).SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    s.run(None, {"a": a, "b": a})
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        s.run(None, {"a": a, "b": a})
        reps += 1
    gflops = 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9
    big = np.ones(64 << 20, np.float32)  # 256 MB, far beyond any cache
    big.sum()
    t = time.perf_counter()
    for _ in range(3):
        big.sum()
    gbs = 3 * big.nbytes / (time.perf_counter() - t) / 1e9
    return gflops, gbs


def model_cost(onnx_path) -> tuple[float, float]:
    """(FLOPs per frame, weight bytes) of a lean/float ONNX graph: 2*MACs of Conv, ConvTranspose,
    Gemm and GRU at batch 1 and one frame (a streaming model's T = 1: one hop), from the weights'
    shapes and the layer lengths ONNX shape inference finds."""
    import onnx
    from onnx import numpy_helper, shape_inference

    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    for inp in proto.graph.input:  # pin the symbolic axes: batch 1, one frame
        dims = inp.type.tensor_type.shape.dim
        dims[0].dim_value = 1
        if inp.name == meta.get("input_name", "mix") and not dims[1].dim_value:
            dims[1].dim_value = int(meta.get("frame", FRAME))
    m = shape_inference.infer_shapes(proto)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output)}
    flops = 0.0
    for node in m.graph.node:
        if node.op_type == "Gemm":
            flops += 2 * inits[node.input[1]].size
        elif node.op_type == "Conv":
            w = inits[node.input[1]]
            flops += 2 * w.size * shapes[node.output[0]][-1]
        elif node.op_type == "GRU":  # one step per hop: input and recurrent matrices once each
            flops += 2 * (inits[node.input[1]].size + inits[node.input[2]].size)
        elif node.op_type == "ConvTranspose":
            w = inits[node.input[1]]
            flops += 2 * w.size * (shapes[node.input[0]][-1] if node.input[0] in shapes else 1)
    weight_bytes = sum(a.nbytes for a in inits.values() if a.dtype == np.float32 and a.ndim > 1)
    return flops, weight_bytes


def plot_cdf(results: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        if r["batch"] > 2:
            continue
        us = np.sort(r["times_us"])
        ax.plot(us, 1 - np.arange(len(us)) / len(us), label=f"{r['model']} {r['backend']} b{r['batch']}")
    for limit in sorted({r["deadline_us"] for r in results if r["batch"] <= 2}):
        ax.axvline(limit, color="red", linestyle="--", label=f"deadline {limit:.0f} us")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("microseconds per call")
    ax.set_ylabel("fraction of calls slower")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
