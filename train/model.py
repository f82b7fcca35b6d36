"""The 1-D convolutional U-Net, built in one function from a config saved with the model."""
from __future__ import annotations

from pathlib import Path

import keras

from ..runtime.contract import INPUT_NAME, OUTPUT_NAME
from ..runtime.errors import UserError
from . import layers as fast
# The config and its presets live in a TensorFlow-free module; here for the callers that build.
from .config import LOSSES, PRESETS, UNetConfig, check_shape, loss_settings, preset  # noqa: F401


def build_unet(cfg: UNetConfig, stock_layers: bool = False) -> keras.Model:
    """The model of `cfg`: the frame U-Net (seed) or the streaming U-Net."""
    return build_stream_unet(cfg, stock_layers) if cfg.streaming else build_frame_unet(cfg, stock_layers)


def build_frame_unet(cfg: UNetConfig, stock_layers: bool = False) -> keras.Model:
    """mix (batch, context, 1) -> stem (batch, frame, 1): a sigmoid mask times the mixture.

    Each encoder step halves the length (64 -> 32 -> ... -> 1 for the seed); each decoder step
    doubles it and concatenates the encoder output of the same length (the U-Net's skips).
    `stock_layers` builds it from keras.layers' own Conv1D/Conv1DTranspose (same weights, slow
    CPU training) instead of the im2col versions in `layers.py`.
    """
    conv, deconv = ((keras.layers.Conv1D, keras.layers.Conv1DTranspose) if stock_layers
                    else (fast.Conv1D, fast.Conv1DTranspose))
    if cfg.context != cfg.frame:
        raise UserError("this U-Net maps a frame to itself: context must equal frame")
    if cfg.frame != cfg.stride ** len(cfg.filters):
        raise UserError(f"frame {cfg.frame} must equal stride**levels = {cfg.stride ** len(cfg.filters)}")
    k, s = cfg.kernel_size, cfg.stride
    mix = keras.Input((cfg.context, 1), name=INPUT_NAME)  # (B, 64, 1)

    # Encoder: strided Conv1D, BatchNorm, LeakyReLU; keep each output for the skips.
    x, skips = mix, []
    for i, f in enumerate(cfg.filters):
        x = conv(f, k, strides=s, padding="same", name=f"enc{i + 1}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"enc{i + 1}_bn")(x)
        x = keras.layers.LeakyReLU(cfg.leaky_slope, name=f"enc{i + 1}_lrelu")(x)
        skips.append(x)  # (B, 64 / 2**(i+1), f)

    # Decoder: Conv1DTranspose up, ReLU, dropout on some steps, concatenate the skip.
    for i, f in enumerate(reversed(cfg.filters[:-1])):
        x = deconv(f, k, strides=s, padding="same", name=f"dec{i + 1}_deconv")(x)
        x = keras.layers.ReLU(name=f"dec{i + 1}_relu")(x)
        if i in cfg.dropout_after:
            x = keras.layers.Dropout(cfg.dropout, name=f"dec{i + 1}_dropout")(x)
        x = keras.layers.Concatenate(name=f"dec{i + 1}_skip")([x, skips[-2 - i]])  # (B, L, 2f)

    # A one-channel mask at full length, applied to the mixture.
    mask = deconv(1, k, strides=s, padding="same", activation="sigmoid",
                                name="mask")(x)  # (B, 64, 1)
    stem = keras.layers.Multiply(name=OUTPUT_NAME)([mask, mix])
    return keras.Model(mix, stem, name=f"unet_{cfg.preset}")


def build_stream_unet(cfg: UNetConfig, stock_layers: bool = False) -> keras.Model:
    """mix (batch, T*frame, 1) -> stem (batch, T*frame, 1), causal: a sigmoid mask times the mixture.

    The seed's U-Net made causal across hops: each encoder step folds two samples into one and
    convolves causally (a window ends at the last sample of its pair), so the sixth level runs one
    step per 64-sample hop, having heard all of that hop. A GRU there carries memory from hop to
    hop. The decoder upsamples causally (sub-pixel: each step makes two) with the skips
    concatenated, so the estimate of hop n uses input up to the end of hop n (+ lookahead) only.
    With `lookahead` L samples the skips and the mixture are delayed by L: output sample t is the
    estimate for input sample t - L, made after the bottleneck heard L more samples.
    `stock_layers` builds the memory from keras.layers.GRU (same weights, slower CPU training)
    instead of `layers.GRU`.
    """
    check_shape(cfg)
    hops_ahead = cfg.lookahead // cfg.frame
    mix = keras.Input((None, 1), name=INPUT_NAME)  # (B, T*64, 1)

    # Encoder: fold two samples, causal conv, BatchNorm, LeakyReLU; keep each output for the skips.
    x, skips = mix, []
    for i, f in enumerate(cfg.filters):
        x = fast.CausalConv(f, cfg.taps, fold=2, name=f"enc{i + 1}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"enc{i + 1}_bn")(x)
        x = keras.layers.LeakyReLU(cfg.leaky_slope, name=f"enc{i + 1}_lrelu")(x)
        skips.append(x)  # (B, T*64 / 2**(i+1), f): level 6 is one step per hop

    # Memory: a GRU over hops, its output beside the encoder's.
    if cfg.memory_units:
        gru = keras.layers.GRU if stock_layers else fast.GRU
        h = gru(cfg.memory_units, return_sequences=True, name="memory")(x)  # (B, T, units)
        x = keras.layers.Concatenate(name="memory_skip")([h, x])

    # Decoder: causal sub-pixel upsampling, ReLU, dropout on some steps, the (delayed) skip.
    for i, f in enumerate(reversed(cfg.filters[:-1])):
        x = fast.CausalConv(f, cfg.taps, unfold=2, name=f"dec{i + 1}_up")(x)
        x = keras.layers.ReLU(name=f"dec{i + 1}_relu")(x)
        if i in cfg.dropout_after:
            x = keras.layers.Dropout(cfg.dropout, name=f"dec{i + 1}_dropout")(x)
        skip = skips[-2 - i]
        if hops_ahead:
            skip = fast.Delay(hops_ahead * cfg.frame // 2 ** (len(cfg.filters) - 1 - i),
                              name=f"dec{i + 1}_delay")(skip)
        x = keras.layers.Concatenate(name=f"dec{i + 1}_skip")([x, skip])  # (B, L, 2f)

    mask = fast.CausalConv(1, cfg.taps, unfold=2, activation="sigmoid", name="mask")(x)  # (B, T*64, 1)
    dry = fast.Delay(cfg.lookahead, name="mix_delay")(mix) if hops_ahead else mix
    stem = keras.layers.Multiply(name=OUTPUT_NAME)([mask, dry])
    return keras.Model(mix, stem, name=f"unet_{cfg.preset}")


def _split_true(y_true):
    """Targets of the nmae loss arrive as (B, N, 2): the stem, then the mixture (for its level)."""
    return (y_true[..., :1], y_true[..., 1:]) if y_true.shape[-1] == 2 else (y_true, None)


# SDR loss: distortion is floored at -30 dB of the stem (so one segment cannot run off to -inf)
# and both energies get 1e-3 of the mixture's, so a segment without drums scores
# 10 log10(1 + |est|^2 / (1e-3 |mix|^2)): up to +30 dB for the mixture passed through, instead of
# a ratio of two near-zero numbers. Such values lift the mean loss but not the gradients: each
# segment's gradient is that of log(error), the same relative pull whatever its offset.
SDR_CAP = 1e-3
SDR_FLOOR = 1e-3


@keras.saving.register_keras_serializable(package="unetsep")
class SegmentLoss(keras.losses.Loss):
    """Per segment, after `burn_in` samples: the MAE, or (`normalise`) the MAE divided by the
    mixture's mean absolute level, so loud and quiet songs weigh the same and the loss does not
    depend on the input gain; or (`sdr`) 10 log10(|stem - est|^2 / |stem|^2), the negative SDR in
    dB, also gain-free, and the L2 measure museval scores. An all-zero estimate scores ~0 dB on it.
    (A residual term, |(mix - est) - (mix - stem)|, would equal any of these exactly for a masked
    estimate, so it adds nothing.)"""

    def __init__(self, burn_in: int = 0, normalise: bool = False, zero: bool = False,
                 sdr: bool = False, **kwargs):
        kwargs.setdefault("name", "zero_estimate" if zero else "segment_loss")
        super().__init__(**kwargs)
        self.burn_in, self.normalise, self.zero, self.sdr = burn_in, normalise, zero, sdr

    def call(self, y_true, y_pred):
        import keras.ops as ops

        stem, mix = _split_true(y_true)
        stem = stem[:, self.burn_in:]
        est = ops.zeros_like(stem) if self.zero else y_pred[:, self.burn_in:]
        if self.sdr:
            signal = ops.sum(ops.square(stem), axis=(1, 2))  # (B,)
            ref = stem if mix is None else mix[:, self.burn_in:]  # streaming targets carry the mix
            floor = SDR_FLOOR * ops.sum(ops.square(ref), axis=(1, 2)) + 1e-8
            noise = ops.sum(ops.square(stem - est), axis=(1, 2)) + SDR_CAP * signal
            return 10.0 * (ops.log(noise + floor) - ops.log(signal + floor)) / ops.log(10.0)
        err = ops.mean(ops.abs(stem - est), axis=(1, 2))
        if self.normalise and mix is not None:
            err = err / (ops.mean(ops.abs(mix[:, self.burn_in:]), axis=(1, 2)) + 1e-5)
        return err

    def get_config(self):
        return {**super().get_config(), "burn_in": self.burn_in, "normalise": self.normalise,
                "zero": self.zero, "sdr": self.sdr}


@keras.saving.register_keras_serializable(package="unetsep")
class ZeroEstimate(keras.metrics.Mean):
    """The training loss of an all-zero estimate on the same batch: a model whose loss sits here
    has learned silence."""

    def __init__(self, burn_in: int = 0, normalise: bool = False, name: str = "zero_estimate",
                 sdr: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.burn_in, self.normalise, self.sdr = burn_in, normalise, sdr
        self._loss = SegmentLoss(burn_in, normalise, zero=True, sdr=sdr)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self._loss.call(y_true, y_pred), sample_weight)

    def get_config(self):
        return {**super().get_config(), "burn_in": self.burn_in, "normalise": self.normalise,
                "sdr": self.sdr}


def compile_unet(model: keras.Model, cfg: UNetConfig) -> keras.Model:
    """Adam and the preset's loss, with the all-zero estimate's loss as a metric beside it."""
    settings = loss_settings(cfg)
    loss = "mae" if cfg.loss == "mae" and not cfg.streaming else SegmentLoss(**settings)
    # Streaming presets backpropagate through thousands of GRU steps: clip the gradient's norm.
    clip = 1.0 if cfg.streaming else None
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, clipnorm=clip), loss=loss,
                  metrics=[ZeroEstimate(**settings)])
    return model


def load_run_config(run_dir: str | Path) -> UNetConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a training run (no config.json): pass the --out folder "
                        f"of 'unetsep train'")
    return UNetConfig.from_json(path.read_text())
