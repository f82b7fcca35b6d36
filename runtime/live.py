"""`unetsep live`: mic to speaker through the model, one block per audio callback.

The callback follows python-sounddevice's wire.py: it copies into preallocated arrays, runs the
model, counts, and (--record) copies the block it played into runtime.recorder's ring; it never
prints, blocks or raises. Everything else happens outside it. With
onnxruntime on the CPU the model call allocates nothing (IOBinding on the engine's preallocated
buffers); LiteRT copies its output tensor and the CUDA provider moves each block to and from the
GPU, so with those backends the model's own call does allocate.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import Terminated, UserError, cause_of
from .stream import EAGER_BLOCK, StreamEngine

BLEND_REST = 0.25  # 'blend': the target at full level over the rest at -12 dB


def mixes(target: str) -> tuple[str, str, str]:
    """The --mix choices for a model of `target`: the target alone, everything but it, or the
    target over the rest at -12 dB (a bass model: bass, no-bass, blend)."""
    return (target, f"no-{target}", "blend")


# 93 ms at 44.1 kHz: longer blocks are no longer live use; the engine prepares every call a block
# up to this long can make before the stream starts, so no callback allocates.
MAX_BLOCKSIZE = EAGER_BLOCK
LEVEL_FLOOR_DB = -120.0  # what a silent block's level reads as


@dataclass
class LiveReport:
    callbacks: int
    xruns: int
    xruns_after_first_second: int
    blocksize: int
    channels: int
    seconds: float
    model: str
    provider: str
    stream_latency_ms: tuple
    algorithmic_latency_ms: float
    callback_p50_us: float
    callback_p99_us: float
    callback_max_us: float
    cpu_load: float  # mean callback time / block period
    input_peak_dbfs: float = LEVEL_FLOOR_DB  # the loudest block of the run, in and out
    output_peak_dbfs: float = LEVEL_FLOOR_DB
    stopped_by: str = "seconds"  # or "ctrl-c", "sigterm"
    recorded: str = ""  # --record's file, with the seconds it holds and the blocks it lost
    recorded_seconds: float = 0.0
    record_dropped_blocks: int = 0


NO_DEVICE_HINT = ("connect a sound card, or start a JACK server (e.g. 'jackd -d dummy -r 44100 -p 64' "
                  "for a virtual one) and run again")


def list_devices() -> str:
    """PortAudio's device table; a UserError when there is none (an empty table says nothing)."""
    import sounddevice as sd

    devices = sd.query_devices()
    if len(devices) == 0:
        raise UserError(f"no audio input or output device found; {NO_DEVICE_HINT}")
    return str(devices)


def _missing_device(sd, device_in: str | None, device_out: str | None) -> str | None:
    """Why a stream cannot open when it is for want of a device (PortAudio says only
    "Error querying device -1"), else None."""
    if len(sd.query_devices()) == 0:
        return f"no audio input or output device found; {NO_DEVICE_HINT}"
    default_in, default_out = sd.default.device
    missing = [kind for kind, given, default in (("input", device_in, default_in),
                                                  ("output", device_out, default_out))
               if given is None and (default is None or default < 0)]
    if missing:
        return (f"no default {' or '.join(missing)} device; pick one with "
                f"{' and '.join({'input': '-i', 'output': '-o'}[k] for k in missing)} (see "
                f"'unetsep live -l'), or {NO_DEVICE_HINT}")
    return None


def _device(value: str | None):
    if value is None:
        return None
    return int(value) if value.isdigit() else value


class Live:
    def __init__(self, model, channels: int, blocksize: int, mix: str):
        if blocksize > MAX_BLOCKSIZE:
            raise UserError(f"--blocksize {blocksize} is longer than {MAX_BLOCKSIZE} samples, more than live "
                            f"use needs (the model's latency is {model.info.latency} samples); try "
                            f"{model.info.frame}")
        if blocksize % model.info.frame:
            raise UserError(f"--blocksize {blocksize} is not a multiple of the model's frame "
                            f"({model.info.frame}); try {model.info.frame}")
        choices = mixes(model.info.target)
        mix = mix or choices[0]
        if mix not in choices:
            raise UserError(f"unknown --mix {mix!r} for a {model.info.target} model: choose "
                            f"{', '.join(choices)}")
        self.model, self.channels, self.blocksize = model, channels, blocksize
        # 0: the target, 1: the rest, 2: the blend
        self.mode = choices.index(mix)
        self.mix = mix
        self.engine = StreamEngine(model, channels, max_block=blocksize)
        lat = self.engine.latency
        self.est = np.zeros((blocksize, channels), np.float32)
        self.rest = np.zeros((blocksize, channels), np.float32)
        # Dry input delayed by the engine's latency, for the residual.
        self.delay = np.zeros((lat + blocksize, channels), np.float32)
        # Per callback, preallocated (about 6 hours at 64 samples): duration (s), xrun flag, and
        # the block's peak input and output level (linear). The main thread reads them.
        self.times = np.zeros(1 << 20, np.float64)
        self.flags = np.zeros(1 << 20, np.bool_)
        self.peak_in = np.zeros(1 << 20, np.float32)
        self.peak_out = np.zeros(1 << 20, np.float32)
        self.n = 0
        # The first exception the model raised in the callback: the stream is aborted and
        # run_live reports it (sounddevice would only print it, and the run would look clean).
        self.error: BaseException | None = None
        self.recorder = None  # runtime.recorder.Recorder (--record): gets each block as played

    def callback(self, indata, outdata, frames, time_info, status) -> None:
        t0 = time.perf_counter()
        n = self.n
        if frames != self.blocksize:  # PortAudio promised fixed blocks; output silence otherwise
            outdata.fill(0)
        else:
            lat = self.engine.latency
            try:
                self.engine.process(indata, out=self.est)
            except Exception as e:
                import sounddevice as sd

                self.error = e
                outdata.fill(0)
                raise sd.CallbackAbort from None
            if self.mode == 0:
                outdata[:] = self.est
            else:
                self.delay[lat:] = indata
                rest = np.subtract(self.delay[:frames], self.est, out=self.rest)
                if self.mode == 1:
                    outdata[:] = rest
                else:
                    np.multiply(rest, BLEND_REST, out=outdata)
                    outdata += self.est
                self.delay[:lat] = self.delay[frames:frames + lat]
        if self.recorder is not None:
            self.recorder.put(outdata)
        if n < len(self.times):
            self.flags[n] = bool(status)
            # max and -min: the peak without the temporary array np.abs would make
            self.peak_in[n] = max(indata.max(), -indata.min())
            self.peak_out[n] = max(outdata.max(), -outdata.min())
            self.times[n] = time.perf_counter() - t0
        self.n = n + 1


def dbfs(peak: float) -> float:
    """A linear peak level in dBFS (full scale = 1.0), LEVEL_FLOOR_DB for silence."""
    return float(20 * np.log10(peak)) if peak > 10 ** (LEVEL_FLOOR_DB / 20) else LEVEL_FLOOR_DB


def status_line(live: Live, start: int, end: int, elapsed: float, period: float) -> str:
    """One line about callbacks [start, end) (the last second) and the run so far: elapsed time,
    xruns so far, callback p99 and max, CPU load (mean callback time / block period), and the peak
    input and output levels in dBFS. Read from the callback's arrays, on the main thread."""
    cap = len(live.times)
    a, b = min(start, cap), min(end, cap)
    times = live.times[a:b] * 1e6
    xruns = int(live.flags[:b].sum())
    if b > a:
        p99, mx, load = float(np.percentile(times, 99)), float(times.max()), float(times.mean() / 1e6 / period)
        lin, lout = dbfs(float(live.peak_in[a:b].max())), dbfs(float(live.peak_out[a:b].max()))
    else:
        p99 = mx = load = 0.0
        lin = lout = LEVEL_FLOOR_DB
    return (f"{elapsed:7.1f} s  xruns {xruns:3d}  callback p99 {p99:5.0f} us  max {mx:5.0f} us  "
            f"CPU {load:4.0%}  in {lin:6.1f} dBFS  out {lout:6.1f} dBFS")


def run_live(model, channels: int = 2, blocksize: int = 64, mix: str | None = None,
             device_in: str | None = None, device_out: str | None = None,
             seconds: float | None = None, status=None, record: str | None = None) -> LiveReport:
    """Run until `seconds` have passed (or Ctrl-C). `status(line)`, when given, is called from
    this (the main) thread once per second with a status_line; the callback never prints.
    `record`: a .wav or .flac file that receives what is played (runtime.recorder), complete up
    to the stop, written only when the stream has run."""
    if record:
        from .recorder import record_format

        record_format(record, channels, model.info.sample_rate)  # refused before anything starts
    live = Live(model, channels, blocksize, mix)  # bad arguments refused before PortAudio starts
    import sounddevice as sd

    rate = model.info.sample_rate
    done = threading.Event()
    try:
        stream = sd.Stream(samplerate=rate, blocksize=blocksize, channels=channels, dtype="float32",
                           device=(_device(device_in), _device(device_out)), callback=live.callback,
                           finished_callback=done.set, latency="low")
    except (sd.PortAudioError, ValueError) as e:
        reason = _missing_device(sd, device_in, device_out)
        if reason:
            raise UserError(reason) from None
        if "channels" in str(e).lower():
            raise UserError(f"the audio device cannot open {channels} channels ({e}); pass fewer with "
                            f"--channels, or pick another device with -i/-o ('unetsep live -l')") from None
        raise UserError(f"cannot open the audio device ({e}); list devices with 'unetsep live -l' "
                        f"and pick them with -i/-o") from None
    period = blocksize / rate
    stopped_by = "seconds"
    recorder = None
    kept = ""
    try:
        if record:  # opened once the device is: a stream that cannot open leaves no file
            from .recorder import Recorder

            recorder = live.recorder = Recorder(record, rate, channels)
        started = time.perf_counter()
        with stream:
            try:
                last = 0
                while True:
                    elapsed = time.perf_counter() - started
                    left = None if seconds is None else seconds - elapsed
                    if left is not None and left <= 0:
                        break
                    done.wait(1.0 if left is None else min(1.0, left))
                    if recorder is not None:
                        recorder.drain()
                    if done.is_set():  # the stream ended: the callback aborted it, or the device went
                        stopped_by = "stream"
                        break
                    if status is not None:
                        now = live.n
                        status(status_line(live, last, now, time.perf_counter() - started, period))
                        last = now
            except KeyboardInterrupt as e:
                stopped_by = "sigterm" if isinstance(e, Terminated) else "ctrl-c"
            latency = stream.latency
        # The stream is closed: nothing puts any more. A run that played nothing leaves no file.
        if recorder is not None and recorder.head == 0:
            recorder.abort()
            recorder = None
        elif recorder is not None:
            recorder.finish()
            kept = f" ({recorder.path} holds the {recorder.seconds:.1f} s played before)"
    except BaseException:  # a second Ctrl-C while finishing drops the take: no partial file
        if recorder is not None:
            recorder.abort()
        stream.close()  # already closed unless the recorder could not be opened
        raise
    if live.error is not None:
        cause = cause_of(live.error)
        raise UserError(f"{model.path} failed in the audio callback after {live.n} blocks ({cause}){kept}; "
                        f"check it with 'unetsep bench --model {model.path}' or re-export it")
    if stopped_by == "stream":  # ended by PortAudio, not by us: a device removed, a JACK server stopped
        raise UserError(f"the audio stream stopped by itself after {live.n} blocks (a device removed or "
                        f"the JACK server stopped?){kept}; check the devices with 'unetsep live -l' and "
                        f"start again")
    elapsed = time.perf_counter() - started
    n = min(live.n, len(live.times))
    times = live.times[:n] * 1e6
    first = int(np.ceil(rate / blocksize))  # callbacks in the first second
    return LiveReport(
        callbacks=live.n, xruns=int(live.flags[:n].sum()),
        xruns_after_first_second=int(live.flags[first:n].sum()), blocksize=blocksize,
        channels=channels, seconds=round(elapsed, 3), model=str(model.path), provider=model.provider,
        stream_latency_ms=tuple(round(x * 1e3, 3) for x in latency),
        algorithmic_latency_ms=round(live.engine.latency / rate * 1e3, 3),
        callback_p50_us=float(np.percentile(times, 50)) if n else 0.0,
        callback_p99_us=float(np.percentile(times, 99)) if n else 0.0,
        callback_max_us=float(times.max()) if n else 0.0,
        cpu_load=float(times.mean() / 1e6 / period) if n else 0.0,
        input_peak_dbfs=round(dbfs(float(live.peak_in[:n].max())), 1) if n else LEVEL_FLOOR_DB,
        output_peak_dbfs=round(dbfs(float(live.peak_out[:n].max())), 1) if n else LEVEL_FLOOR_DB,
        stopped_by=stopped_by, recorded=str(recorder.path) if recorder else "",
        recorded_seconds=round(recorder.seconds, 3) if recorder else 0.0,
        record_dropped_blocks=recorder.dropped if recorder else 0)


def report_json(r: LiveReport) -> str:
    return json.dumps(asdict(r), indent=2)
