"""`unetsep export`: every format written and checked against Keras; failing checks refuse to write."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import unetsep


def test_all_formats_and_report(exported):
    report = json.loads((exported / "report.json").read_text())
    rows = {r["format"]: r for r in report["formats"]}
    assert set(rows) == {"onnx", "int8.onnx", "tflite", "fp16.tflite", "dynint8.tflite", "int8.tflite"}
    for fmt in ("onnx", "tflite"):  # float32 formats match Keras
        assert rows[fmt]["max_abs_error"] <= 1e-4 and rows[fmt]["written"] and not rows[fmt]["reason"]
    assert rows["fp16.tflite"]["snr_db"] >= 50
    for r in rows.values():
        assert (exported / r["file"]).is_file() == r["written"]
        if r["kind"] == "int8":  # the verdict follows the figure
            assert bool(r["reason"]) == (r["delta_sdr"] < -0.3 or r["snr_db"] < 3)
        assert r["p50_us"] > 0 and r["size_bytes"] > 0
    assert "| drums.onnx |" in (exported / "report.md").read_text()
    # The ONNX model carries the contract.
    meta = {p.key: p.value for p in onnx.load(str(exported / "drums.onnx")).metadata_props}
    assert meta["frame"] == "64" and meta["sample_rate"] == "44100" and meta["target"] == "drums"
    assert json.loads((exported / "drums.tflite").with_suffix(".json").read_text())["frame"] == 64


def test_seed_lean_graph_is_small_and_exact():
    keras = pytest.importorskip("keras")
    import onnxruntime as ort

    from unetsep.export.lean import build_lean_onnx
    from unetsep.runtime.contract import ModelInfo
    from unetsep.train.model import build_unet, preset

    cfg = preset("seed")
    model = build_unet(cfg, stock_layers=True)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BatchNorm statistics, so folding is exercised
        if layer.name.endswith("_bn"):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])
    proto = build_lean_onnx(model, cfg, ModelInfo())
    assert len(proto.graph.node) < 60
    assert not {"BatchNormalization", "Transpose", "Squeeze"} & {n.op_type for n in proto.graph.node}
    # Symmetric ConvTranspose pads only: onnxruntime's CUDA provider leaves others on the CPU,
    # which costs the model its CUDA graphs (Keras' 'same' needs [1, 2]: a Slice crops instead).
    deconvs = [n for n in proto.graph.node if n.op_type == "ConvTranspose"]
    pads = [onnx.helper.get_attribute_value(a) for n in deconvs for a in n.attribute if a.name == "pads"]
    assert deconvs and len(pads) == len(deconvs) and all(p[0] == p[1] for p in pads)
    x = (rng.standard_normal((64, 64, 1)) * 0.3).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"mix": x})[0]
    assert np.abs(y - np.asarray(model(x, training=False))).max() <= 1e-4


def test_failing_threshold_leaves_model_dir_as_it_was(tiny_run, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    proc = unetsep("export", tiny_run, "--out", out, "--check-seconds", 6, "--max-error", "1e-12",
                   check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "failed their check" in last and "drums.onnx" in last
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no temp left


def test_broken_calibration_fails_int8_and_degraded_keeps_it(tiny_run, tmp_path):
    out = tmp_path / "m"
    proc = unetsep("export", tiny_run, "--out", out, "--check-seconds", 6,
                   "--calibration-gain", "1e-4", "--allow-degraded", check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {r["format"]: r for r in json.loads((out / "report.json").read_text())["formats"]}
    assert rows["int8.tflite"]["reason"] and rows["int8.tflite"]["snr_db"] < 3
    assert rows["int8.tflite"]["written"] and (out / "drums.int8.tflite").is_file()
    assert "FAILED" in (out / "report.md").read_text()


def test_not_a_run(tmp_path):
    proc = unetsep("export", tmp_path, "--out", tmp_path / "m", check=False)
    assert proc.returncode == 2 and "not a training run" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_decide_table():
    from unetsep.export.pipeline import FORMATS, RULES, Row, Thresholds, decide

    assert set(FORMATS.values()) == set(RULES)  # every format's kind has its rule
    th = Thresholds()
    assert decide(Row("onnx", "drums.onnx", "float32", max_abs_error=1e-5), th) == ""
    assert "max error" in decide(Row("onnx", "drums.onnx", "float32", max_abs_error=1e-3), th)
    assert "hop by hop" in decide(Row("onnx", "d.onnx", "float32", max_abs_error_hop=1e-3), th)
    assert "SNR" in decide(Row("fp16.tflite", "d.fp16.tflite", "float16", snr_db=40.0), th)
    assert "below Keras" in decide(Row("int8.onnx", "d.int8.onnx", "int8", delta_sdr=-1.0, snr_db=10), th)
    assert "output SNR" in decide(Row("int8.onnx", "d.int8.onnx", "int8", delta_sdr=0.0, snr_db=1.0), th)
