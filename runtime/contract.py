"""The model contract: the one place that names the runtime's facts.

Every exported model carries these as ONNX metadata (and as JSON beside a .tflite file); the
runtime reads them from the model and assumes nothing else. ``train`` and ``export`` import this
module so that the names and defaults are written down once.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

SAMPLE_RATE = 44100
FRAME = 64  # samples per hop: also the algorithmic latency
CONTEXT = 64  # samples the model sees per frame (the seed sees exactly its frame)
TARGETS = ("drums", "bass", "other", "vocals")
INPUT_NAME = "mix"
OUTPUT_NAME = "stem"
LAYOUT = "batch,samples,1"
CONTRACT_VERSION = 1

# Keys every model must carry; `ModelInfo.from_metadata` rejects a model that lacks one.
REQUIRED_KEYS = ("sample_rate", "frame", "context", "target", "input_name", "output_name", "layout")


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

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples: one frame must be gathered, plus any lookahead."""
        return self.frame + self.lookahead

    def to_metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        """Parse string metadata; raises KeyError naming the first missing required key."""
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise KeyError(missing[0])
        types = {f.name: f.type for f in fields(cls)}
        kwargs = {}
        for f in fields(cls):
            if f.name in meta:
                kwargs[f.name] = int(meta[f.name]) if types[f.name] in ("int", int) else str(meta[f.name])
        return cls(**kwargs)
