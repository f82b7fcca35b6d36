"""Widen a trained streaming model's memory (its GRU) without changing what it computes, so that
training goes on from where the model is with more capacity instead of starting again:

    python -m unetsep.train.widen checkpoints/stream-gpu2/ft3.keras --config CONFIG.json \
        --memory-units 384 --out runs/wide

writes runs/wide/{model.keras, config.json}: `fit_jax pack --config runs/wide/config.json
--init runs/wide/model.keras` trains it on (`unetsep train` has no preset of that width).

The new units start with the random input weights a fresh model would have, and two sets of
zeros keep the output exact: their rows of the recurrent kernel (the old units do not hear them)
and their input channels of `dec1_up`, the first decoder step, which reads the GRU's output beside
the encoder's (memory_skip = [h, x]). The decoder's weights from the new units get gradients at
the first step (the new units' states are not zero), and the new units' own weights from the
second. Net2Net (Chen et al., 2016) widens by splitting units instead; zeros are simpler here and
exact for a GRU, whose gates are per unit.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..runtime.errors import UserError

GATES = 3  # a Keras GRU's kernels hold z, r and h side by side, `units` columns each


def widen_weights(memory: list[np.ndarray], dec1: list[np.ndarray], fresh_memory: list[np.ndarray],
                  fresh_dec1: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The trained GRU's [kernel (in, 3U), recurrent_kernel (U, 3U), bias (2, 3U)] and dec1_up's
    [kernel (taps, U + C, out), bias (out,)] set into a wider layer pair's fresh weights
    (U' > U units): old columns copied per gate, the new units' pull on the old ones and on the
    decoder zeroed. Returns the wider (memory, dec1) weights."""
    kernel, recurrent, bias = memory
    units = recurrent.shape[0]
    wide_kernel, wide_recurrent, wide_bias = (w.copy() for w in fresh_memory)
    wide = wide_recurrent.shape[0]
    if wide <= units:
        raise UserError(f"--memory-units {wide} must be more than the model's {units}")
    for g in range(GATES):
        old, new = slice(g * units, (g + 1) * units), slice(g * wide, g * wide + units)
        wide_kernel[:, new] = kernel[:, old]
        wide_recurrent[:units, new] = recurrent[:, old]
        wide_recurrent[units:, new] = 0.0  # new units -> old units' gates
        wide_bias[..., new] = bias[..., old]
    dec_kernel, dec_bias = dec1
    wide_dec = np.zeros_like(fresh_dec1[0])  # (taps, U' + C, out)
    wide_dec[:, :units] = dec_kernel[:, :units]  # from the old units
    wide_dec[:, wide:] = dec_kernel[:, units:]  # from the encoder's last level
    return [wide_kernel, wide_recurrent, wide_bias], [wide_dec, dec_bias.copy()]


def widen(model, cfg, units: int):
    """(wider Keras model, its config): `model` (built from `cfg`, a streaming preset with a
    memory) with `units` GRU units, computing the same output."""
    from .model import build_unet

    if not cfg.streaming or not cfg.memory_units:
        raise UserError(f"preset {cfg.preset!r} has no memory to widen (a streaming preset with "
                        f"memory_units has)")
    wide_cfg = replace(cfg, memory_units=units)
    wide = build_unet(wide_cfg)
    have = {layer.name: layer for layer in model.layers}
    for layer in wide.layers:
        if not layer.weights or layer.name in ("memory", "dec1_up"):
            continue
        layer.set_weights(have[layer.name].get_weights())
    memory, dec1 = widen_weights(have["memory"].get_weights(), have["dec1_up"].get_weights(),
                                 wide.get_layer("memory").get_weights(),
                                 wide.get_layer("dec1_up").get_weights())
    wide.get_layer("memory").set_weights(memory)
    wide.get_layer("dec1_up").set_weights(dec1)
    return wide, wide_cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unetsep.train.widen", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a streaming run's .keras file")
    p.add_argument("--config", required=True, help="its config.json (a run's, or a checkpoint README's)")
    p.add_argument("--memory-units", type=int, required=True, help="GRU units of the wider model")
    p.add_argument("--out", required=True, help="folder for model.keras and config.json")
    a = p.parse_args(argv)
    try:
        _widen_command(a)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _widen_command(a) -> None:
    import keras

    from ..runtime.files import write_atomic
    from .model import UNetConfig, build_unet

    cfg = UNetConfig.from_json(Path(a.config).read_text())
    trained = keras.models.load_model(a.model, compile=False)
    model = build_unet(cfg)
    model.set_weights(trained.get_weights())
    wide, wide_cfg = widen(model, cfg, a.memory_units)
    x = np.random.default_rng(0).standard_normal((2, 64 * cfg.frame, 1)).astype("float32") * 0.1
    err = float(np.abs(wide.predict(x, verbose=0) - model.predict(x, verbose=0)).max())
    if not err <= 1e-4:  # export's float32 tolerance: a wider model that is not the same one
        raise UserError(f"the widened model's output differs by {err:.1e} on noise; not written")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wide_cfg = replace(wide_cfg, extra={**wide_cfg.extra, "widened_from": str(Path(a.model).resolve()),
                                        "widened_memory_units": [cfg.memory_units, a.memory_units]})
    write_atomic(out / "config.json", lambda t: t.write_text(wide_cfg.to_json()))
    write_atomic(out / "model.keras", wide.save)
    print(f"memory {cfg.memory_units} -> {a.memory_units} units, {model.count_params():,} -> "
          f"{wide.count_params():,} parameters; output max |difference| {err:.1e} on 64 hops of noise; "
          f"wrote {out}/model.keras and config.json")


if __name__ == "__main__":
    raise SystemExit(main())
