"""The 1-D convolutional U-Net, built in one function from a config saved with the model."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras

from ..runtime.contract import CONTEXT, FRAME, INPUT_NAME, OUTPUT_NAME, SAMPLE_RATE, TARGETS
from ..runtime.errors import UserError
from . import layers as fast


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of a U-Net and of its training; `config.json` in every run directory."""

    preset: str = "seed"
    target: str = "drums"
    sample_rate: int = SAMPLE_RATE
    frame: int = FRAME
    context: int = CONTEXT
    filters: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    kernel_size: int = 5
    stride: int = 2
    leaky_slope: float = 0.2
    dropout: float = 0.5
    dropout_after: tuple[int, ...] = (0, 2)  # decoder steps (0 = first upsampling) with dropout
    learning_rate: float = 1e-3
    batch_size: int = 512
    epochs: int = 40
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "UNetConfig":
        d = json.loads(text)
        for k in ("filters", "dropout_after"):
            d[k] = tuple(d[k])
        return cls(**d)


PRESETS = {
    # The seed: 64-sample frames, six stride-2 levels down to one sample of 512 channels.
    "seed": UNetConfig(),
    # Same shape, an eighth of the channels: for tests and quick trials.
    "tiny": UNetConfig(preset="tiny", filters=(2, 4, 8, 16, 32, 64)),
}


def preset(name: str, **overrides) -> UNetConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    if overrides.get("target", "drums") not in TARGETS:
        raise UserError(f"unknown target {overrides['target']!r}: choose one of {', '.join(TARGETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def build_unet(cfg: UNetConfig, stock_layers: bool = False) -> keras.Model:
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


def compile_unet(model: keras.Model, cfg: UNetConfig) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mae")
    return model


def load_run_config(run_dir: str | Path) -> UNetConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a training run (no config.json): pass the --out folder "
                        f"of 'unetsep train'")
    return UNetConfig.from_json(path.read_text())
