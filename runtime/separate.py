"""`unetsep separate`: files in, `<out>/<model>/<track>/{target}.wav` and `no_{target}.wav` out
(32-bit float WAV; or, as demucs offers, 16/24-bit WAV or FLAC: `OutputFormat`).

Files stream from disk in blocks (memory stays flat for hour-long files), are resampled to the
model's rate with soxr when needed, framed, and run through the model in large batches (file mode
is throughput-bound). Both stems go to temporary files, renamed into place together only when the
whole track succeeded (runtime/files.replace_pair); a later run cleans what a killed one left.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import FLAC_MAX_CHANNELS, FLAC_MAX_RATE, MAX_CHANNELS, MAX_RATE, MIN_RATE
from .errors import UserError, cause_of
from .files import pair_temp, recover_pairs, replace_pair

BLOCK_FRAMES = 2048  # frames per channel per read: 131072 samples, 3 s at 44.1 kHz


@dataclass(frozen=True)
class OutputFormat:
    """How the stems are written: a soundfile container ("WAV" or "FLAC") and sample subtype
    ("FLOAT", "PCM_16" or "PCM_24"). Integer samples cannot hold the estimate's peaks above full
    scale (a loud input's residual can have them): libsndfile clips those; separate counts them."""
    container: str = "WAV"
    subtype: str = "FLOAT"

    @property
    def suffix(self) -> str:
        return ".flac" if self.container == "FLAC" else ".wav"

    @property
    def clips(self) -> bool:
        return self.subtype != "FLOAT"

    def refusal(self, channels: int, rate: int) -> str | None:
        """Why this format cannot hold audio of `channels` at `rate` Hz, or None."""
        if self.container == "FLAC" and (channels > FLAC_MAX_CHANNELS or rate > FLAC_MAX_RATE):
            return (f"FLAC holds at most {FLAC_MAX_CHANNELS} channels at {FLAC_MAX_RATE} Hz, not "
                    f"{channels} at {rate} Hz")
        return None

    def describe(self) -> str:
        bits = {"FLOAT": "32-bit float", "PCM_16": "16-bit", "PCM_24": "24-bit"}[self.subtype]
        return f"{bits} {self.container}"


SUFFIXES = (".wav", ".flac")  # of OutputFormat's two containers


def output_format(flac: bool = False, bits: int | None = None) -> OutputFormat:
    """demucs' choices: WAV as 32-bit float (the default: nothing clipped) or 16/24-bit PCM;
    FLAC (lossless, no float) as 24-bit unless 16 is asked for."""
    if flac:
        return OutputFormat("FLAC", "PCM_16" if bits == 16 else "PCM_24")
    return OutputFormat("WAV", {None: "FLOAT", 16: "PCM_16", 24: "PCM_24"}[bits])


def separate_array(run, audio: np.ndarray, frame: int, context: int, batch: int = 4096,
                   history: np.ndarray | None = None) -> np.ndarray:
    """The model's estimate for every sample of `audio` (samples, channels), offline.

    `samples` must be a multiple of `frame`. `history` (channels, context - frame) holds the samples
    before `audio` (zeros at the start of a file). Returns (samples, channels) float32.
    """
    n, channels = audio.shape
    past = context - frame
    full = audio.T if past == 0 else np.concatenate(
        [np.zeros((channels, past), np.float32) if history is None else history, audio.T], axis=1)
    full = np.ascontiguousarray(full, dtype=np.float32)
    frames = n // frame
    # (channels, frames, context): frame j of channel c is full[c, j*frame : j*frame + context]
    x = np.lib.stride_tricks.sliding_window_view(full, context, axis=1)[:, ::frame][:, :frames]
    x = x.reshape(channels * frames, context, 1)
    y = np.concatenate([run(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])
    return y.reshape(channels, n).T


class Aligned:
    """The model's estimate of consecutive chunks of a file, aligned with the input: the estimate
    of sample t comes back with sample t (the streaming engine's latency is taken out).

    Version 1 models run frame by frame as one big batch per chunk (`separate_array`), the
    previous chunk's tail as history. Version 2 models run through the streaming engine, the
    whole chunk as one call of many hops per channel with the state carried on; the engine's
    delay is dropped at the start and flushed with silence at the end.
    """

    def __init__(self, model, channels: int, block: int | None = None):
        info = model.info
        block = block or BLOCK_FRAMES * info.frame
        self.model, self.info, self.channels = model, info, channels
        self.history = np.zeros((channels, info.context - info.frame), np.float32)
        self.engine = None
        if info.streaming:
            from .stream import StreamEngine

            self.engine = StreamEngine(model, channels, max_block=block)
            self.skip = self.engine.latency  # leading output samples that answer silence
            self.dry = np.zeros((0, channels), np.float32)

    def __call__(self, chunk: np.ndarray, last: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """chunk (n, channels), n a whole number of frames -> (dry, estimate), each (m, channels):
        the input samples whose estimates are ready, and those estimates."""
        info = self.info
        if self.engine is None:
            if not len(chunk):
                return chunk, chunk
            est = separate_array(self.model.run, chunk, info.frame, info.context, history=self.history)
            if info.context > info.frame:
                self.history = np.ascontiguousarray(
                    np.concatenate([self.history, chunk.T], axis=1)[:, -(info.context - info.frame):])
            return chunk, est
        self.dry = np.concatenate([self.dry, chunk])
        feed = chunk if not last else np.concatenate(
            [chunk, np.zeros((self.engine.latency, self.channels), np.float32)])
        outs = [self.engine.process(feed[i:i + self.engine.max_block])
                for i in range(0, len(feed), self.engine.max_block)]
        est = np.concatenate(outs) if outs else np.zeros((0, self.channels), np.float32)
        drop = min(self.skip, len(est))
        est, self.skip = est[drop:], self.skip - drop
        dry, self.dry = self.dry[:len(est)], self.dry[len(est):]
        return dry, est


def estimate(model, audio: np.ndarray) -> np.ndarray:
    """The model's estimate of `audio` (samples, channels) float32, aligned with it, as `unetsep
    separate` computes it (any model version). Returns (samples, channels) float32."""
    frame = model.info.frame
    n = len(audio)
    padded = np.concatenate([audio, np.zeros((-n % frame, audio.shape[1]), np.float32)])
    run = Aligned(model, audio.shape[1])
    block = BLOCK_FRAMES * frame
    parts = [run(padded[i:i + block], last=i + block >= len(padded))[1]
             for i in range(0, len(padded), block)]
    return np.concatenate(parts)[:n]


def model_name(path: Path, target: str) -> str:
    """models/default/drums.int8.onnx -> 'default-int8', drums.int8.tflite -> 'default-int8-tflite';
    a stray file -> its stem."""
    variant = path.name.split(".")[1:-1] + (["tflite"] if path.suffix == ".tflite" else [])
    base = path.parent.name if path.name.split(".")[0] == target else path.stem
    return "-".join([base, *variant])


def float_model_name(name: str) -> str:
    """model_name's name of the float32 model a converted file came from: 'default-int8-tflite',
    'default-fp16-tflite', 'default-int8' -> 'default'."""
    from .contract import FORMATS

    base = name.removesuffix("-tflite")
    for variant in {k.split(".")[0] for k in FORMATS if "." in k}:
        base = base.removesuffix(f"-{variant}")
    return base


class _Resampler:
    """soxr streaming resampler per direction; identity when the rates match."""

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        import soxr

        self.stream = None if rate_in == rate_out else soxr.ResampleStream(
            rate_in, rate_out, channels, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return x
        return self.stream.resample_chunk(np.ascontiguousarray(x, np.float32), last=last)


class _Source:
    """The input file as `_stream` reads it, counting what it reads: a decode error becomes a
    one-line UserError naming the file, and the count tells a silent or cut-short file."""

    SALVAGE_FRAMES = 1024  # after a decode error, what decodes is read back in pieces this long

    def __init__(self, sf_file, path: Path):
        self.file, self.path = sf_file, path
        self.read_frames, self.peak = 0, 0.0
        self.broken: str | None = None  # the decoder's error, once it stopped in the middle

    def __getattr__(self, name):
        return getattr(self.file, name)

    def read(self, frames: int, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        import soundfile as sf

        errors = (sf.LibsndfileError, RuntimeError, OSError, ValueError)
        if self.broken:
            return np.zeros((0, self.file.channels), dtype)
        try:
            x = self.file.read(frames, dtype=dtype, always_2d=always_2d)
        except errors as e:
            # A cut-short FLAC fails a whole block at its cut ("lost sync"), and its decoder cannot
            # seek afterwards: a fresh one reads on from here in small pieces until it fails too,
            # so the audio before the cut is kept (the caller pads the rest, as for a short WAV).
            self.broken = cause_of(e)
            parts, got = [], 0
            try:
                with sf.SoundFile(os.fsencode(self.path)) as again:
                    again.seek(self.read_frames)
                    while got < frames:
                        part = again.read(min(self.SALVAGE_FRAMES, frames - got), dtype=dtype,
                                          always_2d=always_2d)
                        if not len(part):
                            break
                        parts.append(part)
                        got += len(part)
            except errors:
                pass
            if not parts and not self.read_frames:
                raise UserError(f"cannot decode {self.path} ({self.broken}): the file is damaged or "
                                f"cut short; repair or re-export it") from None
            x = np.concatenate(parts) if parts else np.zeros((0, self.file.channels), dtype)
        self.read_frames += len(x)
        if len(x) and np.isfinite(x).all():  # _stream itself rejects NaN and infinities
            self.peak = max(self.peak, float(np.abs(x).max()))
        return x


class _Sink:
    """One output file; a failed write (a full disk, a vanished folder) becomes a UserError.
    With `count_clips` (integer samples), values beyond full scale are counted in `clipped`:
    libsndfile clips them to full scale without a word, and the user should hear of it."""

    def __init__(self, sf_file, final: Path, count_clips: bool = False):
        self.file, self.final, self.count_clips, self.clipped = sf_file, final, count_clips, 0

    def write(self, x: np.ndarray) -> None:
        import soundfile as sf

        # max and min first: no temporary arrays for the blocks that do not clip
        if self.count_clips and x.size and (x.max() > 1.0 or x.min() < -1.0):
            self.clipped += int(np.count_nonzero(np.abs(x) > 1.0))
        try:
            self.file.write(x)
        except (sf.LibsndfileError, RuntimeError, OSError, AssertionError) as e:
            # soundfile reports a short write as a bare error (or an assert): ask the disk.
            raise UserError(f"cannot write {self.final} ({_write_cause(e, self.final.parent)}); "
                            f"free some space or pass another -o folder") from None

    def close(self) -> None:
        import soundfile as sf

        try:
            self.file.close()
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise UserError(f"cannot write {self.final} ({_write_cause(e, self.final.parent)}); "
                            f"free some space or pass another -o folder") from None


def _write_cause(e: BaseException, folder: Path) -> str:
    import shutil

    try:
        if shutil.disk_usage(folder).free < (1 << 20):
            return "no space left on device"
    except OSError:
        pass
    return cause_of(e)


def _cut_short(src) -> tuple[int, int] | None:
    """(announced, present) bytes of audio when the file's header promises more than it holds.

    libsndfile quietly reads what is there; its log (`extra_info`) notes the mismatch as
    "data : 1058400 (should be 529178)" for WAV/AIFF-style chunks."""
    import re

    m = re.search(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", src.extra_info or "", re.M)
    if m and int(m[2]) < int(m[1]):
        return int(m[1]), int(m[2])
    return None


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p `folder`; returns the folders this call created, deepest first, so that a failure
    removes only those (never an empty folder the user made beforehand)."""
    created, p = [], folder
    while not p.exists():
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def track_folder(out_root: Path, model, name: str) -> Path:
    if name in ("", ".", ".."):  # the stem of a file named "..wav": stay inside the model's folder
        name = name.replace(".", "_") or "_"
    return out_root / model_name(Path(model.path), model.info.target) / name


def separate_file(path: Path, model, out_root: Path, progress=None, name: str | None = None,
                  say=None, fmt: OutputFormat = OutputFormat()) -> Path:
    """Separate one file with a loaded model into `<out_root>/<model name>/<name or stem>/`, as
    `fmt` says (default 32-bit float WAV); returns that folder. Problems with the file raise
    UserError (one line, the file named); `say` gets warnings (a silent or cut-short input,
    temporaries of a killed run cleaned, samples clipped by an integer format)."""
    import soundfile as sf
    # Imported before any temporary exists: a SIGTERM or Ctrl-C raised inside soxr's first
    # import (a nanobind module) aborts the process, which would leave its temporaries behind.
    import soxr  # noqa: F401

    say = say or (lambda m: None)
    info = model.info
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an audio file; pass the files in it (e.g. {path}/*.wav)")
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a regular file (a device or a pipe); pass an audio file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        src = sf.SoundFile(os.fsencode(path))  # bytes: a name that is not UTF-8 opens too
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise UserError(f"{path} is not an audio file libsndfile can read ({cause_of(e)}); convert it "
                        f"to wav or flac") from None
    with src:
        if src.frames == 0:
            raise UserError(f"{path} is empty (0 samples)")
        rate, channels, total = src.samplerate, src.channels, src.frames
        if refusal := fmt.refusal(channels, rate):
            raise UserError(f"{path}: {refusal}; drop --flac")
        # A damaged header can claim 4 Hz (hours of resampled audio from a 0.2 s file) or
        # thousands of channels: refuse what no real recording is, instead of grinding on it.
        if not MIN_RATE <= rate <= MAX_RATE:
            raise UserError(f"{path} claims a sample rate of {rate} Hz (outside {MIN_RATE}-{MAX_RATE}): "
                            f"its header is damaged; repair or re-export the file")
        if channels > MAX_CHANNELS:
            raise UserError(f"{path} claims {channels} channels (more than {MAX_CHANNELS}): its header is "
                            f"damaged, or split it into fewer channels first")
        short = _cut_short(src)
        if short:
            say(f"unetsep separate: warning: {path}'s header announces {short[0]} bytes of audio but "
                f"the file holds {short[1]} (cut short?); separating the {total} samples present")
        track = track_folder(out_root, model, name or path.stem)
        try:
            created = _make_dirs(track)
        except OSError as e:
            raise UserError(f"cannot create {track}: {e.strerror}; pass another -o folder") from None
        names = (f"{info.target}{fmt.suffix}", f"no_{info.target}{fmt.suffix}")
        for suffix in SUFFIXES:  # a killed run of either format left its own temporaries
            for note in recover_pairs(track, (f"{info.target}{suffix}", f"no_{info.target}{suffix}")):
                say(f"unetsep separate: {note}")
        finals = [track / n for n in names]
        tmps = [pair_temp(f) for f in finals]
        writers: list[_Sink] = []
        source = _Source(src, path)
        try:
            try:
                for t, f in zip(tmps, finals):
                    opened = sf.SoundFile(os.fsencode(t), "w", samplerate=rate, channels=channels,
                                          subtype=fmt.subtype, format=fmt.container)
                    writers.append(_Sink(opened, f, count_clips=fmt.clips))
            except (sf.LibsndfileError, RuntimeError, OSError) as e:
                raise UserError(f"cannot write to {track} ({_write_cause(e, track)}); pass another "
                                f"-o folder") from None
            _stream(source, model, writers, rate, channels, total, progress)
            for w in writers:
                w.close()
            try:
                replace_pair(list(zip(tmps, finals)))
            except OSError as e:
                raise UserError(f"cannot put the results in {track} ({e.strerror}); the previous "
                                f"files there are unchanged") from None
        except BaseException:
            for w in writers:
                try:
                    w.file.close()
                except Exception:  # a full disk can fail the close too; the temporary goes anyway
                    pass
            for t in tmps:
                t.unlink(missing_ok=True)
            for d in created:  # only folders this call made: leave no empty folder behind
                try:
                    d.rmdir()
                except OSError:
                    break
            raise
    if source.read_frames < total:
        why = f"decoding stopped there: {source.broken}" if source.broken else "cut short?"
        say(f"unetsep separate: warning: {path} holds {source.read_frames} of the {total} samples its "
            f"header announces ({why}); the stems are padded with silence to {total}")
    if source.peak == 0.0:
        say(f"unetsep separate: warning: {path} is silent (all samples are zero); wrote silent stems")
    for w in writers:
        if w.clipped:
            say(f"unetsep separate: warning: {w.clipped} samples of {w.final} were beyond full scale "
                f"and were clipped to it ({fmt.describe()}); the default 32-bit float WAV keeps them")
    return track


def _stream(src, model, writers, rate, channels, total, progress) -> None:
    info = model.info
    frame = info.frame
    to_model = _Resampler(rate, info.sample_rate, channels)
    from_model = _Resampler(info.sample_rate, rate, 2 * channels)  # stem and residual together
    block = BLOCK_FRAMES * frame
    run = Aligned(model, channels, block)
    pending = np.zeros((0, channels), np.float32)  # model-rate samples not yet a whole frame
    written = 0
    read = 0
    while True:
        x = src.read(block, dtype="float32", always_2d=True)
        read += len(x)
        last = read >= total or len(x) == 0
        if len(x) and not np.isfinite(x).all():
            raise UserError(f"{src.name} contains NaN or infinite samples; repair or re-export the file")
        pending = np.concatenate([pending, to_model(x, last=last)])
        usable = len(pending) // frame * frame
        if last and usable < len(pending):  # pad the final partial frame with silence
            pending = np.concatenate([pending, np.zeros((frame - len(pending) + usable, channels),
                                                        np.float32)])
            usable = len(pending)
        chunk, pending = pending[:usable], pending[usable:]
        dry, est = run(chunk, last=last)
        both = np.concatenate([est, dry - est], axis=1)  # resample stem and residual together
        out = from_model(both, last=last)
        out = out[:max(0, total - written)]
        if len(out):
            writers[0].write(out[:, :channels])
            writers[1].write(out[:, channels:])
            written += len(out)
        if progress:
            progress(len(x))
        if last:
            break
    if written < total:  # the resampler's tail can fall a few samples short: pad with silence
        pad = np.zeros((total - written, channels), np.float32)
        writers[0].write(pad)
        writers[1].write(pad)

