"""An identity model with the shipped model's contract: the floor of every latency figure.

    python -m unetsep.benchmarks.identity --out identity.onnx [--like MODEL.onnx]

It returns its input as the estimate (a version-1 model, one frame in, the same frame out), so
`unetsep bench` / `unetsep live` with it time everything but the network: the engine's copies,
onnxruntime's call overhead, the audio path and the machine's own stalls. Report a model's xruns
and tails next to this floor, measured the same way in the same session.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def identity_onnx(info):
    """ONNX graph mix (B, context, 1) -> stem = mix (B, frame, 1) (context == frame) with `info`."""
    from onnx import TensorProto, helper

    from ..export.lean import _Graph

    g = _Graph()
    g.nodes.append(helper.make_node("Identity", [info.input_name], [info.output_name], name="identity"))
    info = replace(info, context=info.frame, version=1, states=(), lookahead=0, preset="identity")
    return g.model("identity", info, "unetsep.benchmarks.identity",
                   [helper.make_tensor_value_info(info.input_name, TensorProto.FLOAT, ["batch", info.frame, 1])],
                   [helper.make_tensor_value_info(info.output_name, TensorProto.FLOAT, ["batch", info.frame, 1])])


def main(argv: list[str] | None = None) -> int:
    import onnx

    from ..runtime.backends import OrtModel, default_model_path
    from ..runtime.files import write_atomic

    p = argparse.ArgumentParser(prog="python -m unetsep.benchmarks.identity", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="where to write the .onnx")
    p.add_argument("--like", help="copy the contract of this model (default: the shipped one)")
    args = p.parse_args(argv)
    info = OrtModel(args.like or default_model_path()).info
    proto = identity_onnx(info)
    write_atomic(Path(args.out), lambda path: onnx.save(proto, str(path)))
    print(f"wrote {args.out}: identity, frame {info.frame}, {info.sample_rate} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
