"""`unetsep`: one console script, one subcommand per job.

Heavy imports happen inside each command, so that `separate`, `live` and `bench` on ONNX models
never load TensorFlow. A `UserError` anywhere prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from unetsep.runtime.errors import UserError


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cmd_data(args: argparse.Namespace) -> None:
    from unetsep.train.render import render_dataset

    out = render_dataset(args.out, songs=args.songs, seconds=args.seconds, seed=args.seed,
                         soundfont=args.soundfont)
    print(f"wrote {args.songs} songs to {out} (MUSDB18-HQ layout)")


def cmd_train(args: argparse.Namespace) -> None:
    _quiet_tensorflow()
    from unetsep.train import fit

    if args.cpu_devices:
        fit.configure_cpus(args.cpu_devices)
    path = fit.train(args.data, args.out, target=args.target, preset_name=args.preset,
                     epochs=args.epochs, batch_size=args.batch_size, steps=args.steps,
                     strategy=args.strategy, seed=args.seed, stock_layers=args.stock_layers)
    print(f"trained model: {path}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unetsep", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="render the default multitrack dataset (MUSDB18-HQ layout)")
    d.add_argument("--out", required=True, help="dataset folder to create")
    d.add_argument("--songs", type=int, default=6, help="number of songs (default 6)")
    d.add_argument("--seconds", type=float, default=20.0, help="length of each song (default 20)")
    d.add_argument("--seed", type=int, default=0, help="random seed; same seed, same songs")
    d.add_argument("--soundfont", help="General MIDI .sf2 (default: FluidR3_GM where installed)")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train the U-Net on a MUSDB18-layout folder")
    t.add_argument("--data", required=True, help="MUSDB18, MUSDB18-HQ or 'unetsep data' folder")
    t.add_argument("--target", default="drums", help="drums (default), bass, other or vocals")
    t.add_argument("--preset", default="seed", help="architecture preset: seed (default) or tiny")
    t.add_argument("--epochs", type=int, help="epochs (default: the preset's, 40)")
    t.add_argument("--batch-size", type=int, help="frames per batch (default 512)")
    t.add_argument("--steps", type=int, help="steps per epoch (default: one pass over the data)")
    t.add_argument("--out", default="runs/default", help="run directory (default runs/default); "
                   "an interrupted run there resumes")
    t.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"],
                   help="tf.distribute strategy: mirrored = all local GPUs, multiworker = TF_CONFIG")
    t.add_argument("--cpu-devices", type=int, default=0,
                   help="split the CPU into N logical devices (try --strategy mirrored without GPUs)")
    t.add_argument("--seed", type=int, default=0, help="random seed for weights and excerpts")
    t.add_argument("--stock-layers", action="store_true",
                   help="use Keras' own Conv1D/Conv1DTranspose kernels (slow on CPU; for comparison)")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"unetsep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unetsep {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
