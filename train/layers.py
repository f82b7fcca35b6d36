"""Conv1D, Conv1DTranspose and GRU that train fast on a CPU, with the stock layers' exact mathematics.

TensorFlow's CPU kernels for Conv1DTranspose and for the convolution gradients
(Conv2DBackpropInput/Filter) crawl at the U-Net's deepest shapes (1-4 samples, 256-512 channels):
below 1 GFLOP/s. The same arithmetic written as im2col (pad, stack the k shifted views, one 2-D
matmul with the kernel) runs on the matmul kernels, forward and backward.

These classes subclass the Keras layers and only replace `call` (GRU: `inner_loop`): the weights, their shapes
((k, in, out) for Conv1D, (k, out, in) for Conv1DTranspose), the config and the layer type in the
model summary are the stock ones, so a saved model loads into either and exports as plain
Conv/ConvTranspose. `tests/test_layers.py` checks them against the stock layers.

Keras' GRU without cuDNN runs its cell once per step, input projection included: one small matmul
per hop that could have been one large one before the loop. `GRU` hoists it: 1.13-1.31x the
stream preset's training steps per second on this 2-core VM (`python -m
unetsep.benchmarks.train_speed --preset stream`).
"""
from __future__ import annotations

import keras
from keras import ops


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """(left, right) zero padding of a 'same' strided convolution over `length` samples."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


# At long, thin inputs (the U-Net's outer levels) TensorFlow's own kernels are the faster ones
# (see benchmarks/train_speed.py); the matmul form pays off from here down.
MATMUL_MAX_LENGTH = 8


def _use_matmul(layer, length) -> bool:
    return (length is not None and length <= MATMUL_MAX_LENGTH and layer.padding == "same"
            and layer.data_format == "channels_last" and tuple(layer.dilation_rate) == (1,)
            and getattr(layer, "groups", 1) == 1)


@keras.saving.register_keras_serializable(package="unetsep")
class Conv1D(keras.layers.Conv1D):
    """keras.layers.Conv1D ('same' padding) computed as an im2col matmul."""

    def call(self, inputs):
        if not _use_matmul(self, inputs.shape[1]):
            return super().call(inputs)
        k, s = self.kernel_size[0], self.strides[0]
        length = inputs.shape[1]
        out = -(-length // s)
        left, right = same_padding(length, k, s)
        x = ops.pad(inputs, ((0, 0), (left, right), (0, 0)))  # (B, L + pad, Cin)
        # cols[:, t, j, :] = x[:, t*s + j, :]                          (B, out, k, Cin)
        cols = ops.stack([x[:, j:j + s * (out - 1) + 1:s, :] for j in range(k)], axis=2)
        # One 2-D matmul: an einsum here lowers to a batch-broadcast matmul whose gradient
        # tiles the kernel over the batch, slower than the convolution it replaces.
        cin = inputs.shape[2]
        y = ops.matmul(ops.reshape(cols, (-1, k * cin)), ops.reshape(self.kernel, (k * cin, self.filters)))
        y = ops.reshape(y, (-1, out, self.filters))  # (B, out, filters)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y


@keras.saving.register_keras_serializable(package="unetsep")
class Conv1DTranspose(keras.layers.Conv1DTranspose):
    """keras.layers.Conv1DTranspose ('same' padding) computed as a matmul plus overlap-add.

    The transposed convolution scatters each input sample through every tap:
    y_full[t*s + j] += x[t] @ W[j]^T, length (L-1)*s + k; 'same' keeps L*s samples of it, from
    the left padding of the forward convolution it is the gradient of.
    """

    def call(self, inputs):
        if not _use_matmul(self, inputs.shape[1]) or self.output_padding is not None:
            return super().call(inputs)
        k, s = self.kernel_size[0], self.strides[0]
        length = inputs.shape[1]
        left, _ = same_padding(length * s, k, s)
        q = -(-k // s)  # taps per output phase
        # z[:, t, j, :] = x[:, t] @ W[j]^T, as one 2-D matmul           (B, L, k, filters)
        cin = inputs.shape[2]
        w = ops.reshape(ops.transpose(self.kernel, (2, 0, 1)), (cin, k * self.filters))
        z = ops.reshape(ops.matmul(ops.reshape(inputs, (-1, cin)), w), (-1, length, k, self.filters))
        z = ops.pad(z, ((0, 0), (0, 0), (0, q * s - k), (0, 0)))  # (B, L, q*s, filters)
        z = ops.reshape(z, (-1, length, q, s, self.filters))
        # Overlap-add: tap j = p*s + r of input t lands at output (t + p)*s + r.
        y = sum(ops.pad(z[:, :, p], ((0, 0), (p, q - 1 - p), (0, 0), (0, 0))) for p in range(q))
        y = ops.reshape(y, (-1, (length + q - 1) * s, self.filters))  # (B, (L+q-1)*s, filters)
        y = y[:, left:left + length * s, :]  # (B, L*s, filters)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y


@keras.saving.register_keras_serializable(package="unetsep")
class CausalConv(keras.layers.Layer):
    """A causal convolution over a sequence, with an optional stride (`fold`) or sub-pixel
    upsampling (`unfold`): the building block of the streaming U-Net.

        x (B, L, C) ──fold──► (B, L/fold, fold*C) ──taps──► (B, L/fold, unfold*F) ──unfold──► (B, L/fold*unfold, F)

    Folding `fold` consecutive samples into one vector makes every output window end at the last
    sample of its group: with fold=2, output j sees inputs ..., 2j, 2j+1, so the deepest step of
    hop n has heard all 64 samples of hop n (a plain causal stride-2 window would end at 2j and
    miss the hop's last sample). Each output sees `taps` folded steps: itself and taps-1 before.

    Streaming: `call(x, state)` takes the last taps-1 folded steps of the previous call
    (B, taps-1, fold*C) instead of zeros and also returns the next state; calls on consecutive
    chunks then compute exactly what one call on the whole sequence computes.
    """

    def __init__(self, filters: int, taps: int = 3, fold: int = 1, unfold: int = 1,
                 activation=None, **kwargs):
        super().__init__(**kwargs)
        if taps < 2:
            raise ValueError(f"CausalConv needs taps >= 2, got {taps}")
        self.filters, self.taps, self.fold, self.unfold = filters, taps, fold, unfold
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        cin = input_shape[-1] * self.fold
        self.kernel = self.add_weight(name="kernel", shape=(self.taps, cin, self.unfold * self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.unfold * self.filters,), initializer="zeros")

    def state_shape(self, channels: int) -> tuple[int, int]:
        """Shape of the carried state per stream: (taps - 1, fold * input channels)."""
        return self.taps - 1, self.fold * channels

    def call(self, x, state=None):
        cin = x.shape[-1] * self.fold
        x = ops.reshape(x, (ops.shape(x)[0], -1, cin))  # (B, n, fold*C): fold samples per step
        if state is None:
            xp = ops.pad(x, ((0, 0), (self.taps - 1, 0), (0, 0)))  # silence before the start
        else:
            xp = ops.concatenate([state, x], axis=1)  # (B, taps-1+n, fold*C)
        # cols[:, j] = steps j .. j+taps-1 of xp, i.e. inputs j-taps+1 .. j   (B, n, taps*fold*C)
        # (static slice bounds: the length is dynamic)
        cols = ops.concatenate([xp[:, t:(t - self.taps + 1) or None] for t in range(self.taps)], axis=-1)
        y = ops.matmul(cols, ops.reshape(self.kernel, (self.taps * cin, -1))) + self.bias
        y = ops.reshape(y, (ops.shape(y)[0], -1, self.filters))  # (B, n*unfold, F)
        y = self.activation(y) if self.activation is not None else y
        if state is None:
            return y
        return y, xp[:, 1 - self.taps:]  # the last taps-1 steps: the next call's state

    def compute_output_shape(self, input_shape):
        length = input_shape[1]
        out = None if length is None else length // self.fold * self.unfold
        return (input_shape[0], out, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "taps": self.taps, "fold": self.fold,
                "unfold": self.unfold, "activation": keras.activations.serialize(self.activation)}


@keras.saving.register_keras_serializable(package="unetsep")
class Delay(keras.layers.Layer):
    """Delays a sequence by `steps` (silence first): aligns the skips and the mixture with a
    bottleneck that looked ahead. x (B, L, C) -> (B, L, C); streaming state (B, steps, C)."""

    def __init__(self, steps: int, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps

    def call(self, x, state=None):
        if self.steps == 0:
            return x if state is None else (x, state)
        if state is None:
            return ops.pad(x, ((0, 0), (self.steps, 0), (0, 0)))[:, :-self.steps]
        xp = ops.concatenate([state, x], axis=1)
        return xp[:, :-self.steps], xp[:, -self.steps:]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "steps": self.steps}


@keras.saving.register_keras_serializable(package="unetsep")
class GRU(keras.layers.GRU):
    """keras.layers.GRU (reset_after, tanh / sigmoid, no dropout, forward) with every step's input
    projection x_t @ W + b_in computed for the whole sequence before the loop, which then does only
    the recurrent part h @ R + b_rec and the gates (Keras' order z, r, h):

        z = sigmoid(xz + hz)   r = sigmoid(xr + hr)   h~ = tanh(xh + r * hh)   h' = z h + (1 - z) h~

    Any other configuration (dropout, masks, go_backwards, ...) runs Keras' own loop, and so does
    a GRU that may run on cuDNN (use_cudnn=True, or "auto" with a GPU visible): cuDNN's kernel
    is faster still, and use_cudnn=True must keep failing where cuDNN cannot run.
    """

    def _cudnn_wanted(self) -> bool:
        if self.use_cudnn is True:
            return True
        if self.use_cudnn == "auto" and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_logical_devices("GPU"))
        return False

    def _hoistable(self, mask) -> bool:
        cell = self.cell
        return (mask is None and not self._cudnn_wanted() and not self.go_backwards
                and not self.unroll and cell.reset_after and cell.use_bias and not cell.dropout and not cell.recurrent_dropout
                and cell.activation is keras.activations.tanh
                and cell.recurrent_activation is keras.activations.sigmoid)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        from keras.src import backend as keras_backend  # Keras' own RNN loop, as RNN.inner_loop uses

        if not self._hoistable(mask[0] if isinstance(mask, (list, tuple)) else mask):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        if isinstance(initial_state, (list, tuple)):
            initial_state = initial_state[0]
        cell, u = self.cell, self.units
        x_all = ops.matmul(sequences, cell.kernel) + cell.bias[0]  # (B, T, 3U): every step at once
        recurrent, recurrent_bias = cell.recurrent_kernel, cell.bias[1]

        def step(x, states):  # x (B, 3U), states [h (B, U)]
            h = states[0]
            inner = ops.matmul(h, recurrent) + recurrent_bias  # (B, 3U)
            z = ops.sigmoid(x[:, :u] + inner[:, :u])
            r = ops.sigmoid(x[:, u:2 * u] + inner[:, u:2 * u])
            candidate = ops.tanh(x[:, 2 * u:] + r * inner[:, 2 * u:])
            h = z * h + (1 - z) * candidate
            return h, [h]

        return keras_backend.rnn(step, x_all, [initial_state], go_backwards=False, mask=None,
                                 unroll=False, input_length=sequences.shape[1],
                                 return_all_outputs=self.return_sequences)
