"""The streaming U-Net (train.model.build_stream_unet) as LiteRT flatbuffers with external state.

    mix (B, 64, 1), state_* ──► stem (B, 64, 1), next_* (each state's value after this hop)

The same contract as the lean ONNX graph (export/lean_stream.py): the same state names, shapes
(batch, channels, samples) and order, taken from its ModelInfo. The graph is written here with
TensorFlow ops from the Keras weights, the state an explicit input and output of every stateful
layer (kws_streaming's external-state mode), so the flatbuffer itself stays stateless; the
converter then writes float32 and full-integer int8 versions.

One hop per call (T = 1: mix is (B, 64, 1)); the batch is free (1 mono, 2 stereo). A dynamic T
needs the GRU as a loop over hops; with a free batch the converter could not lower that loop's
TensorArray (it asks for Select TF ops, which LiteRT's builtin runtime lacks). The runtime
(runtime/backends.py) runs a longer call as one invoke per hop instead.
Layout inside: (batch, samples, channels), TensorFlow's; states are transposed at the edges.

* Encoder step: fold two samples into one vector, causal Conv1D (valid) over [state, x];
  BatchNorm folded into the kernel.
* Memory: one step of the Keras GRU (reset_after), written out.
* Decoder step: causal Conv1D over [state, x] giving 2F channels, then two samples of F each.
"""
from __future__ import annotations

import numpy as np

from ..runtime.contract import ModelInfo
from .convert import quiet_convert


def _bn_scale_shift(gamma, beta, mean, var, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) of an inference-mode BatchNormalization's weights."""
    scale = gamma / np.sqrt(var + epsilon)
    return scale, beta - mean * scale


def stream_function(model, cfg, info: ModelInfo):
    """A tf.function taking `mix` and every state of `info` (the lean ONNX graph's ModelInfo) by
    name, returning {stem, next_*}: the call the converter turns into a flatbuffer."""
    import tensorflow as tf

    frame = cfg.frame
    specs = {s.name: s for s in info.states}
    levels = len(cfg.filters)
    hops_ahead = cfg.lookahead // frame

    # Every weight read here, eagerly (the trace below cannot read variables as numpy).
    weights = {layer.name: [np.asarray(w, np.float64) for w in layer.get_weights()]
               for layer in model.layers if layer.get_weights()}

    def const(a) -> tf.Tensor:
        return tf.constant(np.asarray(a, np.float32))

    def fn(mix, *state_in):
        states = {s.name: v for s, v in zip(info.states, state_in)}
        nxt = {}

        def with_state(x, name: str):
            """[state, x] along time (B, S + L, C); its last S samples become next_<name>."""
            s = specs[name]
            samples = s.shape[1]
            xp = tf.concat([tf.transpose(states[name], (0, 2, 1)), x], axis=1)
            nxt[s.output] = tf.transpose(xp[:, -samples:], (0, 2, 1))  # (B, C, S)
            return xp

        def conv(x, kernel, bias):
            """Valid Conv1D: x (B, n + taps - 1, C) -> (B, n, F)."""
            return tf.nn.conv1d(x, const(kernel), stride=1, padding="VALID") + const(bias)

        def down(x, i: int, c_in: int):
            # Keras' CausalConv kernel (taps, 2*C_in, F), row p*C_in + c for sample p of a pair:
            # the row order of (B, n, 2, C_in) reshaped to (B, n, 2*C_in).
            name = f"enc{i + 1}_conv"
            kernel, bias = weights[name]
            bn = f"enc{i + 1}_bn"
            scale, shift = _bn_scale_shift(*weights[bn], model.get_layer(bn).epsilon)
            xp = with_state(x, name)
            xp = tf.reshape(xp, (tf.shape(xp)[0], -1, 2 * c_in))  # fold two samples per step
            y = conv(xp, kernel * scale, bias * scale + shift)
            return tf.nn.leaky_relu(y, alpha=float(cfg.leaky_slope)), kernel.shape[-1]

        def up(x, name: str, activation):
            # Keras' kernel (taps, C_in, 2*F), column u*F + o = output o of sub-sample u.
            kernel, bias = weights[name]
            f = kernel.shape[-1] // 2
            y = activation(conv(with_state(x, name), kernel, bias))  # (B, n, 2F)
            return tf.reshape(y, (tf.shape(y)[0], -1, f)), f  # (B, 2n, F): sample 2j + u

        def delay(x, name: str):
            s = specs[name].shape[1]
            return with_state(x, name)[:, :-s]

        # Encoder: fold, causal conv, LeakyReLU; keep each output for the skips.
        x, c, skips = mix, 1, []
        for i in range(levels):
            x, c = down(x, i, c)
            skips.append((x, c))  # (B, T*64 / 2**(i+1), c): level 6 is one step per hop

        # Memory: one GRU step for the call's hop (Keras gate order z, r, h; reset_after); its
        # state (B, U, 1) is the GRU's h.
        if cfg.memory_units:
            kernel, recurrent, bias = weights["memory"]
            h = states["memory"][:, :, 0]  # (B, U)
            xz, xr, xh = tf.split(tf.matmul(x[:, 0], const(kernel)) + const(bias[0]), 3, axis=-1)
            hz, hr, hh = tf.split(tf.matmul(h, const(recurrent)) + const(bias[1]), 3, axis=-1)
            z = tf.sigmoid(xz + hz)
            r = tf.sigmoid(xr + hr)
            h = z * h + (1.0 - z) * tf.tanh(xh + r * hh)
            nxt[specs["memory"].output] = h[:, :, None]
            x = tf.concat([h[:, None, :], x], axis=-1)  # (B, 1, U + C)
            c += cfg.memory_units

        # Decoder: causal sub-pixel upsampling, ReLU, the (delayed) skip.
        for i in range(levels - 1):
            x, c = up(x, f"dec{i + 1}_up", tf.nn.relu)
            skip, cs = skips[-2 - i]
            if hops_ahead:
                skip = delay(skip, f"dec{i + 1}_delay")
            x = tf.concat([x, skip], axis=-1)
            c += cs
        mask, _ = up(x, "mask", tf.sigmoid)  # (B, T*64, 1)
        dry = delay(mix, "mix_delay") if hops_ahead else mix
        return {info.output_name: mask * dry, **nxt}

    signature = [tf.TensorSpec((None, frame, 1), tf.float32, name=info.input_name),
                 *(tf.TensorSpec((None, *s.shape), tf.float32, name=s.input) for s in info.states)]
    return tf.function(fn, input_signature=signature, autograph=False)


def tflite_stream_variants(model, cfg, info: ModelInfo, calibration: list[dict]) -> dict[str, bytes]:
    """{'tflite': float32, 'int8.tflite': full-integer int8} flatbuffers with external state.

    calibration: one-hop feeds as export.convert.stream_calibration(hops=1) makes them (each
    hop's mix with the state the float model carried into it), so the state inputs calibrate on
    real state. The flatbuffers carry one signature ('serving_default') naming every input and
    output as the contract does.
    """
    import tensorflow as tf

    holder = tf.Module()  # with the trackable object the flatbuffer keeps a named signature
    holder.serve = stream_function(model, cfg, info)
    concrete = holder.serve.get_concrete_function()

    def converter():
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)

    out = {}
    out["tflite"] = quiet_convert(converter())
    c = converter()
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    # Feeds by input name: the calibrator matches them to the signature's inputs.
    c.representative_dataset = lambda: iter(calibration)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    out["int8.tflite"] = quiet_convert(c)  # int8 kernels inside; float32 in and out (states too)
    return out
