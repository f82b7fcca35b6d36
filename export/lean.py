"""A lean ONNX graph written directly from the trained Keras weights.

tf2onnx's output carries Shape/Slice/Concat scaffolding around every Conv1DTranspose and a
Transpose/Squeeze pair around every 1-D op. This module writes the same network as ~40 nodes in
the (batch, channels, samples) layout onnxruntime's kernels want:

* BatchNorm is folded into the preceding convolution (inference statistics).
* Long layers stay Conv / ConvTranspose, with the explicit pads that reproduce Keras' 'same'.
* Short layers deep in the U-Net (lengths 1-2, 256-512 channels), where most kernel taps fall on
  padding, become one Gemm over the flattened (channels*samples) vector; the matrix is obtained by
  probing the Keras layer itself with unit inputs, so it is exactly what Keras computes and the
  dead taps are gone from the weights.

`export.pipeline` checks the result against Keras like every other format.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime.contract import ModelInfo
from ..train.layers import same_padding

OPSET = 17


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) of an inference-mode BatchNormalization."""
    gamma, beta, mean, var = (np.asarray(w, dtype=np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def _probe_dense(layer, length: int, channels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(matrix (C_in*L_in, C_out*L_out), bias (C_out*L_out,), L_out) of a linear Keras layer.

    Rows and columns are in channel-major order (c * L + l), the flattening of (C, L) tensors.
    """
    n = channels * length
    basis = np.eye(n, dtype=np.float32).reshape(n, channels, length).transpose(0, 2, 1)  # (n, L, C)
    zero = np.asarray(layer(np.zeros((1, length, channels), np.float32)), np.float64)  # (1, Lo, Co)
    out = np.asarray(layer(basis), np.float64) - zero  # (n, L_out, C_out)
    l_out = out.shape[1]
    matrix = out.transpose(0, 2, 1).reshape(n, -1)
    bias = zero[0].T.reshape(-1)
    return matrix, bias, l_out


class _Graph:
    def __init__(self):
        self.nodes, self.inits = [], []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def model(self, name: str, info: ModelInfo, producer: str, inputs: list, outputs: list
              ) -> onnx.ModelProto:
        """The checked ONNX model of these nodes, with `info` as its metadata."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name=producer)
        proto.ir_version = 8
        helper.set_model_props(proto, info.to_metadata())
        onnx.checker.check_model(proto)
        return proto


def dense_is_smaller(l_in: int, l_out: int, kernel: int, factor: float = 2.0) -> bool:
    """Use a Gemm when its matrix is at most `factor` times the conv kernel (L_in*L_out vs k taps)."""
    return l_in * l_out <= factor * kernel


def build_lean_onnx(model, cfg, info: ModelInfo, dense_factor: float = 2.0) -> onnx.ModelProto:
    """The Keras U-Net `model` (built by train.model.build_unet) as a lean ONNX graph.

    Input `mix` (batch, context, 1) -> output `stem` (batch, frame, 1), dynamic batch.
    """
    g = _Graph()
    k, s = cfg.kernel_size, cfg.stride

    def linear(x: str, layer, l_in: int, c_in: int, transpose: bool, scale=None, shift=None):
        """One Conv1D/Conv1DTranspose (+ folded BN) on x (B, C_in, L_in) -> (B, C_out, L_out)."""
        l_out = l_in * s if transpose else -(-l_in // s)
        c_out = layer.filters
        scale = np.ones(c_out) if scale is None else scale
        shift = np.zeros(c_out) if shift is None else shift
        if dense_is_smaller(l_in, l_out, k, dense_factor):
            m, b, l_out = _probe_dense(layer, l_in, c_in)  # columns: co * l_out + l
            col_scale = np.repeat(scale, l_out)
            m, b = m * col_scale, b * col_scale + np.repeat(shift, l_out)
            flat = g.op("Reshape", [x, g.const("shape", np.array([-1, c_in * l_in], np.int64))], "flat")
            y = g.op("Gemm", [flat, g.const(f"{layer.name}_w", m.astype(np.float32)),
                              g.const(f"{layer.name}_b", b.astype(np.float32))], layer.name)
            return g.op("Reshape", [y, g.const("shape", np.array([-1, c_out, l_out], np.int64))],
                        "unflat"), c_out, l_out
        kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
        if transpose:
            # Keras (k, out, in) -> ONNX ConvTranspose (in, out, k); 'same' is the transpose of a
            # strided conv over L*s samples with that conv's own padding.
            w = kernel.transpose(2, 1, 0) * scale[None, :, None]
            pads = same_padding(l_out, k, s)
            # onnxruntime's CUDA ConvTranspose takes symmetric pads only (it leaves the node on
            # the CPU otherwise, and then refuses CUDA graphs): pad the smaller amount on both
            # sides and slice off the extra samples at the end.
            sym = min(pads)
            y = g.op("ConvTranspose", [x, g.const(f"{layer.name}_w", w.astype(np.float32)),
                                       g.const(f"{layer.name}_b", (bias * scale + shift).astype(np.float32))],
                     layer.name, kernel_shape=[k], strides=[s], pads=[sym, sym])
            if pads[0] != pads[1]:
                start = pads[0] - sym
                y = g.op("Slice", [y, g.const("start", np.array([start], np.int64)),
                                   g.const("end", np.array([start + l_out], np.int64)),
                                   g.const("axis", np.array([2], np.int64))], f"{layer.name}_crop")
        else:
            # Keras (k, in, out) -> ONNX Conv (out, in, k).
            w = kernel.transpose(2, 1, 0) * scale[:, None, None]
            pads = same_padding(l_in, k, s)
            y = g.op("Conv", [x, g.const(f"{layer.name}_w", w.astype(np.float32)),
                              g.const(f"{layer.name}_b", (bias * scale + shift).astype(np.float32))],
                     layer.name, kernel_shape=[k], strides=[s], pads=list(pads))
        return y, c_out, l_out

    # (B, context, 1) -> (B, 1, context): a reshape, since there is one channel.
    x = g.op("Reshape", [info.input_name, g.const("shape", np.array([-1, 1, cfg.context], np.int64))],
             "ncl")
    mix_ncl = x
    c, length = 1, cfg.context
    skips = []
    for i in range(len(cfg.filters)):
        scale, shift = _bn_scale_shift(model.get_layer(f"enc{i + 1}_bn"))
        x, c, length = linear(x, model.get_layer(f"enc{i + 1}_conv"), length, c, False, scale, shift)
        x = g.op("LeakyRelu", [x], f"enc{i + 1}_lrelu", alpha=float(cfg.leaky_slope))
        skips.append((x, c, length))
    for i in range(len(cfg.filters) - 1):
        x, c, length = linear(x, model.get_layer(f"dec{i + 1}_deconv"), length, c, True)
        x = g.op("Relu", [x], f"dec{i + 1}_relu")  # dropout is the identity at inference
        skip, cs, _ = skips[-2 - i]
        x = g.op("Concat", [x, skip], f"dec{i + 1}_skip", axis=1)
        c += cs
    x, c, length = linear(x, model.get_layer("mask"), length, c, True)
    x = g.op("Sigmoid", [x], "mask_sigmoid")
    x = g.op("Mul", [x, mix_ncl], "masked")
    g.nodes.append(helper.make_node(
        "Reshape", [x, g.const("shape", np.array([-1, cfg.frame, 1], np.int64))], [info.output_name],
        name="nlc"))

    return g.model(f"unetsep_{cfg.preset}", info, "unetsep.export.lean",
                   [helper.make_tensor_value_info(info.input_name, TensorProto.FLOAT, ["batch", cfg.context, 1])],
                   [helper.make_tensor_value_info(info.output_name, TensorProto.FLOAT, ["batch", cfg.frame, 1])])
