"""`unetsep`: one console script, one subcommand per job.

Heavy imports happen inside each command, so that `separate`, `live` and `bench` on ONNX models
never load TensorFlow. A `UserError` anywhere prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from unetsep.runtime.contract import FORMATS, MAX_CHANNELS
from unetsep.runtime.errors import Terminated, UserError
from unetsep.train.config import LOSSES, PRESETS  # TensorFlow-free: checked before it loads


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line naming the problem and where to look,
    exit status 2, before any command runs (so bad flags never load TensorFlow or write a file)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _number(kind: type, minimum: float, strict: bool, maximum: float = float("inf")):
    """An argparse `type=` converter: `kind` (int or float), finite, above (strict) or at least
    `minimum`. Rejecting 0 and negatives here is what keeps `--steps -3` from hanging Keras and
    `--batch-size 0` from reaching a run's config.json."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < minimum or (strict and value == minimum):
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{text} is more than {maximum:g}, the most this takes")
        return value

    convert.__name__ = kind.__name__  # argparse names the converter in some messages
    return convert


positive_int = _number(int, 1, strict=False)
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)
non_negative_float = _number(float, 0.0, strict=False)
finite_float = _number(float, float("-inf"), strict=False)
# Bounds on resources, so a typo fails in one line instead of hanging on 100000 threads or
# allocating gigabytes: threads beyond any CPU this runs on, more streams than a batch needs.
thread_count = _number(int, 1, strict=False, maximum=256)
stream_batch = _number(int, 1, strict=False, maximum=4096)
frame_count = _number(int, 1, strict=False, maximum=10_000_000)  # 80 MB of timings per configuration
channel_count = _number(int, 1, strict=False, maximum=MAX_CHANNELS)
song_count = _number(int, 3, strict=False)  # one each of train, validation and test: see split_counts
demo_seconds = _number(float, 1.0, strict=False)  # museval scores whole 1 s windows


def _quiet_tensorflow() -> None:
    """Import TensorFlow (and Keras) with its C++ start-up lines kept off the terminal.

    TF_CPP_MIN_LOG_LEVEL only filters what is logged after absl's logger is set up; on import
    TensorFlow writes "All log messages before absl::InitializeLog() ..." and "oneDNN custom
    operations are on ..." straight to file descriptor 2. So fd 2 points at a temporary file for
    the import, and what was written there is shown only if the import fails. (TF_ENABLE_ONEDNN_OPTS
    is left alone: setting it to 0 would silence the line but change numerics and speed.)
    """
    from unetsep.runtime.quiet import native_stderr_held

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    if "tensorflow" in sys.modules:
        return
    with native_stderr_held():
        import keras  # noqa: F401  (imports tensorflow, its backend)
        import tensorflow  # noqa: F401


def _check_training_data(data: str, target: str) -> None:
    """The data checks `train` makes, run before TensorFlow is imported: a wrong folder, target or
    sample rate then fails in a fraction of a second with one clean line."""
    from unetsep.runtime.contract import SAMPLE_RATE
    from unetsep.train.dataset import open_db

    for split, what in (("train", "training"), ("valid", "validation")):
        db = open_db(data, "train", split, target, SAMPLE_RATE, check=split == "train")
        if not db.tracks:
            hint = ("train/ is empty or all validation" if split == "train" else
                    "add a setup.yaml naming them (as 'unetsep data' writes) or use MUSDB18's own "
                    "track names")
            raise UserError(f"--data {data} has no {what} tracks: {hint}")


def cmd_data(args: argparse.Namespace) -> None:
    from unetsep.train.render import render_dataset

    out = render_dataset(args.out, songs=args.songs, seconds=args.seconds, seed=args.seed,
                         soundfont=args.soundfont, workers=args.workers, kits=args.kits,
                         soundfonts=args.soundfonts)
    m = json.loads((out / "manifest.json").read_text())
    for what, key in (("kits", "kit"), ("soundfonts", "soundfont")):
        used = sorted({t[key] for t in m["tracks"].values()})
        held = sorted(set(used) & set(m[what]["heldout"]))  # with one sound set, none is held out
        print(f"{what} the songs use: {len(used)} ({len(held)} of them held out of training, for "
              f"test songs): {', '.join(used)}")
    print(f"wrote {args.songs} songs to {out} (MUSDB18-HQ layout, manifest.json)")


def cmd_train(args: argparse.Namespace) -> None:
    from unetsep.runtime.files import check_folder_arg

    from unetsep.train.config import training_config

    check_folder_arg(args.out, "--out")
    # The preset with these flags, checked before TensorFlow loads (fit.train checks it again).
    training_config(args.preset, target=args.target, lookahead=args.lookahead, loss=args.loss)
    _check_training_data(args.data, args.target)
    _quiet_tensorflow()
    from unetsep.train import fit

    if args.cpu_devices:
        fit.configure_cpus(args.cpu_devices)
    path = fit.train(args.data, args.out, target=args.target, preset_name=args.preset,
                     epochs=args.epochs, batch_size=args.batch_size, steps=args.steps,
                     strategy=args.strategy, seed=args.seed, stock_layers=args.stock_layers,
                     augment=not args.no_augment, lr_final=args.lr_final, learning_rate=args.lr,
                     lookahead=args.lookahead, init=args.init, loss=args.loss)
    print(f"trained model: {path}")


def cmd_export(args: argparse.Namespace) -> None:
    run = Path(args.run)
    if run.is_dir() and not (run / "model.keras").exists() and any(run.glob("*.onnx")):
        raise UserError(f"{run} is an exported model folder, not a training run; pass the folder "
                        f"'unetsep train --out' wrote (it holds model.keras)")
    if args.out:
        from unetsep.runtime.files import check_folder_arg

        check_folder_arg(args.out, "--out")
    _quiet_tensorflow()
    from unetsep.export.pipeline import Thresholds, export

    th = Thresholds(max_error=args.max_error, min_snr=args.min_snr, max_sdr_drop=args.max_sdr_drop,
                    min_int8_snr=args.min_int8_snr)
    out, rows, passed = export(args.run, args.out or f"models/{os.path.basename(os.path.normpath(args.run))}",
                               data=args.data, thresholds=th, allow_degraded=args.allow_degraded,
                               calibration_gain=args.calibration_gain, check_seconds=args.check_seconds)
    written = [r.file for r in rows if r.written]
    print(f"wrote {', '.join(written)} and report.md to {out}")
    if not passed:
        print(f"unetsep export: some formats failed their checks (kept by --allow-degraded); see "
              f"{out / 'report.md'}", file=sys.stderr)


def track_names(files: list[str]) -> tuple[list[tuple[Path, str]], list[str]]:
    """(file, output folder name) per input, and notes for the user.

    A track's folder is the file's stem (demucs's layout). Inputs that share a stem (a.flac, a.mp3)
    keep their whole file name instead, so none overwrites another; the same file given twice is
    separated once. Two different files with the same name (x/a.wav, y/a.wav) are refused before
    anything is written."""
    from collections import defaultdict

    seen: dict[Path, str] = {}
    inputs: list[Path] = []
    notes: list[str] = []
    for f in files:
        path = Path(f)
        key = path.resolve()
        if key in seen:
            notes.append(f"{f} is given more than once; separating it once")
            continue
        seen[key] = f
        inputs.append(path)
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in inputs:
        by_stem[path.stem].append(path)
    out = []
    for path in inputs:
        group = by_stem[path.stem]
        if len(group) == 1:
            out.append((path, path.stem))
            continue
        same_name = [q for q in group if q.name == path.name]
        if len(same_name) > 1:
            raise UserError(f"{' and '.join(map(str, same_name))} would both be written to "
                            f"<model>/{path.stem}/; separate them in two runs with different -o folders")
        out.append((path, path.name))
        if path is group[0]:
            notes.append(f"{', '.join(map(str, group))} share the name {path.stem!r}: writing each to "
                         f"its own folder ({', '.join(q.name + '/' for q in group)})")
    return out, notes


def cmd_separate(args: argparse.Namespace) -> int:
    import soundfile as sf
    from tqdm import tqdm

    from unetsep.runtime.backends import open_model
    from unetsep.runtime.separate import output_format, separate_file

    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    fmt = output_format(args.flac, args.bits)
    inputs, notes = track_names(args.files)
    model = open_model(args.model, args.provider, threads=args.threads, say=say)
    for note in notes:
        say(f"unetsep separate: {note}")
    failed: list[str] = []
    for path, name in inputs:
        try:
            total = sf.info(str(path)).frames if path.is_file() else 0
        except Exception:  # only the progress bar's length; separate_file reports the real problem
            total = 0
        with tqdm(total=total, unit="sample", unit_scale=True, desc=path.name, leave=False,
                  disable=None) as bar:
            try:
                track = separate_file(path, model, Path(args.out), progress=bar.update, name=name,
                                      say=say, fmt=fmt)
            except UserError as e:
                # One file's problem ends that file only: report it, go on with the others.
                print(f"unetsep separate: error: {e}", file=sys.stderr)
                failed.append(str(path))
                continue
        print(f"{path} -> {track}/")
    if failed:
        done = len(inputs) - len(failed)
        if len(inputs) > 1:  # a batch ends with which inputs failed; one input's error says it all
            say(f"unetsep separate: {len(failed)} of {len(inputs)} inputs failed ({', '.join(failed)}); "
                f"{done} separated")
        return 2
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    from unetsep.runtime import live

    if args.list_devices:
        print(live.list_devices())
        return 0
    from unetsep.runtime.backends import live_model_path, open_model

    from unetsep.runtime.files import check_writable

    if args.json:
        check_writable(args.json, "--json")
    if args.record:
        from unetsep.runtime.recorder import record_format

        record_format(args.record, args.channels)
        check_writable(args.record, "--record")
    path = live_model_path(args.model, args.format, args.provider)
    model = open_model(path, args.provider, threads=1, say=lambda m: print(m, file=sys.stderr))
    # The status line: once per second from the main thread, on a terminal only (a log or a pipe
    # gets the summary alone), rewritten in place.
    on_terminal = sys.stderr.isatty() and not args.quiet

    shown = [False]  # whether a status line is on the terminal

    def show(line: str) -> None:
        sys.stderr.write("\r" + line)
        sys.stderr.flush()
        shown[0] = True

    try:
        r = live.run_live(model, channels=args.channels, blocksize=args.blocksize or model.info.frame,
                          mix=args.mix, device_in=args.input, device_out=args.output, seconds=args.seconds,
                          status=show if on_terminal else None, record=args.record)
    finally:
        if shown[0]:  # end the status line, before the summary or an error
            sys.stderr.write("\n")
    if args.quiet:
        if args.json:
            from unetsep.runtime.files import write_text_atomic

            write_text_atomic(Path(args.json), live.report_json(r))
        return stopped(r)
    from unetsep.runtime.separate import model_name

    print(f"live: {model_name(path, model.info.target)} ({path.name}, {r.provider}), {r.callbacks} "
          f"callbacks of {r.blocksize} samples x "
          f"{r.channels} channels in {r.seconds:.1f} s; xruns {r.xruns} "
          f"({r.xruns_after_first_second} after the first second); "
          f"callback p50 {r.callback_p50_us:.0f} us, p99 {r.callback_p99_us:.0f} us, max "
          f"{r.callback_max_us:.0f} us; CPU load {r.cpu_load:.0%}; stream latency in/out "
          f"{r.stream_latency_ms[0]:.2f}/{r.stream_latency_ms[1]:.2f} ms + model "
          f"{r.algorithmic_latency_ms:.2f} ms; peak level in {r.input_peak_dbfs:.1f} dBFS, out "
          f"{r.output_peak_dbfs:.1f} dBFS", file=sys.stderr)
    if r.recorded:
        lost = (f"; {r.record_dropped_blocks} blocks lost (the disk fell behind)"
                if r.record_dropped_blocks else "")
        print(f"live: recorded {r.recorded_seconds:.1f} s of what was played to {r.recorded}{lost}",
              file=sys.stderr)
    if args.json:
        from unetsep.runtime.files import write_text_atomic

        write_text_atomic(Path(args.json), live.report_json(r))
    return stopped(r)


def stopped(r) -> int:
    """live's exit status: 0 when it ran its --seconds or was stopped with Ctrl-C (the way to end
    it), 143 after SIGTERM, as every other command."""
    import signal

    return 128 + signal.SIGTERM if r.stopped_by == "sigterm" else 0


def needs_extra(extra: str, *modules: str) -> None:
    """A one-line UserError naming the extra to install when any of `modules` is missing."""
    from importlib.util import find_spec

    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise UserError(f"this needs {', '.join(missing)}, which the base install leaves out; "
                        f"install the {extra} extra: pip install 'unetsep[{extra}]'")


def _model_paths(models: list[str] | None, say=print) -> list:
    """--model arguments (names or files), or every format in the shipped model's folder that this
    install can run (the .tflite files need the litert extra; skipped, with a note, without it)."""
    import os

    from unetsep.runtime.backends import litert_available, names_a_file, resolve_model

    if models:
        return [resolve_model(m) for m in models]
    given = os.environ.get("UNETSEP_MODEL")
    if given and names_a_file(given):  # a file: that one, not whatever lies beside it
        return [resolve_model(None)]
    folder = resolve_model(None).parent
    paths = sorted(p for p in folder.iterdir() if p.suffix in (".onnx", ".tflite"))
    if not litert_available() and any(p.suffix == ".tflite" for p in paths):
        say("unetsep: LiteRT is not installed: timing the .onnx models only (pip install "
            "'unetsep[litert]' for the .tflite ones)")
        paths = [p for p in paths if p.suffix != ".tflite"]
    return paths


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from unetsep.benchmarks import latency
    from unetsep.runtime.backends import cuda_available, load_model
    from unetsep.runtime.measures import Timed, time_calls
    from unetsep.runtime.separate import model_name
    from unetsep.runtime.stream import frame_call

    from unetsep.runtime.files import check_report_paths

    check_report_paths(args.json, args.plot)  # before minutes of timing, not after
    paths = _model_paths(args.model, say=lambda m: print(m, file=sys.stderr))
    models = [load_model(p, "cpu", threads=args.threads) for p in paths]
    runs = [(m, b) for m in models for b in args.batch]
    if cuda_available():
        from unetsep.runtime.backends import CudaFailed, cuda_fallback

        for p in (p for p in paths if p.suffix == ".onnx"):
            try:
                # One CUDA session per batch size, each called with one shape as live calls its
                # one session: a CUDA session whose input shape changes between calls re-plans
                # its cuDNN convolutions, over 100 ms a call on an H100 with onnxruntime's default
                # (EXHAUSTIVE) search (benchmarks/cuda-h100.json), which interleaving would time.
                cuda = [load_model(p, "cuda") for _ in args.batch]
            except CudaFailed as e:
                print(f"unetsep: onnxruntime's CUDA provider failed on {p.name} ({e.cause}); timing it "
                      f"on the CPU only", file=sys.stderr)
                continue
            why = cuda_fallback(cuda[0])
            if why is not None:
                print(f"unetsep: the CUDA provider did not start ({why}); timing {p.name} on the CPU "
                      f"only", file=sys.stderr)
                continue
            runs += list(zip(cuda, args.batch))
    configs = [Timed(frame_call(m, b), m.info, b, {
        "model": model_name(m.path, m.info.target), "provider": m.provider,
        "backend": ("onnxruntime-cuda" if m.provider == "CUDAExecutionProvider" else "onnxruntime")
        if m.path.suffix == ".onnx" else "litert"}) for m, b in runs]
    if args.keras:
        needs_extra("train", "tensorflow")
        _quiet_tensorflow()
        import tensorflow as tf

        from unetsep.export.convert import load_run, model_info

        kmodel, cfg = load_run(args.keras)
        fn = tf.function(lambda x: kmodel(x, training=False))
        for b in args.batch[:2]:
            configs.append(Timed(lambda x, fn=fn: fn(x).numpy(), model_info(cfg), b, {
                "model": "keras", "backend": "keras tf.function", "provider": "tensorflow"}))
    print(f"timing {len(configs)} configurations, {args.frames} frames each, interleaved", file=sys.stderr)
    results = time_calls(configs, args.frames)
    onnx_models = [m for m in models if m.path.suffix == ".onnx" and "int8" not in m.path.name]  # CPU ones
    bound = None
    from importlib.util import find_spec

    if onnx_models and find_spec("onnx") is None:  # the bound reads the graph with the onnx package
        print("unetsep: the onnx package is not installed: no physical bound (pip install "
              "'unetsep[export]' for it)", file=sys.stderr)
    elif onnx_models:
        # The machine's rates are measured once; each float model gets the bound of its own graph
        # (a model with no arithmetic, e.g. an identity floor, has none).
        bounds = {}
        for m in onnx_models:
            flops, weight_bytes = latency.model_cost(m.path)
            if flops > 0:
                b = latency.physical_bound(flops, weight_bytes, **(
                    {"rates": (bound["gemm_gflops"], bound["memory_gbs"])} if bound else {}))
                bounds[model_name(m.path, m.info.target)] = b
                bound = bound or b
        for r in results:
            if r["provider"] == "CUDAExecutionProvider":
                continue  # the bound is this CPU core's, not the GPU's
            xb = latency.x_bound(r["model"], r["p50_us_per_frame"], bounds)
            if xb is not None:
                r["x_bound"] = xb
    print(f"{'model':22s} {'backend':16s} {'batch':>5s} {'p50':>8s} {'p99':>8s} {'p99.9':>8s} "
          f"{'max':>8s} {'us/frame':>9s} {'misses':>6s} {'x bound':>7s}")
    for r in results:
        print(f"{r['model']:22s} {r['backend']:16s} {r['batch']:5d} {r['p50_us']:8.0f} {r['p99_us']:8.0f} "
              f"{r['p999_us']:8.0f} {r['max_us']:8.0f} {r['p50_us_per_frame']:9.1f} "
              f"{r['deadline_misses']:6d} {r.get('x_bound', float('nan')):7.1f}")
    for name, b in (bounds.items() if bound else ()):
        print(f"bound {name}: {b['flops_per_frame'] / 1e6:.2f} MFLOP and {b['weight_bytes'] / 1e6:.2f} MB "
              f"per frame; GEMM {b['gemm_gflops']:.1f} GFLOP/s, memory {b['memory_gbs']:.1f} GB/s "
              f"-> {b['compute_bound_us']:.1f} us/frame compute bound; reading the weights takes "
              f"{b['cached_read_us']:.1f} us/frame at batch 1 from cache ({b['cached_read_gbs']:.1f} GB/s, a hot "
              f"matrix-vector product of their size), {b['memory_bound_us']:.1f} from DRAM")
    if args.plot:
        latency.plot_cdf(results, args.plot)
    if args.json:
        from unetsep.runtime.files import write_text_atomic

        clean = [{k: v for k, v in r.items() if k != "times_us"} for r in results]
        write_text_atomic(Path(args.json), json.dumps({"results": clean, "bound": bound, "bounds": bounds if bound else {},
                                                       "threads": args.threads}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tqdm import tqdm

    needs_extra("train", "museval", "musdb")
    from unetsep.benchmarks.quality import evaluate
    from unetsep.runtime.backends import default_model_path, load_model, resolve_model
    from unetsep.runtime.files import check_report_paths

    check_report_paths(args.json, args.plot)
    # The shipped fp32 model unless --model says otherwise (the help's promise): scoring every
    # shipped format by default put the int8 model's figures in the JSON's model/median_sdr.
    paths = [resolve_model(p) for p in args.model] if args.model else [default_model_path()]
    models = [load_model(p, "cpu", threads=2) for p in paths]
    bar = tqdm(desc="evaluating", unit="track", disable=None)
    res = evaluate(args.data, models, target=args.target, max_tracks=args.tracks, seconds=args.seconds,
                   progress=lambda name, s: bar.update())
    bar.close()
    methods = res["methods"]
    print("track".ljust(24) + "".join(f"{m[:14]:>15s}" for m in methods))
    for r in res["rows"]:
        print(r["name"][:24].ljust(24) + "".join(f"{r['scores'][m]['sdr']:15.2f}" for m in methods))
    print("median SDR".ljust(24) + "".join(f"{res['median'][m]['sdr']:15.2f}" for m in methods))
    for label, g in res["groups"].items():  # a rendered dataset's in-kit and held-out-kit songs
        print(f"  {label} ({g['tracks']})".ljust(24) + "".join(f"{g['median'][m]['sdr']:15.2f}" for m in methods))
    model = methods[0]
    if args.json:
        from unetsep.runtime.files import write_text_atomic

        out = {"target": res["target"], "median_sdr": res["median"][model]["sdr"], "model": model,
               "groups": res["groups"],
               "tracks": [{"name": r["name"], "sdr": r["scores"][model]["sdr"], "scores": r["scores"]}
                          for r in res["rows"]], "median": res["median"], "data": res["data"]}
        write_text_atomic(Path(args.json), json.dumps(out, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6, len(res["rows"]) * 0.3), 4))
        for m in methods:
            ax.plot([r["scores"][m]["sdr"] for r in res["rows"]], "o-", label=m, ms=3)
        ax.set_xlabel("track")
        ax.set_ylabel(f"{res['target']} SDR (dB)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        from unetsep.runtime.files import save_figure

        save_figure(fig, args.plot)
        plt.close(fig)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    needs_extra("train", "museval", "scipy", "fluidsynth")
    from unetsep import demo

    from unetsep.runtime.files import check_folder_arg

    check_folder_arg(args.out, "-o")  # before a minute of rendering

    demo.run(out=args.out, model_path=args.model, seconds=args.seconds)
    return 0


def model_help() -> str:
    from unetsep.runtime.backends import shipped_models

    return (f"a shipped model's name ({', '.join(shipped_models())}) or a .onnx or .tflite file "
            "(default: $UNETSEP_MODEL if set, else the shipped model 'default')")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = version("unetsep")
    except PackageNotFoundError:  # run from a checkout that was never installed
        have = "unknown (not installed)"
    p = Parser(prog="unetsep", description="Real-time drum separation with a 1-D convolutional "
               "U-Net, 64 samples (1.45 ms) behind the input: one subcommand per job.")
    p.add_argument("--version", action="version", version=f"unetsep {have}")
    MODEL_HELP = model_help()
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="render the default multitrack dataset (MUSDB18-HQ layout)")
    d.add_argument("--out", required=True, help="dataset folder to create")
    d.add_argument("--songs", type=song_count, default=6, help="number of songs (default 6)")
    d.add_argument("--seconds", type=positive_float, default=20.0, help="length of each song (default 20)")
    d.add_argument("--seed", type=non_negative_int, default=0, help="random seed; same seed, same songs")
    d.add_argument("--soundfont", help="General MIDI .sf2 (default: FluidR3_GM where installed)")
    d.add_argument("--kits", nargs="+", metavar="KIT",
                   help="drum kits to draw from: names or patterns (e.g. 'hydrogen:*', "
                   "'FluidR3_GM:jazz'), Hydrogen kit folders or .sf2 files (default: all installed)")
    d.add_argument("--soundfonts", nargs="+", metavar="SET",
                   help="instrument sound sets: FluidR3_GM, MuseScore_General, TimGM6mb, sf_GMbank, "
                   "OPL-3_FM_128M (names or patterns) or .sf2 paths (default: all installed)")
    d.add_argument("--workers", type=int, help="rendering processes (default: one per CPU); "
                   "the songs do not depend on it")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train the U-Net on a MUSDB18-layout folder")
    t.add_argument("--data", required=True, help="MUSDB18, MUSDB18-HQ or 'unetsep data' folder")
    t.add_argument("--target", default="drums", help="drums (default), bass, other or vocals")
    t.add_argument("--preset", default="seed", choices=list(PRESETS),
                   help="architecture preset: seed (default, frame by frame), stream (causal, with "
                   "memory), tiny, tiny-stream")
    t.add_argument("--epochs", type=positive_int, help="epochs (default: the preset's, 40)")
    t.add_argument("--batch-size", type=positive_int, help="frames per batch (default 512)")
    t.add_argument("--steps", type=positive_int, help="steps per epoch (default: one pass over the data)")
    t.add_argument("--lr", type=positive_float, help="learning rate (default: the preset's, 1e-3)")
    t.add_argument("--lookahead", type=non_negative_int, metavar="SAMPLES",
                   help="stream presets: samples (whole 64-sample hops) the output waits for, "
                        "declared in the exported model (default 0)")
    t.add_argument("--init", metavar="MODEL",
                   help="start from this .keras model's weights (or a run folder's model.keras), "
                        "layer by layer: fine-tune a trained model, e.g. with another --lookahead")
    t.add_argument("--lr-final", type=positive_float, metavar="LR",
                   help="learning rate of the last epoch, reached by a cosine from --lr "
                        "(default: constant); may be added when resuming a run with more --epochs")
    t.add_argument("--loss", metavar="LOSS", choices=LOSSES,
                   help="mae (the seed's), nmae (MAE over the mixture's level; the stream preset's) "
                        "or sdr (stream presets: negative SDR per segment in dB)")
    t.add_argument("--out", default="runs/default", help="run directory (default runs/default); "
                   "an interrupted run there resumes")
    t.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"],
                   help="tf.distribute strategy: mirrored = all local GPUs, multiworker = TF_CONFIG")
    t.add_argument("--cpu-devices", type=non_negative_int, default=0,
                   help="split the CPU into N logical devices (try --strategy mirrored without GPUs)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="random seed for weights and excerpts")
    t.add_argument("--no-augment", action="store_true",
                   help="train on excerpts as recorded (default: remix songs, random gains, "
                   "polarity, channel swap and level)")
    t.add_argument("--stock-layers", action="store_true",
                   help="use Keras' own layers (slow on CPU; for comparison): Conv1D/Conv1DTranspose for "
                   "the seed preset, the GRU for stream presets; a resumed run keeps its own")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="convert a trained run to ONNX and TFLite, checked against Keras")
    e.add_argument("run", help="run directory written by 'unetsep train'")
    e.add_argument("--out", help="model directory (default models/<run name>)")
    e.add_argument("--data", help="dataset for calibration and checks (default: the run's own)")
    e.add_argument("--max-error", type=positive_float, default=1e-4, help="float32: max abs error (1e-4)")
    e.add_argument("--min-snr", type=finite_float, default=50.0, help="float16: min output SNR in dB (50)")
    e.add_argument("--max-sdr-drop", type=non_negative_float, default=0.3,
                   help="int8: max drums SDR loss vs Keras in dB (0.3)")
    e.add_argument("--min-int8-snr", type=finite_float, default=3.0,
                   help="int8: min output SNR vs Keras in dB (3)")
    e.add_argument("--allow-degraded", action="store_true",
                   help="write formats that fail their check too (the report marks them)")
    e.add_argument("--check-seconds", type=positive_float, default=30.0,
                   help="seconds of validation audio to check on (30)")
    e.add_argument("--calibration-gain", type=positive_float, default=1.0,
                   help="scale the int8 calibration audio (for testing the checks; keep 1)")
    e.set_defaults(func=cmd_export)

    s = sub.add_parser("separate", help="separate audio files into the target and the rest")
    s.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3, ...)")
    s.add_argument("--model", "-n", help=MODEL_HELP)
    s.add_argument("-o", "--out", default="separated", help="output root (default separated/)")
    s.add_argument("--provider", "-d", default="auto", help="auto (default), cpu or cuda")
    s.add_argument("--threads", type=thread_count, default=2, help="intra-op threads (default 2)")
    s.add_argument("--flac", action="store_true", help="write FLAC (24-bit unless --int16)")
    depth = s.add_mutually_exclusive_group()
    depth.add_argument("--int16", dest="bits", action="store_const", const=16,
                       help="16-bit samples (default: 32-bit float WAV, 24-bit FLAC)")
    depth.add_argument("--int24", dest="bits", action="store_const", const=24, help="24-bit samples")
    s.set_defaults(func=cmd_separate, bits=None)

    v = sub.add_parser("live", help="separate live: input device to output device")
    v.add_argument("-l", "--list-devices", action="store_true", help="list audio devices and exit")
    v.add_argument("--model", "-n", help=MODEL_HELP)
    v.add_argument("-i", "--input", help="input device (number or name)")
    v.add_argument("-o", "--output", help="output device (number or name)")
    v.add_argument("--channels", "-c", type=channel_count, default=2, help="channels (default 2)")
    v.add_argument("--blocksize", "-b", type=positive_int,
                   help="samples per callback (default: the model's frame, 64 for the shipped one)")
    v.add_argument("--mix", help="the model's target (default; drums for the shipped model), "
                   "no-<target> (everything else) or blend (the target over the rest at -12 dB)")
    v.add_argument("--seconds", "-s", type=positive_float, help="stop after S seconds (default: Ctrl-C)")
    v.add_argument("--provider", "-d", default="cpu", help="cpu (default), cuda or auto")
    v.add_argument("--format", "-f", default="auto", metavar="FORMAT",
                   help="which of a shipped model's files: auto (default: the LiteRT int8 file when "
                        "LiteRT is installed and it passed export's checks, on the CPU; else the "
                        f"float32 ONNX) or one of {', '.join(FORMATS)}")
    v.add_argument("--record", metavar="FILE", help="also write what is played to FILE (.wav: 32-bit "
                   "float, .flac: 24-bit), complete up to the stop (Ctrl-C included)")
    v.add_argument("--json", help="also write the summary as JSON here")
    v.add_argument("-q", "--quiet", action="store_true",
                   help="no status line and no summary (for scripts; errors still print; --json still written)")
    v.set_defaults(func=cmd_live)

    b = sub.add_parser("bench", help="latency per frame of every model and backend")
    b.add_argument("--model", "-n", action="append", help="a shipped model's name or a model file (repeat; default: every format of the "
                   "model $UNETSEP_MODEL names, else of the shipped model 'default')")
    b.add_argument("--frames", type=frame_count, default=10000, help="timed frames per configuration (10000)")
    b.add_argument("--batch", type=stream_batch, nargs="+", default=[1, 2, 256], help="batch sizes (1 2 256)")
    b.add_argument("--threads", type=thread_count, default=1, help="intra-op threads (1)")
    b.add_argument("--keras", metavar="RUN_DIR", help="also time the Keras model of this run")
    b.add_argument("--json", help="write results here")
    b.add_argument("--plot", help="write a latency CDF here (.png, .pdf or .svg)")
    b.set_defaults(func=cmd_bench)

    q = sub.add_parser("evaluate", help="museval SDR of models, the mixture and oracle masks")
    q.add_argument("--data", required=True, help="musdb-layout folder (its test split is scored)")
    q.add_argument("--model", "-n", action="append",
                   help="a shipped model's name or a model file (repeat to compare; default: the shipped fp32 drums.onnx)")
    q.add_argument("--target", default="drums", help="the stem scored (default drums)")
    q.add_argument("--tracks", type=positive_int, help="score only the first N tracks")
    q.add_argument("--seconds", type=positive_float, help="score only the first S seconds of each track")
    q.add_argument("--json", help="write results here")
    q.add_argument("--plot", help="write SDR per track here (.png, .pdf or .svg)")
    q.set_defaults(func=cmd_evaluate)

    m = sub.add_parser(
        "demo", help="render an unseen song, separate it, score it and time the model per frame; then "
        "separate and score a real recording (the MUSDB18 excerpt stempeg ships)")
    m.add_argument("--model", "-n", help=MODEL_HELP)
    m.add_argument("-o", "--out", default="separated", help="output root (default separated/)")
    m.add_argument("--seconds", type=demo_seconds, default=20.0, help="song length (default 20)")
    m.set_defaults(func=cmd_demo)
    p.commands = sub.choices  # for main: an unknown flag is named with its command's usage
    return p


def _on_sigterm(signum, frame) -> None:
    # Raised where the main thread is in Python: a long native call (a TensorFlow op, a PortAudio
    # stop) finishes first, as it does for Ctrl-C.
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import errno
    import signal
    import threading

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the parser whose flags they sit among: `unetsep separate` after the command
        argv = sys.argv[1:] if argv is None else list(argv)
        at = argv.index(args.command) if args.command in argv else 0
        before = set(argv[:at])  # top-level flags take no values
        own = parser if before & set(extra) else parser.commands[args.command]
        own.error(f"unrecognized arguments: {' '.join(extra)}")
    # SIGTERM as Ctrl-C, for this command only: the handler before it is put back afterwards
    # (main may be called as a library function, and signal handlers belong to the main thread).
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        status = args.func(args)
    except UserError as e:
        print(f"unetsep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"unetsep {args.command}: error: {e.filename or 'a file'}: {e.strerror}; free space "
              f"there or write elsewhere", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        killed = isinstance(e, Terminated)
        print(f"unetsep {args.command}: {'terminated' if killed else 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if killed else signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
