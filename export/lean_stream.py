"""The streaming U-Net (train.model.build_stream_unet) as a lean ONNX graph with explicit state.

    mix (B, T*64, 1), state_* ──► stem (B, T*64, 1), next_* (each state's value after this call)

One graph serves live audio (T = 1: one hop per call) and files (T in the thousands). Every
stateful layer concatenates its carried state before its input and returns the tail of that
concatenation as its next state, so consecutive calls compute exactly what one call on the whole
signal computes (zero state = silence before the start). Layout inside: (batch, channels, samples).

* Encoder step: Conv (kernel 2*taps, stride 2, no padding) over [state, x]; BatchNorm folded in.
* Memory: ONNX GRU (linear_before_reset = Keras' reset_after), one step per hop.
* Decoder step: Conv (kernel taps) over [state, x] giving 2F channels, then depth-to-space.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.contract import STREAMING_VERSION, ModelInfo, StateSpec
from .lean import _bn_scale_shift, _Graph


def build_lean_stream_onnx(model, cfg, info: ModelInfo) -> tuple[onnx.ModelProto, ModelInfo]:
    """(ONNX graph, the ModelInfo with its states) of a trained streaming Keras U-Net."""
    g = _Graph()
    taps = cfg.taps
    states: list[StateSpec] = []
    state_inputs, state_outputs = [], []

    def state(name: str, channels: int, samples: int) -> str:
        """Declare a carried state (B, channels, samples); returns its input name."""
        spec = StateSpec(name=name, input=f"state_{name}", output=f"next_{name}",
                         shape=(channels, samples))
        states.append(spec)
        state_inputs.append(helper.make_tensor_value_info(spec.input, TensorProto.FLOAT,
                                                          ["batch", channels, samples]))
        state_outputs.append(helper.make_tensor_value_info(spec.output, TensorProto.FLOAT,
                                                           ["batch", channels, samples]))
        return spec.input

    def with_state(x: str, name: str, channels: int, samples: int) -> str:
        """[state, x] along time; the last `samples` of it become the next state."""
        xp = g.op("Concat", [state(name, channels, samples), x], f"{name}_cat", axis=2)
        g.nodes.append(helper.make_node(
            "Slice", [xp, g.const("start", np.array([-samples], np.int64)),
                      g.const("end", np.array([np.iinfo(np.int64).max], np.int64)),
                      g.const("axis", np.array([2], np.int64))], [f"next_{name}"], name=f"{name}_next"))
        return xp

    def down(x: str, layer, bn, c_in: int) -> tuple[str, int]:
        # Keras kernel (taps, 2*C_in, F), row p*C_in + c for sample p of a pair -> Conv weight
        # (F, C_in, 2*taps), tap t*2 + p.
        kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
        f = kernel.shape[-1]
        scale, shift = _bn_scale_shift(bn)
        w = kernel.reshape(taps, 2, c_in, f).transpose(3, 2, 0, 1).reshape(f, c_in, 2 * taps)
        xp = with_state(x, layer.name, c_in, 2 * (taps - 1))
        y = g.op("Conv", [xp, g.const(f"{layer.name}_w", (w * scale[:, None, None]).astype(np.float32)),
                          g.const(f"{layer.name}_b", (bias * scale + shift).astype(np.float32))],
                 layer.name, kernel_shape=[2 * taps], strides=[2])
        return y, f

    def up(x: str, layer, c_in: int, activation: str) -> tuple[str, int]:
        # Keras kernel (taps, C_in, 2*F), column u*F + o = output o of sub-sample u -> Conv weight
        # (2*F, C_in, taps); then (B, 2F, n) -> (B, F, 2n) with sample 2j + u = channel u*F + o.
        # The activation goes before the interleaving (it is elementwise), where onnxruntime
        # fuses it into the Conv.
        kernel, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
        f = kernel.shape[-1] // 2
        xp = with_state(x, layer.name, c_in, taps - 1)
        y = g.op("Conv", [xp, g.const(f"{layer.name}_w", kernel.transpose(2, 1, 0).copy()),
                          g.const(f"{layer.name}_b", bias)], layer.name, kernel_shape=[taps])
        y = g.op(activation, [y], f"{layer.name}_{activation.lower()}")
        y = g.op("Reshape", [y, g.const("shape", np.array([0, 2, f, -1], np.int64))], "split")
        y = g.op("Transpose", [y], "interleave", perm=[0, 2, 3, 1])  # (B, F, n, 2)
        return g.op("Reshape", [y, g.const("shape", np.array([0, f, -1], np.int64))], "d2s"), f

    def delay(x: str, name: str, channels: int, samples: int) -> str:
        xp = with_state(x, name, channels, samples)
        return g.op("Slice", [xp, g.const("start", np.array([0], np.int64)),
                              g.const("end", np.array([-samples], np.int64)),
                              g.const("axis", np.array([2], np.int64))], name)

    levels = len(cfg.filters)
    hops_ahead = cfg.lookahead // cfg.frame
    mix = g.op("Transpose", [info.input_name], "ncl", perm=[0, 2, 1])  # (B, 1, T*64)
    x, c, skips = mix, 1, []
    for i in range(levels):
        x, c = down(x, model.get_layer(f"enc{i + 1}_conv"), model.get_layer(f"enc{i + 1}_bn"), c)
        x = g.op("LeakyRelu", [x], f"enc{i + 1}_lrelu", alpha=float(cfg.leaky_slope))
        skips.append((x, c))

    if cfg.memory_units:
        gru, units = model.get_layer("memory"), cfg.memory_units
        kernel, recurrent, bias = (np.asarray(w, np.float32) for w in gru.get_weights())
        # Keras gates z, r, h in column blocks; ONNX GRU takes the same order as (3U, in) rows.
        seq = g.op("Transpose", [x], "tbc", perm=[2, 0, 1])  # (T, B, C)
        h_in = state("memory", units, 1)  # (B, U, 1): carried like every state, batch first
        h0 = g.op("Transpose", [h_in], "h0", perm=[2, 0, 1])  # (1, B, U)
        y_all, y_last = g.name("memory_y"), g.name("memory_h")
        g.nodes.append(helper.make_node(
            "GRU", [seq, g.const("gru_w", kernel.T[None]), g.const("gru_r", recurrent.T[None]),
                    g.const("gru_b", bias.reshape(1, -1)), "", h0], [y_all, y_last], name="memory",
            hidden_size=units, linear_before_reset=1))
        g.nodes.append(helper.make_node("Transpose", [y_last], ["next_memory"], name="memory_next",
                                        perm=[1, 2, 0]))
        h = g.op("Squeeze", [y_all, g.const("axes", np.array([1], np.int64))], "memory_seq")  # (T, B, U)
        h = g.op("Transpose", [h], "memory_ncl", perm=[1, 2, 0])  # (B, U, T)
        x = g.op("Concat", [h, x], "memory_skip", axis=1)
        c += units

    for i in range(levels - 1):
        x, c = up(x, model.get_layer(f"dec{i + 1}_up"), c, "Relu")
        skip, cs = skips[-2 - i]
        if hops_ahead:
            skip = delay(skip, f"dec{i + 1}_delay", cs, hops_ahead * cfg.frame // 2 ** (levels - 1 - i))
        x = g.op("Concat", [x, skip], f"dec{i + 1}_skip", axis=1)
        c += cs
    x, _ = up(x, model.get_layer("mask"), c, "Sigmoid")
    dry = delay(mix, "mix_delay", 1, cfg.lookahead) if hops_ahead else mix
    x = g.op("Mul", [x, dry], "masked")
    g.nodes.append(helper.make_node("Transpose", [x], [info.output_name], name="nlc", perm=[0, 2, 1]))

    info = ModelInfo(**{**{k: getattr(info, k) for k in info.__dataclass_fields__},
                        "version": STREAMING_VERSION, "lookahead": cfg.lookahead, "states": tuple(states)})
    proto = g.model(
        f"unetsep_{cfg.preset}", info, "unetsep.export.lean_stream",
        [helper.make_tensor_value_info(info.input_name, TensorProto.FLOAT, ["batch", "samples", 1]),
         *state_inputs],
        [helper.make_tensor_value_info(info.output_name, TensorProto.FLOAT, ["batch", "samples", 1]),
         *state_outputs])
    return proto, info
