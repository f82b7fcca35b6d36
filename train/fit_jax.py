"""Train a U-Net on a lent GPU machine that has JAX but no TensorFlow (Keras 3 on any backend).

Three steps, two machines:

    # here (TensorFlow): the training split and the start weights, packed under 58 MB
    python -m unetsep.train.fit_jax pack --data /work/data/big --init run_or.keras \\
        --config checkpoints/stream-huge/config.json --out .gpu/bundle
    # there, with KERAS_BACKEND=jax (or any backend): time-boxed training, weights saved per epoch
    # (killed, the same line resumes it where its time box stood)
    python -m unetsep.train.fit_jax fit --bundle .gpu/bundle --minutes 7 --out $OUT
    # here: the weights back into a run folder that `unetsep export` takes
    python -m unetsep.train.fit_jax finish --bundle .gpu/bundle --weights latest.npz \\
        --history history.csv --out runs/gpu        # reads fit.json beside latest.npz

The model, loss, optimizer and augmentation are `model.py`'s and `augment.py`'s, so the weights are
those `unetsep train` would make; only the data differs (see bundle.py) and the learning rate
follows a cosine over the time box rather than over epochs.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..runtime.errors import UserError, cause_of
from ..runtime.files import write_atomic, write_text_atomic
from .config import UNetConfig

CONFIG = "config.json"
INIT = "init.npz"


def _save_npz(path: Path, weights: list) -> None:
    write_atomic(path, lambda tmp: np.savez(tmp, *[np.asarray(w) for w in weights]))


def _read_npz(path: Path) -> list[np.ndarray]:
    if not Path(path).is_file():
        raise UserError(f"{path}: no such weights file; pass the latest.npz that 'fit' wrote")
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def _config(path: Path, what: str):
    """The UNetConfig in `path`, which fit_jax trains only if it is a streaming preset."""
    try:
        cfg = UNetConfig.from_json(Path(path).read_text())
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{what} {path} is not a run's config.json ({cause_of(e, 100)}); pass the "
                        f"config.json of a streaming run") from None
    if not cfg.streaming or cfg.segment <= 0:
        raise UserError(f"{what} {path} is preset {cfg.preset!r}: fit_jax trains streaming presets "
                        f"(3 s segments, e.g. --preset stream) only; train others with 'unetsep train'")
    return cfg


def _set_weights(model, weights: list, source) -> None:
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise UserError(f"{source} does not fit this model ({cause_of(e, 100)}): it comes from another "
                        f"preset or bundle; pass the weights of a run with this bundle's config") from None


def pack_command(a) -> None:
    from . import bundle
    from .dataset import open_db
    from .model import build_unet

    cfg = _config(Path(a.config), "--config")
    if not 2 <= a.bits <= 16:
        raise UserError(f"--bits {a.bits}: choose 2..16 (FLAC stores 16-bit samples)")
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):  # old songs or weights would ride along
        raise UserError(f"--out {out} is not empty; pack into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    budget = int(a.max_mb * 1e6)
    if a.init:
        import keras

        from . import layers as _registered  # noqa: F401  the saved layer classes

        model = build_unet(cfg, stock_layers=True)
        try:
            model.set_weights(keras.models.load_model(a.init, compile=False).get_weights())
        except (ValueError, OSError, TypeError) as e:
            raise UserError(f"--init {a.init} cannot start a model of {a.config} ({cause_of(e, 100)}): "
                            f"pass the .keras model of a run with that config") from None
        _save_npz(out / INIT, model.get_weights())
        budget -= (out / INIT).stat().st_size
    cfg = replace(cfg, extra={**cfg.extra, "init": str(a.init) if a.init else None})
    write_text_atomic(out / CONFIG, cfg.to_json())
    db = open_db(a.data, "train", "train", cfg.target, cfg.sample_rate)
    m = bundle.pack(db.tracks, cfg.target, out, a.seconds, a.bits, a.seed, budget, cfg.sample_rate,
                    source=str(Path(a.data).resolve()))  # absolute: export reads it from anywhere
    print(f"{len(m['songs'])} songs x {a.seconds:g} s, {m['bytes'] / 1e6:.1f} MB of FLAC in {out}")


class _Batches:
    """Endless batches made by `threads` threads ahead of the GPU; a queue of `depth`. A thread's
    error is raised by the consumer, so training stops instead of waiting for ever."""

    def __init__(self, pairs, cfg, batch_size: int, seed: list[int], threads: int = 8, depth: int = 16):
        import queue

        from . import bundle

        self.q: queue.Queue = queue.Queue(depth)

        def work(k: int):
            rng = np.random.default_rng([*seed, k])
            try:
                while True:
                    self.q.put(bundle.batch(pairs, cfg.segment, batch_size, cfg.lookahead, rng))
            except BaseException as e:  # noqa: BLE001  handed to the training loop
                self.q.put(e)

        for k in range(threads):
            threading.Thread(target=work, args=(k,), daemon=True).start()

    def __iter__(self):
        while True:
            item = self.q.get()
            if isinstance(item, BaseException):
                raise item
            yield item


def _csv(rows: list[dict]) -> str:
    import io

    f = io.StringIO()
    w = csv.DictWriter(f, fieldnames=list(rows[-1]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return f.getvalue()


def _device(keras) -> str:
    """The accelerator (or CPU) the backend computes on, for the log."""
    if keras.backend.backend() == "jax":
        import jax

        return f"jax {jax.__version__} {jax.devices()[0]}"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return f"tensorflow {tf.__version__} {'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'}"
    return keras.backend.backend()


RESUME = "resume.npz"  # after each epoch: the weights, Adam's variables and where the fit stands


def _save_resume(path: Path, weights: list, optimizer: list, state: dict) -> None:
    """One file, written atomically, so the weights, the optimizer and the state always agree."""
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer)})
    write_atomic(path, lambda tmp: np.savez(tmp, state=np.array(json.dumps(state)), **arrays))


def _read_resume(path: Path) -> tuple[dict, list, list]:
    """(state, weights, optimizer variables) that _save_resume wrote."""
    with np.load(path) as z:
        count = lambda p: sum(1 for k in z.files if k[0] == p and k[1:].isdigit())  # noqa: E731
        return (json.loads(str(z["state"])), [z[f"w{i}"] for i in range(count("w"))],
                [z[f"o{i}"] for i in range(count("o"))])


def _resume_state(out: Path, settings: dict) -> dict | None:
    """The state a killed `fit` into `out` left (rerunning its line resumes it), with its weights
    and optimizer variables; None for a new run; a finished run or other settings are refused."""
    if (out / "fit.json").is_file():
        raise UserError(f"{out} holds a finished fit (fit.json); pass another --out")
    if not (out / RESUME).is_file():
        return None
    try:
        state, weights, optimizer = _read_resume(out / RESUME)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{out / RESUME} is damaged ({e}); remove {out} or pass another --out") from None
    state.update(weights=weights, optimizer=optimizer)
    if state["settings"] != settings:
        differ = [k for k in settings if state["settings"].get(k) != settings[k]]
        raise UserError(f"{out} holds a fit with other {', '.join(differ)}; rerun its own line to "
                        f"resume it, or pass another --out")
    return state


def fit_command(a) -> None:
    from . import bundle

    folder, out = Path(a.bundle), Path(a.out)
    t0 = time.time()
    manifest, pairs = bundle.load(folder)  # before Keras: a wrong folder fails at once

    import keras

    from .fit import cosine_rate
    from .model import build_unet, compile_unet

    if a.minutes <= 0 or a.batch_size < 1 or a.steps < 1:
        raise UserError("--minutes, --batch-size and --steps must be positive")
    cfg = _config(folder / CONFIG, "bundle config")
    if (manifest["target"], manifest["rate"]) != (cfg.target, cfg.sample_rate):
        raise UserError(f"{folder}: its songs are {manifest['target']} at {manifest['rate']} Hz but "
                        f"its config trains {cfg.target} at {cfg.sample_rate} Hz; pack it again")
    settings = {"bundle": str(folder.resolve()), "minutes": a.minutes, "batch_size": a.batch_size,
                "steps": a.steps, "lr": a.lr, "lr_final": a.lr_final, "loss": a.loss,
                "seed": a.seed, "scratch": a.scratch}
    state = _resume_state(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, batch_size=a.batch_size, learning_rate=a.lr, lr_final=a.lr_final,
                  loss=a.loss or cfg.loss)
    print(f"bundle: {len(pairs)} songs, {sum(len(t) for t, _ in pairs) / cfg.sample_rate / 60:.1f} min "
          f"in {time.time() - t0:.1f} s; Keras {keras.__version__} on {_device(keras)}", flush=True)
    model = build_unet(cfg, stock_layers=True)
    if state:
        _set_weights(model, state["weights"], out / RESUME)
    elif (folder / INIT).is_file() and not a.scratch:
        _set_weights(model, _read_npz(folder / INIT), folder / INIT)
    compile_unet(model, cfg)
    model.optimizer.build(model.trainable_variables)
    if state:  # Adam's moments and step count as the last epoch left them
        if len(state["optimizer"]) != len(model.optimizer.variables):
            raise UserError(f"{out / RESUME} holds {len(state['optimizer'])} optimizer variables, "
                            f"this model's Adam {len(model.optimizer.variables)}; pass another --out")
        for v, value in zip(model.optimizer.variables, state["optimizer"]):
            v.assign(value)
    budget = a.minutes * 60.0
    # A resumed run goes on where its time box stood: the same cosine, the time already spent
    # counted, its history kept; its batches are drawn afresh (seed and epoch) rather than replayed.
    start = time.time() - (state["seconds"] if state else 0.0)
    seconds_per_step = cfg.batch_size * cfg.segment / cfg.sample_rate

    rows: list[dict] = state["rows"] if state else []
    saved_half = bool(state and state["saved_half"])
    steps = state["steps"] if state else 0
    resumed = [*state["resumed"], len(rows)] if state else []  # after which epochs it was resumed
    if state:
        print(f"resuming {out} after epoch {len(rows)} ({state['seconds'] / 60:.1f} of {a.minutes} "
              f"min, {steps} steps)", flush=True)

    class TimeBox(keras.callbacks.Callback):
        # Not async_safe: with it, Keras ran on_train_batch_end on a thread pool, and on JAX a lent
        # H200 run died at its time box's end ('Array has been deleted', checkpoints/stream-gpu2/
        # ft2/fit-log.txt) while on JAX's CPU the stop came up to an epoch late (40 steps instead
        # of 26 for a 36 s box). Run in the loop, the hook sees every step as it ends.

        def on_epoch_begin(self, epoch, logs=None):
            # the cosine of `unetsep train`, over the time box instead of the epochs
            self.model.optimizer.learning_rate.assign(
                cosine_rate(a.lr, a.lr_final, (time.time() - start) / budget))

        def on_train_batch_end(self, batch, logs=None):
            nonlocal steps
            steps += 1
            if time.time() - start > budget:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            nonlocal saved_half
            elapsed = time.time() - start
            row = {"epoch": epoch + 1, "steps": steps, "seconds": round(elapsed, 1),
                   "audio_hours": round(steps * seconds_per_step / 3600, 2),
                   "lr": float(self.model.optimizer.learning_rate.numpy()),
                   **{k: round(float(v), 5) for k, v in (logs or {}).items() if k != "learning_rate"}}
            rows.append(row)
            weights = self.model.get_weights()
            _save_npz(out / "latest.npz", weights)
            if not saved_half and elapsed > budget / 2:
                _save_npz(out / "half.npz", weights)
                saved_half = True
            write_text_atomic(out / "history.csv", _csv(rows))
            _save_resume(out / RESUME, weights, [v.numpy() for v in self.model.optimizer.variables],
                         {"settings": settings, "seconds": elapsed, "steps": steps, "rows": rows,
                          "saved_half": saved_half, "resumed": resumed})
            print(json.dumps(row), flush=True)

    data = _Batches(pairs, cfg, cfg.batch_size, [a.seed, len(rows)] if rows else [a.seed], a.threads)
    if not state or time.time() - start <= budget:
        model.fit(iter(data), steps_per_epoch=a.steps, epochs=10 ** 6, initial_epoch=len(rows),
                  verbose=0, callbacks=[TimeBox()])
    write_text_atomic(out / "fit.json", json.dumps({
        "batch_size": cfg.batch_size, "steps_per_epoch": a.steps, "lr": a.lr, "lr_final": a.lr_final,
        "loss": cfg.loss, "minutes": a.minutes, "seed": a.seed, "scratch": a.scratch,
        "bundle": bundle.summary(manifest),
        "epochs": len(rows), "wall_s": round(time.time() - start, 1), "resumed_after_epochs": resumed,
        "backend": keras.backend.backend(), "keras": keras.__version__, "device": _device(keras)},
        indent=1))
    print(f"done: {len(rows)} epochs in {time.time() - start:.0f} s", flush=True)


def _plot(history: Path, png: Path) -> None:
    """Training loss and the all-zero estimate's against hours of audio seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    hours = [float(r["audio_hours"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(hours, [float(r["loss"]) for r in rows], ".-", label="training loss (per epoch)")
    ax.plot(hours, [float(r["zero_estimate"]) for r in rows], "k--", label="all-zero estimate")
    ax.set_xlabel("hours of audio seen")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(png, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


# What a config's extra says of the run that made it; `finish` moves the earlier run's under
# "continues", so the top level describes this run alone.
RUN_FIELDS = ("data", "trained_on", "seed", "steps_per_epoch", "strategy", "train_tracks", "valid_tracks",
              "augment", "fit", "bundle", "continues")


def finished_config(cfg: UNetConfig, fit: dict, seen: dict) -> UNetConfig:
    """The bundle's config as the run `fit` (fit.json) made it from the songs `seen`: its batch,
    rates, loss, epochs, seed and data at the top; what the model continues (the config it was packed
    from, a run of `unetsep train` or an earlier fit) under extra["continues"]."""
    if not fit:  # a fit from before fit.json was written: what is known of it, beside the old run's
        return replace(cfg, extra={**cfg.extra, "trained_on": "train/fit_jax.py", "fit": fit, "bundle": seen})
    before = {k: cfg.extra[k] for k in RUN_FIELDS if k in cfg.extra}
    if before and not fit.get("scratch"):
        before.update(epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                      lr_final=cfg.lr_final, loss=cfg.loss)
    rest = {k: v for k, v in cfg.extra.items() if k not in RUN_FIELDS}
    # The bundle's source where it is a folder here (a bundle packed before manifests named their
    # source, or named it relative to another folder: the data of the run it continues).
    source = seen.get("source")
    data = str(Path(source).resolve()) if source and Path(source).is_dir() else before.get("data") or source
    extra = {**rest, "trained_on": "train/fit_jax.py", "data": data,
             "train_tracks": seen.get("songs"), "seed": fit.get("seed"),
             "steps_per_epoch": fit.get("steps_per_epoch"), "augment": True, "fit": fit, "bundle": seen,
             **({"init": None} if fit.get("scratch") else {"continues": before} if before else {})}
    return replace(cfg, batch_size=fit.get("batch_size", cfg.batch_size),
                   learning_rate=fit.get("lr", cfg.learning_rate), lr_final=fit.get("lr_final", cfg.lr_final),
                   loss=fit.get("loss", cfg.loss), epochs=fit.get("epochs", cfg.epochs), extra=extra)


def finish_command(a) -> None:
    from . import bundle
    from .model import build_unet

    folder, out = Path(a.bundle), Path(a.out)
    cfg = _config(folder / CONFIG, "bundle config")
    fit_path = Path(a.fit) if a.fit else Path(a.weights).with_name("fit.json")
    if a.fit and not fit_path.is_file():
        raise UserError(f"--fit {fit_path}: no such file; pass the fit.json that 'fit' wrote")
    fit = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
    # the songs it saw: as fit recorded them, else (a fit.json from before) this bundle's
    seen = fit.pop("bundle", None) or bundle.summary(bundle.read_manifest(folder))
    cfg = finished_config(cfg, fit, seen)
    model = build_unet(cfg, stock_layers=True)
    _set_weights(model, _read_npz(Path(a.weights)), a.weights)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG, cfg.to_json())
    write_atomic(out / "model.keras", model.save)  # last: a run is finished when it exists
    if a.history:
        write_text_atomic(out / "history.csv", Path(a.history).read_text())
        _plot(out / "history.csv", out / "loss.png")
    print(f"{out / 'model.keras'}: export it with 'unetsep export {out}'")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unetsep.train.fit_jax", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("pack", help="pack the training split and start weights (here)")
    s.add_argument("--data", required=True)
    s.add_argument("--config", required=True, help="config.json of the model to train")
    s.add_argument("--init", help=".keras weights to start from (default: random)")
    s.add_argument("--out", required=True)
    s.add_argument("--seconds", type=float, default=10.0, help="per song (default 10)")
    s.add_argument("--bits", type=int, default=9)
    s.add_argument("--seed", type=int, default=2031)
    s.add_argument("--max-mb", type=float, default=58.0, help="bundle size, weights included")
    s = sub.add_parser("fit", help="train on the bundle (there: KERAS_BACKEND=jax where no TensorFlow)")
    s.add_argument("--bundle", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--minutes", type=float, required=True, help="time box, compile included")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--steps", type=int, default=50, help="steps per epoch (weights saved after each)")
    s.add_argument("--lr", type=float, default=3e-4)
    s.add_argument("--lr-final", type=float, default=3e-5)
    s.add_argument("--loss", help="mae, nmae or sdr (default: the bundle config's); "
                   "model.loss_settings checks it")
    s.add_argument("--seed", type=int, default=2031)
    s.add_argument("--threads", type=int, default=8, help="batch-making threads")
    s.add_argument("--scratch", action="store_true", help="ignore the bundle's start weights")
    s = sub.add_parser("finish", help="the weights back into a run folder (here)")
    s.add_argument("--bundle", required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--history")
    s.add_argument("--fit", help="fit.json written by the fit step (default: beside --weights)")
    s.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        {"pack": pack_command, "fit": fit_command, "finish": finish_command}[a.step](a)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
