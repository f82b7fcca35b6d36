"""`unetsep train`: fit the U-Net on streamed MUSDB-layout data; resumable after a kill.

A run directory holds:
    config.json            the UNetConfig (hyper-parameters) plus where and how it was trained
    history.csv            epoch, train MAE, validation MAE, seconds, frames/s
    loss.png               train and validation MAE per epoch
    checkpoint/epoch-NNNN.keras   the last finished epoch (model + optimizer state)
    best.keras             the epoch with the lowest validation loss so far (history says which)
    model.keras            the trained model, written when the last epoch is done

Every file is written to a temporary name and renamed, so a SIGKILL leaves the previous epoch's
files intact; the same command then resumes after the last finished epoch. Under
`--strategy multiworker` only the chief writes it, and training runs `fit_multiworker` instead of
`model.fit`.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..runtime.errors import UserError
from ..runtime.files import write_atomic
from .config import training_config
from .model import SegmentLoss, UNetConfig, build_unet, compile_unet, loss_settings

CHECKPOINTS = "checkpoint"
# zero_estimate: the loss of an all-zero estimate on the same data; a loss sitting there means the
# model has learned silence. frames_per_s counts 64-sample hops of one channel.
HISTORY_FIELDS = ("epoch", "lr", "loss", "zero_estimate", "val_loss", "val_zero_estimate", "seconds",
                  "frames_per_s")
SILENT_RATIO = 0.95  # validation loss above this fraction of the zero estimate's: warn
SILENT_DB = 1.0  # sdr loss (in dB, the zero estimate's ~0): warn when within this of it

LOSS_LABELS = {"mae": "MAE", "nmae": "MAE / mixture level", "sdr": "-SDR (dB)"}  # loss.png's axis
# Fields that must match for a run directory to be resumed with a new command line.
RESUME_KEYS = ("preset", "target", "frame", "context", "filters", "kernel_size", "stride",
               "batch_size", "learning_rate", "streaming", "taps", "memory_units", "lookahead",
               "segment_seconds", "loss")


def configure_cpus(n: int) -> None:
    """Split the CPU into `n` logical devices (to try `--strategy mirrored` without GPUs)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def make_strategy(name: str):
    """tf.distribute strategy by name: default (one device), mirrored (all local GPUs, else all
    logical CPUs), multiworker (several hosts, described by TF_CONFIG)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy multiworker needs TF_CONFIG describing the cluster and this "
                            "worker's task (see tf.distribute.MultiWorkerMirroredStrategy)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"unknown --strategy {name!r}: choose default, mirrored or multiworker")


def is_chief() -> bool:
    """Only the chief (or worker 0) of a multi-worker cluster writes the run directory."""
    cfg = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cfg.get("task", {})
    if not task:
        return True
    has_chief = "chief" in cfg.get("cluster", {})
    return task.get("type") == "chief" or (not has_chief and task.get("type") == "worker"
                                           and task.get("index", 0) == 0)


def _write_history(run: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, HISTORY_FIELDS, restval="")
    w.writeheader()
    w.writerows(rows)
    write_atomic(run / "history.csv", lambda p: p.write_text(buf.getvalue()))


def read_history(run: Path) -> list[dict]:
    path = run / "history.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(f)]


def sits_on_silence(row: dict, loss: str) -> bool:
    """Whether an epoch's validation loss is hardly better than an all-zero estimate's."""
    if loss == "sdr":
        return row["val_loss"] >= row["val_zero_estimate"] - SILENT_DB
    return row["val_loss"] >= SILENT_RATIO * row["val_zero_estimate"]


def plot_history(rows: list[dict], path: Path, loss: str = "mae") -> None:
    """Train and validation loss per epoch, like the seed's plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["loss"] for r in rows], "o-", label="train")
    ax.plot(epochs, [r["val_loss"] for r in rows], "s-", label="validation")
    zero = [(r["epoch"], r["val_zero_estimate"]) for r in rows if "val_zero_estimate" in r]
    if zero:
        ax.plot(*zip(*zero), "k--", label="all-zero estimate (validation)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({LOSS_LABELS.get(loss, loss)})")
    ax.set_title("U-Net training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def latest_checkpoint(run: Path) -> tuple[int, Path] | None:
    files = sorted((run / CHECKPOINTS).glob("epoch-*.keras"))
    return (int(files[-1].stem.split("-")[1]), files[-1]) if files else None


def same_on_all_workers(dist, value: float) -> bool:
    """Whether every replica of the cluster holds the same `value` (n * sum(v^2) == sum(v)^2)."""
    import tensorflow as tf

    @tf.function
    def sums():
        both = dist.run(lambda: tf.constant([value, value * value], tf.float64))
        return dist.reduce("SUM", both, axis=None)

    total, squares = sums().numpy()
    return dist.num_replicas_in_sync * squares == total * total


def _scratch() -> Path:
    """Where a worker other than the chief writes its copy of the run (its own temporary folder)."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"unetsep-worker-{os.getpid()}"


def _make_recorder(run: Path, rows: list[dict], frames_per_epoch: int, epochs: int, chief: bool,
                   loss: str = "mae"):
    import keras

    class RunRecorder(keras.callbacks.Callback):
        """After each epoch: history.csv, loss.png, then the checkpoint; one progress line."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            dt = time.perf_counter() - self.t0
            row = {"epoch": epoch + 1, "lr": float(self.model.optimizer.learning_rate.numpy()),
                   "loss": float(logs["loss"]),
                   "zero_estimate": float(logs["zero_estimate"]), "val_loss": float(logs["val_loss"]),
                   "val_zero_estimate": float(logs["val_zero_estimate"]),
                   "seconds": round(dt, 2), "frames_per_s": round(frames_per_epoch / dt, 1)}
            rows.append(row)
            print(f"epoch {epoch + 1}/{epochs}: train loss {row['loss']:.5f} (all-zero estimate "
                  f"{row['zero_estimate']:.5f}), validation {row['val_loss']:.5f} (all-zero "
                  f"{row['val_zero_estimate']:.5f}), {dt:.1f} s, {row['frames_per_s']:.0f} frames/s",
                  flush=True)
            if sits_on_silence(row, loss):
                print("warning: the validation loss is close to an all-zero estimate's: the model "
                      "does little better than silence", flush=True)
            target = run if chief else _scratch()
            (target / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            # History first, then the checkpoint: a kill in between redoes this epoch on resume,
            # and the resumed run trims history back to the checkpoint.
            _write_history(target, rows)
            plot_history(rows, target / "loss.png", loss)
            ckpt = target / CHECKPOINTS / f"epoch-{epoch + 1:04d}.keras"
            write_atomic(ckpt, lambda p: self.model.save(p))
            for old in (target / CHECKPOINTS).glob("epoch-*.keras"):
                if old != ckpt:
                    old.unlink()
            # Validation can turn up while training loss still falls: keep the best epoch too.
            if row["val_loss"] <= min(r["val_loss"] for r in rows):
                write_atomic(target / "best.keras", lambda p: self.model.save(p))

    return RunRecorder()


def fit_multiworker(model, dist, data, validation: tuple, val_batch: int, epochs: int,
                    initial_epoch: int, steps: int, callbacks: list, cfg: UNetConfig) -> None:
    """`model.fit` written out for MultiWorkerMirroredStrategy, whose Keras 3 fit() fails on the
    first step (keras-team/keras#20585: it hands a nested batch to `strategy.reduce`, then reduces
    scalar metrics along axis 0). Same compiled loss, metrics and optimizer, same callbacks and logs.

    data: the distributed training dataset (endless); validation: (x, y) arrays, which every
    worker scores whole on its own copy of the weights (the same on all workers once the
    BatchNormalization statistics are averaged), so that all write the same history.
    """
    import keras
    import tensorflow as tf

    # The compiled loss and the all-zero estimate's, per example (unreduced).
    loss_fn = keras.losses.get(model.loss)
    per_example = loss_fn.call if isinstance(loss_fn, keras.losses.Loss) else loss_fn
    zero_fn = SegmentLoss(**loss_settings(cfg), zero=True).call

    @tf.function
    def train_step(batch):
        # One step on every replica: the optimizer sums the gradients across the cluster, and
        # each replica returns its running means, averaged here over the replicas.
        out = dist.run(model.train_step, args=(batch,))
        return {k: dist.reduce("MEAN", v, axis=None) for k, v in out.items()}

    # BatchNormalization's moving statistics: Keras 3 lets each replica update its own copy from
    # its own batches (aggregation "none"). Average them over the cluster after each epoch; their
    # update is linear, so this equals averaging after every step, and the workers agree.
    state = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    @tf.function
    def average_state():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            for v in state:
                v.assign(ctx.all_reduce("MEAN", tf.identity(v.value)))

        dist.run(replica_fn)

    @tf.function(reduce_retracing=True)  # the last batch is shorter
    def val_sums(x, y):
        # Sums and counts of the per-example values, so that the mean over the whole set is
        # exactly what evaluate() reports, whatever the batch.
        pred = model(x, training=False)
        loss, zero = per_example(y, pred), zero_fn(y, pred)
        size = lambda v: tf.cast(tf.size(v), tf.float64)
        return tf.stack([tf.reduce_sum(tf.cast(loss, tf.float64)), size(loss),
                         tf.reduce_sum(tf.cast(zero, tf.float64)), size(zero)])

    xv, yv = validation
    iterator = iter(data)
    cbs = keras.callbacks.CallbackList(callbacks, model=model)
    cbs.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        cbs.on_epoch_begin(epoch)
        for _ in range(steps):
            logs = train_step(next(iterator))
        average_state()
        sums = sum(val_sums(xv[i:i + val_batch], yv[i:i + val_batch]).numpy()
                   for i in range(0, len(xv), val_batch))
        logs = {k: float(v) for k, v in logs.items()}
        logs.update(val_loss=sums[0] / sums[1], val_zero_estimate=sums[2] / sums[3])
        cbs.on_epoch_end(epoch, logs)
    cbs.on_train_end()


def epoch_learning_rate(cfg: UNetConfig, epoch: int) -> float:
    """The learning rate of 0-based `epoch`: constant, or a cosine from cfg.learning_rate at the
    first epoch to cfg.lr_final at the last (cfg.epochs - 1)."""
    if cfg.lr_final is None or cfg.epochs < 2:
        return cfg.learning_rate
    return cosine_rate(cfg.learning_rate, cfg.lr_final, epoch / (cfg.epochs - 1))


def cosine_rate(start: float, end: float, t: float) -> float:
    """A cosine from `start` at t = 0 to `end` at t = 1 (t clipped to 0..1)."""
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def init_file(source: str | Path) -> Path:
    """The .keras file --init names: `source` itself, or `source`/model.keras for a run folder."""
    path = Path(source)
    if path.is_dir():
        last = latest_checkpoint(path)
        hint = f" (its last checkpoint: {last[1]})" if last else ""
        path = path / "model.keras"
        if not path.is_file():
            raise UserError(f"--init {source} is a folder without model.keras{hint}; pass a .keras file")
    if not path.is_file():
        raise UserError(f"--init {source}: no such file; pass a .keras model or a finished run's folder")
    return path


def copy_weights(source: str | Path, model) -> None:
    """Set every weighted layer of `model` from the layer of the same name in the .keras model
    `source` (or `source`/model.keras); a clear error when a layer is missing or differs."""
    import keras

    path = init_file(source)
    try:
        src = keras.models.load_model(path, compile=False)
    except Exception:  # Keras says "File not found" for a damaged zip, and worse for other files
        raise UserError(f"--init {source} cannot be loaded as a Keras model; pass a .keras file "
                        f"written by 'unetsep train'") from None
    have = {layer.name: layer for layer in src.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        other = have.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is None or [tuple(w.shape) for w in other.weights] != shapes:
            raise UserError(f"--init {source} has no layer {layer.name!r} of weight shapes {shapes}: "
                            f"it was trained with another preset or widths; use --preset to match it")
        layer.set_weights(other.get_weights())


def _check_resumable(run: Path, cfg: UNetConfig) -> UNetConfig:
    """The run's stored config, after checking `cfg` may resume it."""
    old = UNetConfig.from_json((run / "config.json").read_text())
    diff = [f"{k} ({getattr(old, k)} in the run, {getattr(cfg, k)} here)" for k in RESUME_KEYS
            if getattr(old, k) != getattr(cfg, k)]
    if diff:
        raise UserError(f"{run} holds a run with different {', '.join(diff)}; pass another --out "
                        f"or the same settings to resume it")
    return old


def train(data: str | Path, out: str | Path, **kwargs) -> Path:
    """Train (or resume) a run in `out` (_train, whose keywords it takes); returns the path of the
    trained model.keras. A run folder this call created is removed again if the call fails before
    anything is written into it (a bad --init found only when loaded), so no empty run is left."""
    run = Path(out)
    existed = run.exists()
    try:
        return _train(data, out, **kwargs)
    except BaseException:
        if not existed and run.is_dir() and not any(run.iterdir()):
            with contextlib.suppress(OSError):  # the error that ended the run is the one to tell
                run.rmdir()
        raise


def _train(data: str | Path, out: str | Path, target: str = "drums", preset_name: str = "seed",
          epochs: int | None = None, batch_size: int | None = None, steps: int | None = None,
          strategy: str = "default", seed: int = 0, stock_layers: bool = False,
          augment: bool = True, lr_final: float | None = None, learning_rate: float | None = None,
          lookahead: int | None = None, init: str | Path | None = None,
          loss: str | None = None) -> Path:
    """Train (or resume) a run in `out`; returns the path of the trained model.keras.

    `init`: a .keras model (or a run folder holding model.keras) whose weights start a new run,
    layer by layer by name (fine-tuning; e.g. the same preset with another `lookahead`)."""
    import keras

    from .dataset import (open_db, segment_dataset, total_frames, training_dataset, validation_frames,
                          validation_segments)

    run = Path(out)
    # An unknown or unfit --loss, --lookahead or --target fails here, before anything is written.
    cfg = training_config(preset_name, target=target, epochs=epochs, batch_size=batch_size,
                          lr_final=lr_final, learning_rate=learning_rate, lookahead=lookahead, loss=loss)
    if init is not None and not (run / "config.json").is_file():
        init_file(init)  # a new run: before its folder exists, a wrong --init leaves nothing behind
    # The CLI rejects these at parse time; callers of this function get the same guard, since
    # Keras hangs on a negative steps_per_epoch and 0 epochs would save an untrained model.
    for flag, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size), ("--steps", steps)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value} must be at least 1")
    train_db = open_db(data, "train", "train", cfg.target, cfg.sample_rate)
    valid_db = open_db(data, "train", "valid", cfg.target, cfg.sample_rate, check=False)
    if not train_db.tracks:
        raise UserError(f"--data {data} has no training tracks (train/ is empty or all validation)")
    if not valid_db.tracks:
        raise UserError(f"--data {data} has no validation tracks: add a setup.yaml naming them "
                        f"(as 'unetsep data' writes) or use MUSDB18's own track names")
    # One epoch: every hop of the training tracks once, in expectation.
    frames_per_batch = cfg.batch_size * (cfg.segment // cfg.frame if cfg.streaming else 1)
    steps = steps or max(1, total_frames(train_db.tracks, cfg.frame) // frames_per_batch)
    chief = is_chief()  # the other workers of a cluster write nothing into the run folder
    try:
        if chief:
            run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {run}: {e.strerror}; choose another --out") from None
    old = _check_resumable(run, cfg) if (run / "config.json").is_file() else None
    # A run started from --init keeps that start: rerunning its line without --init resumes it
    # (even before its first checkpoint), another --init is refused.
    if init is not None:
        init = str(Path(init).resolve())
        if old is not None and old.extra.get("init") != init:
            raise UserError(f"{run} holds a run started from {old.extra.get('init') or 'random weights'}; "
                            f"pass another --out to start one from {init}")
    elif old is not None:
        init = old.extra.get("init")
    cfg = replace(cfg, extra={"data": str(Path(data).resolve()), "trained_on": Path(data).name,
                              "seed": seed, "steps_per_epoch": steps, "strategy": strategy,
                              "train_tracks": len(train_db.tracks),
                              "valid_tracks": len(valid_db.tracks), "augment": augment,
                              **({"init": init} if init else {})})

    keras.utils.set_random_seed(seed)
    dist = make_strategy(strategy)
    last = latest_checkpoint(run)
    initial_epoch = last[0] if last else 0
    if strategy == "multiworker" and not same_on_all_workers(dist, initial_epoch):
        # Otherwise the workers would run different epochs and wait for each other forever.
        raise UserError(f"the workers disagree on the last finished epoch in {run} (this one sees "
                        f"{initial_epoch}): --out must be a folder that every worker reads")
    if initial_epoch >= cfg.epochs and (run / "model.keras").is_file():
        print(f"{run} is already trained for {initial_epoch} epochs: {run / 'model.keras'}")
        return run / "model.keras"
    with dist.scope():
        if last:
            model = keras.models.load_model(last[1])
            print(f"resuming {run} after epoch {initial_epoch}", flush=True)
        else:
            model = compile_unet(build_unet(cfg, stock_layers=stock_layers), cfg)
            if init:
                copy_weights(init, model)
                print(f"starting from the weights of {init}", flush=True)
    # Written once the settings proved buildable (a bad --lookahead or --init must not leave a
    # config that refuses the corrected line), and on resume too: a resumed run may extend
    # --epochs or add a --lr-final tail, and the run folder must say what it was trained with
    # (history.csv has each epoch's rate).
    if chief:
        write_atomic(run / "config.json", lambda p: p.write_text(cfg.to_json()))
    rows = [r for r in read_history(run) if r["epoch"] <= initial_epoch]

    # The excerpt stream is seeded once per start of training (not per epoch: one stream runs
    # through every epoch of this start); a resumed run starts from another epoch, so it gets
    # another seed and fresh excerpts rather than a replay of the first start's.
    stream_seed = seed * 100003 + initial_epoch

    def train_stream(batch: int, stream: int):
        if cfg.streaming:
            return segment_dataset(train_db.tracks, cfg.target, cfg.segment, batch, stream,
                                   cfg.sample_rate, cfg.lookahead, augment=augment)
        return training_dataset(train_db.tracks, cfg.target, cfg.frame, batch, seed=stream,
                                augment=augment)

    if cfg.streaming:
        xv, yv = validation_segments(valid_db.tracks, cfg.target, cfg.segment, cfg.sample_rate,
                                     cfg.lookahead)
        unit = f"{cfg.segment_seconds:g} s segments"
    else:
        xv, yv = validation_frames(valid_db.tracks, cfg.target, cfg.frame)
        unit = "frames"
    print(f"training {cfg.preset} ({model.count_params():,} parameters) on {len(train_db.tracks)} "
          f"tracks, validating on {len(valid_db.tracks)} ({len(xv):,} {unit}); {steps} steps of "
          f"{cfg.batch_size} {unit} per epoch, {dist.num_replicas_in_sync} replica"
          f"{'s' if dist.num_replicas_in_sync > 1 else ''}", flush=True)
    recorder = _make_recorder(run, rows, steps * frames_per_batch, cfg.epochs, chief, cfg.loss)
    callbacks = [recorder]
    if cfg.lr_final is not None:
        callbacks.insert(0, keras.callbacks.LearningRateScheduler(
            lambda epoch: epoch_learning_rate(cfg, epoch)))
    val_batch = cfg.batch_size if cfg.streaming else max(cfg.batch_size, 2048)
    if strategy == "multiworker":
        if cfg.batch_size % dist.num_replicas_in_sync:
            raise UserError(f"--batch-size {cfg.batch_size} must be a multiple of the "
                            f"{dist.num_replicas_in_sync} replicas of the cluster")
        # Each worker draws its own excerpts (its own seed; worker 0 the single-worker stream),
        # in batches of its replicas' share of the global batch.
        data = dist.distribute_datasets_from_function(lambda ctx: train_stream(
            ctx.get_per_replica_batch_size(cfg.batch_size), stream_seed + 7919 * ctx.input_pipeline_id))
        fit_multiworker(model, dist, data, (xv, yv), val_batch, cfg.epochs, initial_epoch, steps,
                        callbacks, cfg)
    else:
        model.fit(train_stream(cfg.batch_size, stream_seed), epochs=cfg.epochs,
                  initial_epoch=initial_epoch, steps_per_epoch=steps, validation_data=(xv, yv),
                  validation_batch_size=val_batch, callbacks=callbacks,
                  shuffle=False,  # the tf.data pipeline shuffles
                  verbose=1 if sys.stderr.isatty() else 0)
    # Every worker saves (the others to their scratch folder, as the recorder does), so that
    # they all run the same steps; only the chief's copy lands in the run folder.
    home = run if chief else _scratch()
    home.mkdir(parents=True, exist_ok=True)
    write_atomic(home / "model.keras", lambda p: model.save(p))
    return run / "model.keras"
