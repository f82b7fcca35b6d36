"""Conv1D and Conv1DTranspose that train fast on a CPU, with the stock layers' exact mathematics.

TensorFlow's CPU kernels for Conv1DTranspose and for the convolution gradients
(Conv2DBackpropInput/Filter) crawl at the U-Net's deepest shapes (1-4 samples, 256-512 channels):
below 1 GFLOP/s. The same arithmetic written as im2col (pad, stack the k shifted views, one einsum
with the kernel) runs on the matmul kernels, forward and backward.

These classes subclass the Keras layers and only replace `call`: the weights, their shapes
((k, in, out) for Conv1D, (k, out, in) for Conv1DTranspose), the config and the layer type in the
model summary are the stock ones, so a saved model loads into either and exports as plain
Conv/ConvTranspose. `tests/test_layers.py` checks both against the stock layers.
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
