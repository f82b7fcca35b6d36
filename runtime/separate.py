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
    frame, context = info.frame, info.context
    to_model = _Resampler(rate, info.sample_rate, channels)
    from_model = _Resampler(info.sample_rate, rate, 2 * channels)  # stem and residual together
    block = BLOCK_FRAMES * frame
    pending = np.zeros((0, channels), np.float32)  # model-rate samples not yet a whole frame
    history = np.zeros((channels, context - frame), np.float32)
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
        if usable:
            est = separate_array(model.run, chunk, frame, context, history=history)
            if context > frame:
                history = np.ascontiguousarray(
                    np.concatenate([history, chunk.T], axis=1)[:, -(context - frame):])
            both = np.concatenate([est, chunk - est], axis=1)  # resample stem and residual together
            out = from_model(both, last=last)
        else:
            out = from_model(np.zeros((0, 2 * channels), np.float32), last=last)
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

