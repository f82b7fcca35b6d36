"""The U-Net's hyper-parameters, its presets and its losses' names: TensorFlow-free, so the CLI
can check `--preset` and `--loss` before it loads TensorFlow."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from ..runtime.contract import CONTEXT, FRAME, SAMPLE_RATE, TARGETS
from ..runtime.errors import UserError


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
    # Learning rate of the last epoch: a cosine by epoch from learning_rate down to it (None: constant).
    lr_final: float | None = None
    batch_size: int = 512  # frames (seed) or segments (streaming presets)
    epochs: int = 40
    # Streaming U-Net (contract v2): causal across hops, state carried between calls.
    streaming: bool = False
    taps: int = 3  # folded steps each causal conv sees (itself and taps-1 before)
    memory_units: int = 0  # GRU units at the bottleneck, one step per hop (0: none)
    lookahead: int = 0  # samples (whole hops) the output waits for
    segment_seconds: float = 0.0  # training examples: continuous segments of this length
    burn_in_seconds: float = 0.0  # no loss on the first seconds of a segment (zero initial state)
    # mae (the seed's) | nmae (MAE normalised by the mixture level, per segment) | sdr (negative
    # signal-to-distortion ratio per segment, in dB: the L2 measure museval scores)
    loss: str = "mae"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "UNetConfig":
        d = json.loads(text)
        for k in ("filters", "dropout_after"):
            d[k] = tuple(d[k])
        return cls(**d)

    @property
    def segment(self) -> int:
        """Samples per training segment, a whole number of hops."""
        return int(self.segment_seconds * self.sample_rate) // self.frame * self.frame

    @property
    def burn_in(self) -> int:
        return int(self.burn_in_seconds * self.sample_rate)


PRESETS = {
    # The seed: 64-sample frames, six stride-2 levels down to one sample of 512 channels.
    "seed": UNetConfig(),
    # Same shape, an eighth of the channels: for tests and quick trials.
    "tiny": UNetConfig(preset="tiny", filters=(2, 4, 8, 16, 32, 64)),
    # Causal across hops with a GRU memory at the bottleneck (one step per 64-sample hop), still
    # 64 samples of latency; half the seed's widths keep a hop under the seed's FLOPs. Trained on
    # 3 s segments, the first 0.5 s without loss so the model never learns the zero start state.
    "stream": UNetConfig(preset="stream", filters=(8, 16, 32, 64, 128, 256), streaming=True,
                         memory_units=256, dropout_after=(), batch_size=8, epochs=12,
                         segment_seconds=3.0, burn_in_seconds=0.5, loss="nmae"),
    # The same design at an eighth of the channels: tests.
    "tiny-stream": UNetConfig(preset="tiny-stream", filters=(2, 2, 4, 8, 8, 16), streaming=True,
                              memory_units=8, dropout_after=(), batch_size=4, epochs=2,
                              segment_seconds=1.0, burn_in_seconds=0.25, loss="nmae"),
}


def preset(name: str, **overrides) -> UNetConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    if overrides.get("target", "drums") not in TARGETS:
        raise UserError(f"unknown target {overrides['target']!r}: choose one of {', '.join(TARGETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def check_shape(cfg: UNetConfig) -> None:
    """What build_unet needs of a config's frame and look-ahead, checkable before any work."""
    if cfg.frame != 2 ** len(cfg.filters):
        raise UserError(f"frame {cfg.frame} must equal 2**levels = {2 ** len(cfg.filters)}")
    if cfg.lookahead % cfg.frame:
        raise UserError(f"lookahead {cfg.lookahead} must be a whole number of hops ({cfg.frame} samples)")


LOSSES = ("mae", "nmae", "sdr")


def loss_settings(cfg: UNetConfig) -> dict:
    """SegmentLoss's settings (burn_in, normalise, sdr) for the preset's loss and its all-zero
    estimate."""
    if cfg.loss not in LOSSES:
        raise UserError(f"unknown loss {cfg.loss!r}: choose one of {', '.join(LOSSES)}")
    if cfg.loss == "sdr" and not cfg.streaming:
        raise UserError("--loss sdr scores whole segments: use a streaming preset (--preset stream) "
                        "or --loss mae")
    return {"burn_in": cfg.burn_in if cfg.streaming else 0, "normalise": cfg.loss == "nmae",
            "sdr": cfg.loss == "sdr"}


def training_config(name: str, **overrides) -> UNetConfig:
    """The preset `name` with the command line's overrides, every combination `train` refuses
    refused here (unknown preset, target or loss; a loss or look-ahead the preset cannot use; a
    look-ahead of part of a hop): the CLI calls it before it loads TensorFlow."""
    cfg = preset(name, **overrides)
    loss_settings(cfg)
    if cfg.lookahead and not cfg.streaming:
        raise UserError(f"--lookahead is for the streaming presets; preset {cfg.preset!r} decides "
                        f"each frame alone (use --preset stream)")
    check_shape(cfg)
    return cfg
