"""`unetsep export RUN_DIR --out MODEL_DIR`: every format, each checked against Keras, in stages:

    convert ──► check ──► decide ──► report ──► swap
    (all formats   (each format on   (its kind's   (report.json   (the temporary folder
     into a temp    the check audio:  rule: pass     and .md)       renamed over MODEL_DIR)
     folder)        error, SNR, SDR,  or the reason)
                    p50)

The formats and the rule that decides each are one table (FORMATS, STREAM_FORMATS). MODEL_DIR is
built in a temporary sibling folder and renamed into place at the end, so a failure leaves an
existing MODEL_DIR as it was.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.backends import LiteRTModel, OrtModel, metadata_path
from ..runtime.contract import FORMATS, ModelInfo
from ..runtime.errors import UserError
from ..runtime.files import as_public_folder
from ..runtime.measures import snr_db, target_sdr, time_model
from ..runtime.separate import estimate, separate_array
from ..runtime.stream import stream_blocks
from .convert import load_run, model_info, ort_int8, stream_calibration, tf2onnx_raw, tflite_variants
from .lean import build_lean_onnx
from .lean_stream import build_lean_stream_onnx
from .tflite_stream import tflite_stream_variants


@dataclass
class Thresholds:
    max_error: float = 1e-4  # float32 formats: max |format - keras|
    min_snr: float = 50.0  # float16: output SNR, dB
    max_sdr_drop: float = 0.3  # int8 formats: dB below Keras' drums SDR
    # int8 formats must also stay close to Keras' output: a broken quantization can score a
    # *higher* SDR than a weak model (a mask stuck open returns the mixture), which the SDR
    # rule alone would pass.
    min_int8_snr: float = 3.0


# File suffix -> kind (the rule in RULES that decides it). Frame (seed) models: FORMATS
# (runtime/contract.py, where the runtime reads the suffixes too).
# Streaming (contract v2) models: ONNX and LiteRT with the state as explicit inputs/outputs
# (the .tflite files one hop a call, see export/tflite_stream.py).
STREAM_FORMATS = {"onnx": "float32", "int8.onnx": "int8", "tflite": "float32", "int8.tflite": "int8"}


@dataclass
class Row:
    format: str
    file: str
    kind: str
    written: bool = False
    reason: str = ""
    size_bytes: int = 0
    nodes: int | None = None
    nodes_by_op: dict = field(default_factory=dict)
    max_abs_error: float = 0.0
    max_abs_error_hop: float | None = None  # streaming models, streamed one hop (T = 1) at a time
    snr_db: float = 0.0
    sdr: float = 0.0
    delta_sdr: float = 0.0
    p50_us: float = 0.0


def heldout_audio(data: str, cfg, seconds: float = 30.0):
    """(mix, target) (samples, 2) from musdb's validation split: the first `seconds` of audio,
    taken track after track until there is enough."""
    from ..train.dataset import open_db, read_excerpt

    db = open_db(data, "train", "valid", cfg.target, cfg.sample_rate)
    mixes, targets, total = [], [], 0.0
    for t in db.tracks:
        take = min(t.duration, seconds - total)
        m, y = read_excerpt(t, cfg.target, 0.0, take)
        mixes.append(m)
        targets.append(y)
        total += take
        if total >= seconds:
            break
    if not mixes:
        raise UserError(f"--data {data} has no validation tracks to check the exports on")
    return np.concatenate(mixes), np.concatenate(targets), total


def calibration_frames(data: str, cfg, n: int = 4096, gain: float = 1.0, seed: int = 0) -> np.ndarray:
    """(n, context, 1) frames of training audio (random excerpts) for int8 calibration."""
    from ..train.dataset import excerpt_stream, open_db

    db = open_db(data, "train", "train", cfg.target, cfg.sample_rate)
    if not db.tracks:
        raise UserError(f"--data {data} has no training tracks to calibrate int8 models on")
    chunks, have = [], 0
    for mix, _ in excerpt_stream(db.tracks, cfg.target, cfg.frame, seed):
        chunks.append(mix)
        have += len(mix)
        if have >= n * 4:
            break
    frames = np.concatenate(chunks)
    pick = np.random.default_rng(seed).choice(len(frames), n, replace=False)
    return (frames[pick] * gain).astype(np.float32)


def calibration_audio(data: str, cfg, seconds: float = 24.0, seed: int = 0) -> np.ndarray:
    """(samples, channels) of training audio, random excerpts end to end, to calibrate the int8
    version of a streaming model."""
    from ..train.augment import augmented_excerpts
    from ..train.dataset import open_db

    db = open_db(data, "train", "train", cfg.target, cfg.sample_rate)
    if not db.tracks:
        raise UserError(f"--data {data} has no training tracks to calibrate int8 models on")
    chunks, have = [], 0.0
    for mix, _ in augmented_excerpts(db.tracks, cfg.target, 3.0, seed, augment=False):
        chunks.append(mix)
        have += len(mix) / cfg.sample_rate
        if have >= seconds:
            return np.concatenate(chunks)
    return np.concatenate(chunks)  # pragma: no cover (excerpts never ends)


def keras_estimate(model, cfg, mix: np.ndarray) -> np.ndarray:
    """The Keras model's estimate of `mix` (samples, channels), aligned with it: frame by frame for
    the seed, one whole-sequence call per channel for a streaming model (its lookahead removed)."""
    if not cfg.streaming:
        return separate_array(lambda b: np.asarray(model(b, training=False)), mix, cfg.frame, cfg.context)
    n = len(mix)
    pad = cfg.lookahead + -n % cfg.frame  # whole hops, the lookahead's answer included
    x = np.concatenate([mix, np.zeros((pad, mix.shape[1]), np.float32)]).T[..., None]
    y = np.asarray(model(np.ascontiguousarray(x), training=False))[:, cfg.lookahead:cfg.lookahead + n, 0]
    return y.T.astype(np.float32)


def _float32_rule(row: "Row", th: Thresholds) -> str:
    if not row.max_abs_error <= th.max_error:
        return f"max error {row.max_abs_error:.2e} > {th.max_error:g}"
    if not (row.max_abs_error_hop or 0.0) <= th.max_error:
        return f"max error streamed hop by hop {row.max_abs_error_hop:.2e} > {th.max_error:g}"
    return ""


def _float16_rule(row: "Row", th: Thresholds) -> str:
    return "" if row.snr_db >= th.min_snr else f"SNR {row.snr_db:.1f} dB < {th.min_snr:g} dB"


def _int8_rule(row: "Row", th: Thresholds) -> str:
    if not row.delta_sdr >= -th.max_sdr_drop:
        return f"SDR {row.delta_sdr:+.2f} dB below Keras (limit {th.max_sdr_drop:g})"
    if not row.snr_db >= th.min_int8_snr:
        return f"output SNR {row.snr_db:.1f} dB < {th.min_int8_snr:g} dB"
    return ""


# kind -> the rule deciding a checked row: "" passes, else the reason it fails.
RULES = {"float32": _float32_rule, "float16": _float16_rule, "int8": _int8_rule}


def decide(row: "Row", thresholds: Thresholds) -> str:
    """The decide stage: the reason `row` fails its kind's rule, or "" when it passes."""
    return RULES[row.kind](row, thresholds)


def _node_counts(proto) -> tuple[int, dict]:
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    return len(proto.graph.node), dict(sorted(ops.items(), key=lambda kv: -kv[1]))


@dataclass
class CheckAudio:
    """What every format is checked on: `mix` and `target` (samples, channels), whole frames of
    validation audio, Keras' estimate `ref` of the target (aligned) and its SDR."""
    mix: np.ndarray
    target: np.ndarray
    ref: np.ndarray
    keras_sdr: float
    rate: int
    frame: int
    streaming: bool

    def sdr(self, estimate: np.ndarray) -> float:
        return target_sdr(self.mix, self.target, estimate, self.rate, sir_sar=False)["sdr"]


def p50_us(m) -> float:
    """Median microseconds of one batch-1 call (1 thread), as `unetsep bench` times it."""
    return time_model(m, batch=1, frames=1000, warmup=100)["p50_us"]


def converter_output(model, cfg, info, audio: CheckAudio, tmp: Path, progress) -> list[dict]:
    """tf2onnx's raw graphs (dynamic batch and batch 1), measured for the report, not shipped."""
    import onnx

    raw_rows = []
    for batch, label in (() if cfg.streaming else
                         ((None, "tf2onnx (dynamic batch)"), (1, "tf2onnx (batch 1)"))):
        proto = tf2onnx_raw(model, cfg, info, batch=batch)
        path = tmp / f"raw{batch or ''}.onnx"
        onnx.save(proto, str(path))
        m = OrtModel(path)
        nodes, ops = _node_counts(proto)
        y = estimate(m, audio.mix) if batch is None else None
        raw_rows.append({"format": label, "nodes": nodes, "nodes_by_op": ops,
                         "max_abs_error": None if y is None else float(np.abs(y - audio.ref).max()),
                         "p50_us": p50_us(m)})
        path.unlink()
        progress(f"{label}: {nodes} nodes, {raw_rows[-1]['p50_us']:.0f} us/frame (not shipped)")
    return raw_rows


def convert(model, cfg, info: ModelInfo, calib: np.ndarray, tmp: Path, progress) -> ModelInfo:
    """The convert stage: write every format of the table into `tmp` (<target>.<suffix>, with the
    JSON metadata beside each .tflite); returns the info the files carry (a streaming model's
    gains its states)."""
    import onnx

    stem = info.target
    if cfg.streaming:
        lean, info = build_lean_stream_onnx(model, cfg, info)
        onnx.save(lean, str(tmp / f"{stem}.onnx"))
        audio, calib = calib, stream_calibration(tmp / f"{stem}.onnx", calib, info)
        # LiteRT runs one hop a call: calibrate on single hops, each with the state the float
        # model carried into it (every 8th hop of the calibration audio).
        tflite = tflite_stream_variants(model, cfg, info, stream_calibration(
            tmp / f"{stem}.onnx", audio, info, hops=1)[::8])
    else:
        onnx.save(build_lean_onnx(model, cfg, info), str(tmp / f"{stem}.onnx"))
        tflite = tflite_variants(model, cfg, calib)
    ort_int8(tmp / f"{stem}.onnx", calib, info, tmp / f"{stem}.int8.onnx")
    for suffix, blob in tflite.items():
        (tmp / f"{stem}.{suffix}").write_bytes(blob)
        metadata_path(tmp / f"{stem}.{suffix}").write_text(info.to_json())
    return info


def check(path: Path, suffix: str, kind: str, audio: CheckAudio) -> Row:
    """The check stage for one format: its estimate of the check audio as `unetsep separate`
    computes it (and hop by hop for a streaming model) against Keras: error, SNR, SDR, p50."""
    import onnx

    m = OrtModel(path) if suffix.endswith("onnx") else LiteRTModel(path)
    y = estimate(m, audio.mix)
    row = Row(format=suffix, file=path.name, kind=kind, size_bytes=path.stat().st_size)
    if suffix.endswith("onnx"):
        row.nodes, row.nodes_by_op = _node_counts(onnx.load(str(path)))
    row.max_abs_error = float(np.abs(y - audio.ref).max())
    if audio.streaming:
        # The same model one hop per call, as live audio runs it, against Keras.
        row.max_abs_error_hop = float(np.abs(stream_blocks(m, audio.mix, audio.frame) - audio.ref).max())
    row.snr_db = snr_db(audio.ref, y)
    row.sdr = audio.sdr(y)
    row.delta_sdr = row.sdr - audio.keras_sdr
    row.p50_us = p50_us(m)
    return row


def write_report(tmp: Path, report: dict) -> None:
    """The report stage: report.json (for tools) and report.md (for people) into `tmp`."""
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    (tmp / "report.md").write_text(report_md(report))


def export(run_dir: str, out: str, data: str | None = None, thresholds: Thresholds = Thresholds(),
           allow_degraded: bool = False, calibration_gain: float = 1.0,
           check_seconds: float = 30.0, progress=print) -> tuple[Path, list[Row], bool]:
    """Convert, check, decide, report and swap; returns (MODEL_DIR, rows, all passed)."""
    model, cfg = load_run(run_dir)
    info = model_info(cfg)
    data = data or cfg.extra.get("data")
    if not data or not Path(data).is_dir():
        raise UserError(f"the calibration/check data {data!r} is not a folder: pass --data DIR "
                        f"(the dataset the run was trained on)")
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot write to {out.parent}: {e.strerror}; choose another --out") from None

    try:
        mix, target, seconds = heldout_audio(data, cfg, check_seconds)
        calib = (calibration_audio(data, cfg) * calibration_gain if cfg.streaming
                 else calibration_frames(data, cfg, gain=calibration_gain))
        n = len(mix) // cfg.frame * cfg.frame
        mix_c, target_c = mix[:n], target[:n]  # whole frames, (samples, channels)
        progress(f"checking on {seconds:.0f} s of validation audio ({n // cfg.frame * mix.shape[1]:,} "
                 f"frames, both channels)")
        ref = keras_estimate(model, cfg, mix_c)
        audio = CheckAudio(mix_c, target_c, ref, 0.0, cfg.sample_rate, cfg.frame, cfg.streaming)
        audio.keras_sdr = audio.sdr(ref)
        progress(f"keras: {info.target} SDR {audio.keras_sdr:.2f} dB")

        raw_rows = converter_output(model, cfg, info, audio, tmp, progress)
        info = convert(model, cfg, info, calib, tmp, progress)
        rows: list[Row] = []
        for suffix, kind in (STREAM_FORMATS if cfg.streaming else FORMATS).items():
            path = tmp / f"{info.target}.{suffix}"
            row = check(path, suffix, kind, audio)
            row.reason = decide(row, thresholds)
            row.written = not row.reason or allow_degraded
            if not row.written:
                path.unlink()
                if path.suffix == ".tflite":
                    metadata_path(path).unlink()
            rows.append(row)
            progress(f"{row.file}: max error {row.max_abs_error:.2e}"
                     + (f" ({row.max_abs_error_hop:.2e} hop by hop)" if row.max_abs_error_hop is not None else "")
                     + f", SNR {row.snr_db:.1f} dB, SDR "
                     f"{row.sdr:.2f} ({row.delta_sdr:+.2f}) dB, {row.p50_us:.0f} us/frame"
                     + (f"  FAILED: {row.reason}" + (" (kept: --allow-degraded)" if row.written else "")
                        if row.reason else ""))

        passed = all(not r.reason for r in rows)
        write_report(tmp, {"run": str(Path(run_dir).resolve()), "data": str(data),
                           "check_seconds": seconds, "keras_sdr": audio.keras_sdr,
                           "thresholds": asdict(thresholds), "passed": passed,
                           "info": json.loads(info.to_json()), "converter_output": raw_rows,
                           "formats": [asdict(r) for r in rows]})
        if not passed and not allow_degraded:
            # Nothing is written: MODEL_DIR stays as it was; the error lists each failure.
            raise ExportFailed(rows, tmp)
        swap(as_public_folder(tmp), out)
        return out, rows, passed
    except BaseException:  # a full disk too: the CLI says it in one line (unetsep.cli.main)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


class ExportFailed(UserError):
    def __init__(self, rows, tmp):
        failed = [f"{r.file} ({r.reason})" for r in rows if r.reason]
        super().__init__(f"{len(failed)} format(s) failed their check: {'; '.join(failed)}; "
                         f"rerun with --allow-degraded to keep them, or loosen the threshold flags")


def swap(new: Path, out: Path) -> None:
    """The swap stage: put `new` at `out`; an existing `out` is moved aside first and removed only
    afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def report_md(r: dict) -> str:
    lines = [f"# Export report", "", f"Run `{r['run']}`, checked on {r['check_seconds']:.0f} s of "
             f"validation audio from `{r['data']}` (both channels). Keras drums SDR: "
             f"{r['keras_sdr']:.2f} dB (museval v4, median over 1 s frames).", "",
             "| format | file size | nodes | SNR dB | max error | SDR dB | delta SDR | p50 us/frame | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in r["formats"]:
        result = "pass" if not f["reason"] else ("kept, FAILED: " if f["written"] else "not written: ") + f["reason"]
        lines.append(f"| {f['file']} | {f['size_bytes'] / 1e6:.2f} MB | {f['nodes'] or '-'} | "
                     f"{f['snr_db']:.1f} | {f['max_abs_error']:.2e} | {f['sdr']:.2f} | "
                     f"{f['delta_sdr']:+.2f} | {f['p50_us']:.0f} | {result} |")
    lines += ["", "## Graph cleaning: nodes by op type (p50 = 1 thread, batch 1, onnxruntime CPU)", ""]
    for raw in r["converter_output"]:
        lines.append(f"- {raw['format']}: {raw['nodes']} nodes, {raw['p50_us']:.0f} us/frame: "
                     + ", ".join(f"{k} {v}" for k, v in raw["nodes_by_op"].items()))
    for f in r["formats"]:
        if f["nodes"]:
            lines.append(f"- {f['file']}: {f['nodes']} nodes, {f['p50_us']:.0f} us/frame: "
                         + ", ".join(f"{k} {v}" for k, v in f["nodes_by_op"].items()))
    t = r["thresholds"]
    lines += ["", f"Thresholds: float32 max error <= {t['max_error']:g}; float16 SNR >= "
              f"{t['min_snr']:g} dB; int8 SDR no more than {t['max_sdr_drop']:g} dB below Keras and "
              f"output SNR >= {t['min_int8_snr']:g} dB.", ""]
    return "\n".join(lines)
