"""`unetsep separate`: files in, `<out>/<model>/<track>/{target}.wav` and `no_{target}.wav` out.

Files stream from disk in blocks (memory stays flat for hour-long files), are resampled to the
model's rate with soxr when needed, framed, and run through the model in large batches (file mode
is throughput-bound). Outputs go to temporary files renamed into place only when the whole track
succeeded.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import UserError

BLOCK_FRAMES = 2048  # frames per channel per read: 131072 samples, 3 s at 44.1 kHz


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


def separate_file(path: Path, model, out_root: Path, progress=None) -> Path:
    """Separate one file with a loaded model; returns the track's output folder."""
    import soundfile as sf

    info = model.info
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        src = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise UserError(f"{path} is not an audio file libsndfile can read ({e}); convert it to wav "
                        f"or flac") from None
    with src:
        if src.frames == 0:
            raise UserError(f"{path} is empty (0 samples)")
        rate, channels, total = src.samplerate, src.channels, src.frames
        track = out_root / model_name(Path(model.path), info.target) / path.stem
        try:
            track.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {track}: {e.strerror}; pass another -o folder") from None
        names = (f"{info.target}.wav", f"no_{info.target}.wav")
        tmps = [track / f".{n}.{os.getpid()}.tmp" for n in names]
        writers = []
        try:
            try:
                for t in tmps:
                    writers.append(sf.SoundFile(str(t), "w", samplerate=rate, channels=channels,
                                                subtype="FLOAT", format="WAV"))
            except (sf.LibsndfileError, RuntimeError, OSError) as e:
                raise UserError(f"cannot write to {track} ({e}); pass another -o folder") from None
            _stream(src, model, writers, rate, channels, total, progress)
        except BaseException:
            for w in writers:
                w.close()
            for t in tmps:
                t.unlink(missing_ok=True)
            for d in (track, track.parent):  # leave no empty folder that looks like a result
                try:
                    d.rmdir()
                except OSError:
                    break
            raise
        for w in writers:
            w.close()
        for t, n in zip(tmps, names):
            os.replace(t, track / n)
    return track


def _stream(src, model, writers, rate, channels, total, progress) -> None:
    info = model.info
    frame = info.frame
    to_model = _Resampler(rate, info.sample_rate, channels)
    from_model = _Resampler(info.sample_rate, rate, 2 * channels)  # stem and residual together
    block = BLOCK_FRAMES * frame
    run = Aligned(model, channels, block)
    pending = np.zeros((0, channels), np.float32)  # model-rate samples not yet a whole frame
    written, peak = 0, 0.0
    read = 0
    while True:
        x = src.read(block, dtype="float32", always_2d=True)
        read += len(x)
        last = read >= total or len(x) == 0
        if len(x) and not np.isfinite(x).all():
            raise UserError(f"{src.name} contains NaN or infinite samples; repair or re-export the file")
        peak = max(peak, float(np.abs(x).max()) if len(x) else 0.0)
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
    if peak == 0.0:
        raise UserError(f"{src.name} is silent (all samples are zero): nothing to separate")
    if written < total:  # the resampler's tail can fall a few samples short: pad with silence
        pad = np.zeros((total - written, channels), np.float32)
        writers[0].write(pad)
        writers[1].write(pad)

