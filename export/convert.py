"""Keras run -> ONNX (tf2onnx's raw output, the lean graph, ORT int8) and TFLite variants.

Every converter gets the model rebuilt from the stock Keras layers (the fast training layers only
change how the training graph computes; the weights are the same), so converters see plain
Conv1D / Conv1DTranspose.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..runtime.contract import ModelInfo
from ..runtime.errors import UserError, cause_of

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_run(run_dir: str | Path):
    """(Keras model with stock layers and the run's weights, UNetConfig) of a trained run."""
    import keras

    from ..train import layers as _fast_layers  # noqa: F401  registers the saved layer classes
    from ..train.model import build_unet, load_run_config

    run = Path(run_dir)
    try:
        cfg = load_run_config(run)
    except (ValueError, TypeError, KeyError) as e:  # json errors are ValueErrors
        raise UserError(f"{run / 'config.json'} is damaged ({cause_of(e, 120)}); "
                        f"retrain into a new --out folder") from None
    path = run / "model.keras"
    if not path.is_file():
        raise UserError(f"{run} has no model.keras: the run is not finished; rerun its 'unetsep train' "
                        f"command to complete it")
    import zipfile

    if not zipfile.is_zipfile(path):  # Keras would call this "File not found"
        raise UserError(f"{path} is damaged (not a .keras zip archive, e.g. cut short by a full disk); "
                        f"rerun 'unetsep train' into a new --out folder")
    try:
        trained = keras.models.load_model(path, compile=False)
        model = build_unet(cfg, stock_layers=True)
        model.set_weights(trained.get_weights())
    except Exception as e:  # Keras reports a damaged zip as "File not found" and others variously
        cause = cause_of(e, 120)
        raise UserError(f"{path} exists but cannot be loaded ({type(e).__name__}: {cause}); it is "
                        f"damaged or not from this run: rerun 'unetsep train' into a new --out "
                        f"folder") from None
    return model, cfg


def model_info(cfg) -> ModelInfo:
    return ModelInfo(sample_rate=cfg.sample_rate, frame=cfg.frame, context=cfg.context,
                     target=cfg.target, preset=cfg.preset,
                     trained_on=str(cfg.extra.get("trained_on", "")))


def _serving_function(model, cfg, batch: int | None):
    import tensorflow as tf

    spec = tf.TensorSpec((batch, cfg.context, 1), tf.float32, name="mix")
    @tf.function(input_signature=[spec], autograph=False)
    def serve(mix):
        return model(mix, training=False)

    return serve, spec


def tf2onnx_raw(model, cfg, info: ModelInfo, batch: int | None = None):
    """The converter's own output (opset 17), for comparison with the lean graph.

    tf2onnx's from_keras does not handle Keras 3 models; from_function on a traced call does.
    """
    import tf2onnx
    from onnx import helper

    fn, spec = _serving_function(model, cfg, batch)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=17)
    # Name the input and output as the contract says.
    for io, name in ((proto.graph.input[0], info.input_name), (proto.graph.output[0], info.output_name)):
        old, io.name = io.name, name
        for node in proto.graph.node:
            node.input[:] = [name if n == old else n for n in node.input]
            node.output[:] = [name if n == old else n for n in node.output]
    helper.set_model_props(proto, info.to_metadata())
    return proto


def quiet_convert(converter) -> bytes:
    """converter.convert() with its chatter (absl's "Please consider providing the trackable_obj",
    MLIR's "fully_quantize: 0, inference_type: 6, ...") kept off the terminal; shown if it fails."""
    from ..runtime.quiet import native_stderr_held

    with native_stderr_held():
        return converter.convert()


def tflite_variants(model, cfg, calibration: np.ndarray) -> dict[str, bytes]:
    """{'tflite': float32, 'fp16.tflite', 'dynint8.tflite', 'int8.tflite'} flatbuffers.

    calibration: (N, context, 1) float32 frames of training audio for full-integer quantization.
    """
    import tensorflow as tf

    fn, _ = _serving_function(model, cfg, None)
    concrete = fn.get_concrete_function()

    def converter():
        # Without the trackable object the converter freezes the variables into constants (with it,
        # calibration fails on READ_VARIABLE ops).
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete])

    out = {}
    c = converter()
    out["tflite"] = quiet_convert(c)
    c = converter()
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]
    out["fp16.tflite"] = quiet_convert(c)
    c = converter()
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    out["dynint8.tflite"] = quiet_convert(c)
    c = converter()
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    out["int8.tflite"] = quiet_convert(c)  # int8 kernels inside; float32 in and out
    return out


def stream_calibration(lean_path: Path, audio: np.ndarray, info: ModelInfo, hops: int = 64) -> list[dict]:
    """Calibration feeds for a streaming model: `audio` (samples, channels) in calls of `hops` hops,
    each with the state the float model carried into it (zero states would calibrate the state
    ranges to nothing)."""
    from ..runtime.backends import OrtModel

    m = OrtModel(lean_path)
    step = hops * info.frame
    states = {s.input: np.zeros((audio.shape[1], *s.shape), np.float32) for s in info.states}
    feeds = []
    for a in range(0, len(audio) - step + 1, step):
        x = np.ascontiguousarray(audio[a:a + step].T[..., None])  # (channels, step, 1)
        feeds.append({info.input_name: x, **states})
        _, states = m.run_stateful(x, states)
    return feeds


def ort_int8(lean_path: Path, calibration, info: ModelInfo, out_path: Path) -> None:
    """onnxruntime static quantization: QDQ, per-channel int8 weights, calibrated on `calibration`:
    (N, context, 1) frames for a version-1 model, a list of feeds (`stream_calibration`) for a
    streaming one, whose convolutions alone are quantized (its GRU and state plumbing stay float)."""
    import onnx
    from onnx import helper
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration if info.streaming else
                           ({info.input_name: b} for b in np.array_split(calibration, max(1, len(calibration) // 256))))

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(lean_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out_path), Frames(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"] if info.streaming else None)
    proto = onnx.load(str(out_path))
    del proto.metadata_props[:]
    helper.set_model_props(proto, info.to_metadata())
    onnx.save(proto, str(out_path))
