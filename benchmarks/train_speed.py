"""Training throughput of the seed U-Net: stock Keras conv layers vs the fast matmul layers.

    python -m unetsep.benchmarks.train_speed [--rounds 5] [--steps 8] [--data DIR]
    python -m unetsep.benchmarks.train_speed --preset stream --data DIR [--rounds 5] [--steps 4]

Both models train on the same in-memory batches, interleaved (stock, fast, stock, fast, ...), and
the script prints the median frames/s of each and the ratio. With --data, it also times the full
`unetsep train` input pipeline (disk -> tf.data) feeding the fast model, which is what a run sees.
For a streaming preset it times the preset's model with Keras' own GRU and with layers.GRU (the
same weights), interleaved on in-memory segments, then the latter fed from disk through the
augmented segment pipeline; "frames" are 64-sample hops of one channel.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from unetsep.train.config import PRESETS, preset  # TensorFlow-free: a bad --preset is refused at once

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="batches per timed round")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--stock-steps", type=int, default=2, help="batches per round for the slow stock model")
    p.add_argument("--data", help="also time the disk pipeline from this dataset")
    p.add_argument("--preset", default="seed", choices=list(PRESETS),
                   help="seed (stock vs fast layers) or a streaming preset")
    args = p.parse_args(argv)

    if preset(args.preset).streaming:
        return stream_speed(args)

    import numpy as np

    from unetsep.train.model import build_unet, compile_unet

    cfg = preset("seed", batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size * args.steps, cfg.frame, 1)).astype("float32") * 0.1
    y = x * 0.5
    models = {"stock": compile_unet(build_unet(cfg, stock_layers=True), cfg),
              "fast": compile_unet(build_unet(cfg), cfg)}
    frames = {"stock": args.batch_size * args.stock_steps, "fast": len(x)}
    for name, m in models.items():  # warm-up: tracing and first allocation, reported apart
        t = time.perf_counter()
        m.fit(x[:frames[name]], y[:frames[name]], batch_size=args.batch_size, epochs=1, verbose=0)
        print(f"warm-up {name}: {time.perf_counter() - t:.1f} s")
    rates = {n: [] for n in models}
    for r in range(args.rounds):
        for name, m in models.items():
            n = frames[name]
            t = time.perf_counter()
            m.fit(x[:n], y[:n], batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)
            rates[name].append(n / (time.perf_counter() - t))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f} frames/s" for n, v in rates.items()),
              flush=True)
    med = {n: statistics.median(v) for n, v in rates.items()}
    for n, v in rates.items():
        print(f"{n:6s} median {med[n]:8,.0f} frames/s  min {min(v):8,.0f}  max {max(v):8,.0f}")
    print(f"fast / stock = {med['fast'] / med['stock']:.1f}x; "
          f"fast = {med['fast'] * cfg.frame / cfg.sample_rate:.2f}x real time (mono)")

    if args.data:
        from unetsep.train.dataset import open_db, training_dataset

        db = open_db(args.data, "train", "train", cfg.target, cfg.sample_rate)
        ds = training_dataset(db.tracks, cfg.target, cfg.frame, args.batch_size, seed=0)
        m = models["fast"]
        m.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
        t = time.perf_counter()
        m.fit(ds, steps_per_epoch=args.steps * args.rounds, epochs=1, verbose=0, shuffle=False)
        rate = args.steps * args.rounds * args.batch_size / (time.perf_counter() - t)
        print(f"fast model fed from disk ({args.data}): {rate:,.0f} frames/s")


def stream_speed(args) -> None:
    """Hops/s of a streaming preset, its GRU stock vs fast (layers.GRU; the same weights),
    interleaved on in-memory segments; then the fast model fed by the real disk pipeline."""
    import numpy as np

    from unetsep.train.model import build_unet, compile_unet

    cfg = preset(args.preset)
    rng = np.random.default_rng(0)
    n = cfg.batch_size * args.steps
    x = (rng.standard_normal((n, cfg.segment, 1)) * 0.1).astype("float32")
    y = np.concatenate([x * 0.5, x], axis=-1)
    models = {"stock": compile_unet(build_unet(cfg, stock_layers=True), cfg),
              "fast": compile_unet(build_unet(cfg), cfg)}
    models["fast"].set_weights(models["stock"].get_weights())
    hops = cfg.segment // cfg.frame
    # Fed as a tf.data dataset, as `unetsep train` feeds it: from numpy arrays, fit() ran each call
    # either on both cores or on one (3.2k or 5.2k frames/s here, at random per call).
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(cfg.batch_size)
    for name, m in models.items():  # warm-up: tracing and first allocation, reported apart
        t = time.perf_counter()
        m.fit(batches.take(1), epochs=1, verbose=0)
        print(f"warm-up {name}: {time.perf_counter() - t:.1f} s")
    rates = {name: [] for name in models}
    for r in range(args.rounds):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):  # alternate who goes first
            m = models[name]
            t = time.perf_counter()
            m.fit(batches, epochs=1, verbose=0)
            rates[name].append(n * hops / (time.perf_counter() - t))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
              + " frames/s (in memory)", flush=True)
    for name, v in rates.items():
        print(f"{args.preset} {name} GRU in memory: median {statistics.median(v):,.0f} frames/s, "
              f"min {min(v):,.0f}, max {max(v):,.0f}")
    print(f"fast / stock: {statistics.median(rates['fast']) / statistics.median(rates['stock']):.2f}x")
    model = models["fast"]
    if args.data:
        from unetsep.train.dataset import open_db, segment_dataset

        db = open_db(args.data, "train", "train", cfg.target, cfg.sample_rate)
        ds = segment_dataset(db.tracks, cfg.target, cfg.segment, cfg.batch_size, 0, cfg.sample_rate,
                             cfg.lookahead, augment=True)
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
        steps = args.steps * args.rounds
        t = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        rate = steps * cfg.batch_size * hops / (time.perf_counter() - t)
        print(f"{args.preset} fed from disk ({args.data}, augmented): {rate:,.0f} frames/s")


if __name__ == "__main__":
    main()
