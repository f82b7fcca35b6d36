"""The model contract: the one place that names the runtime's facts.

Every exported model carries these as ONNX metadata (and as JSON beside a .tflite file); the
runtime reads them from the model and assumes nothing else. ``train`` and ``export`` import this
module so that the names and defaults are written down once.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

SAMPLE_RATE = 44100
FRAME = 64  # samples per hop: also the algorithmic latency
CONTEXT = 64  # samples the model sees per frame (the seed sees exactly its frame)
TARGETS = ("drums", "bass", "other", "vocals")
MIN_RATE, MAX_RATE = 4000, 768000  # Hz: the range of real recordings, for files and models alike
MAX_CHANNELS = 64  # of a file or a live stream: more is a damaged header or a typo
FLAC_MAX_CHANNELS, FLAC_MAX_RATE = 8, 655350  # the FLAC format's own limits (libsndfile refuses more)
INPUT_NAME = "mix"
OUTPUT_NAME = "stem"
LAYOUT = "batch,samples,1"
CONTRACT_VERSION = 1  # stateless frame models (the seed); 2 adds carried state (streaming)
STREAMING_VERSION = 2

# The files 'unetsep export' writes, <target>.<suffix>: suffix -> kind of model.
FORMATS = {"onnx": "float32", "tflite": "float32", "fp16.tflite": "float16",
           "int8.onnx": "int8", "dynint8.tflite": "int8", "int8.tflite": "int8"}

# Keys every model must carry; `ModelInfo.from_metadata` rejects a model that lacks one.
REQUIRED_KEYS = ("sample_rate", "frame", "context", "target", "input_name", "output_name", "layout")


@dataclass(frozen=True)
class StateSpec:
    """One carried state of a version-2 model: fed as `input`, its next value returned as
    `output`; `shape` per stream (the batch axis, first, excluded)."""

    name: str
    input: str
    output: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict) -> "StateSpec":
        return cls(name=str(d["name"]), input=str(d["input"]), output=str(d["output"]),
                   shape=tuple(int(n) for n in d["shape"]), dtype=str(d.get("dtype", "float32")))


def _parse_states(text: str) -> tuple[StateSpec, ...]:
    return tuple(StateSpec.from_dict(d) for d in json.loads(text))


@dataclass(frozen=True)
class ModelInfo:
    """What a model declares about itself; stored as string key/values in ONNX metadata."""

    sample_rate: int = SAMPLE_RATE
    frame: int = FRAME
    context: int = CONTEXT
    target: str = "drums"
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    layout: str = LAYOUT
    lookahead: int = 0
    preset: str = "seed"
    trained_on: str = ""
    version: int = CONTRACT_VERSION
    # Version 2: mix (batch, T*frame, 1) with T >= 1 plus one input per state -> stem (batch,
    # T*frame, 1) plus each state's next value. Output sample t estimates input t - lookahead.
    states: tuple[StateSpec, ...] = field(default_factory=tuple)

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples: one frame must be gathered, plus any lookahead."""
        return self.frame + self.lookahead

    @property
    def streaming(self) -> bool:
        """True for version-2 models: state carried from call to call, any number of hops a call."""
        return self.version >= STREAMING_VERSION

    def to_metadata(self) -> dict[str, str]:
        meta = {k: str(v) for k, v in asdict(self).items() if k != "states"}
        meta["states"] = json.dumps([asdict(s) for s in self.states])
        return meta

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        """Parse string metadata, each field by its own converter; raises KeyError naming the
        first missing required key, ValueError naming a field that does not parse or is out of
        range."""
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise KeyError(missing[0])
        kwargs = {}
        for name, value in meta.items():
            convert = _CONVERTERS.get(name)
            if convert is None:
                continue  # a newer exporter's extra field: ignored
            try:
                kwargs[name] = convert(value) if isinstance(value, str) else _from_json_value(name, value)
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"metadata field {name}={str(value)[:60]!r} does not parse ({e})") from None
        info = cls(**kwargs)
        info.validate()
        return info

    def validate(self) -> None:
        """Raise ValueError naming the first declared fact that cannot be true."""
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise ValueError(f"sample_rate {self.sample_rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.target):
            # It names output files (<target>.wav, no_<target>.wav): no paths, nothing empty.
            raise ValueError(f"target {self.target[:60]!r} is not a plain stem name (letters, digits, "
                             f"'_', '-', '.')")
        if self.frame <= 0:
            raise ValueError(f"frame {self.frame} must be positive")
        if self.context < self.frame:
            raise ValueError(f"context {self.context} is shorter than frame {self.frame}")
        if self.lookahead < 0 or self.lookahead % self.frame:
            raise ValueError(f"lookahead {self.lookahead} must be a whole number of frames")
        if self.version not in (CONTRACT_VERSION, STREAMING_VERSION):
            raise ValueError(f"contract version {self.version} is not 1 or 2 (a newer unetsep?)")
        if self.streaming and self.context != self.frame:
            raise ValueError("a streaming (version 2) model's context must equal its frame")
        if not self.streaming and self.states:
            raise ValueError("a version 1 model cannot carry states")
        for s in self.states:
            if not s.shape or any(n <= 0 for n in s.shape):
                raise ValueError(f"state {s.name} has shape {s.shape}: every axis must be positive")


def _from_json_value(name: str, value):
    """Metadata read from a .tflite's JSON file arrives typed already."""
    if name == "states":
        return tuple(StateSpec.from_dict(d) for d in value)
    return _CONVERTERS[name](str(value))


# One converter per field: an int stays an int, a bool a bool, the states a tuple of StateSpec.
_CONVERTERS = {"sample_rate": int, "frame": int, "context": int, "target": str, "input_name": str,
               "output_name": str, "layout": str, "lookahead": int, "preset": str, "trained_on": str,
               "version": int, "states": _parse_states}
