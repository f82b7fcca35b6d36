"""`unetsep live`: mic to speaker through the model, one block per audio callback.

The callback follows python-sounddevice's wire.py: it copies into preallocated arrays, runs the
model and counts; it never prints, blocks or raises. Everything else happens outside it. With
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

from .errors import UserError
from .stream import StreamEngine

MIXES = ("drums", "no-drums", "blend")
BLEND_REST = 0.25  # 'blend': the target at full level over the rest at -12 dB


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
        if blocksize % model.info.frame:
            raise UserError(f"--blocksize {blocksize} is not a multiple of the model's frame "
                            f"({model.info.frame}); try {model.info.frame}")
        if mix not in MIXES:
            raise UserError(f"unknown --mix {mix!r}: choose {', '.join(MIXES)}")
        self.model, self.channels, self.blocksize, self.mix = model, channels, blocksize, mix
        self.engine = StreamEngine(model, channels, max_block=blocksize)
        lat = self.engine.latency
        self.est = np.zeros((blocksize, channels), np.float32)
        self.rest = np.zeros((blocksize, channels), np.float32)
        # Dry input delayed by the engine's latency, for the residual.
        self.delay = np.zeros((lat + blocksize, channels), np.float32)
        self.times = np.zeros(1 << 20, np.float64)  # callback durations (s), preallocated
        self.flags = np.zeros(1 << 20, np.bool_)
        self.n = 0

    def callback(self, indata, outdata, frames, time_info, status) -> None:
        t0 = time.perf_counter()
        n = self.n
        if frames != self.blocksize:  # PortAudio promised fixed blocks; output silence otherwise
            outdata.fill(0)
        else:
            lat = self.engine.latency
            self.engine.process(indata, out=self.est)
            if self.mix == "drums":
                outdata[:] = self.est
            else:
                self.delay[lat:] = indata
                rest = np.subtract(self.delay[:frames], self.est, out=self.rest)
                if self.mix == "no-drums":
                    outdata[:] = rest
                else:
                    np.multiply(rest, BLEND_REST, out=outdata)
                    outdata += self.est
                self.delay[:lat] = self.delay[frames:frames + lat]
        if n < len(self.times):
            self.flags[n] = bool(status)
            self.times[n] = time.perf_counter() - t0
        self.n = n + 1


def run_live(model, channels: int = 2, blocksize: int = 64, mix: str = "drums",
             device_in: str | None = None, device_out: str | None = None,
             seconds: float | None = None) -> LiveReport:
    import sounddevice as sd

    live = Live(model, channels, blocksize, mix)
    rate = model.info.sample_rate
    done = threading.Event()
    try:
        stream = sd.Stream(samplerate=rate, blocksize=blocksize, channels=channels, dtype="float32",
                           device=(_device(device_in), _device(device_out)), callback=live.callback,
                           latency="low")
    except (sd.PortAudioError, ValueError) as e:
        reason = _missing_device(sd, device_in, device_out)
        if reason:
            raise UserError(reason) from None
        raise UserError(f"cannot open the audio device ({e}); list devices with 'unetsep live -l' "
                        f"and pick them with -i/-o") from None
    started = time.perf_counter()
    with stream:
        try:
            done.wait(seconds)
        except KeyboardInterrupt:
            pass
        latency = stream.latency
    elapsed = time.perf_counter() - started
    n = min(live.n, len(live.times))
    times = live.times[:n] * 1e6
    first = int(np.ceil(rate / blocksize))  # callbacks in the first second
    period = blocksize / rate
    return LiveReport(
        callbacks=live.n, xruns=int(live.flags[:n].sum()),
        xruns_after_first_second=int(live.flags[first:n].sum()), blocksize=blocksize,
        channels=channels, seconds=round(elapsed, 3), model=str(model.path), provider=model.provider,
        stream_latency_ms=tuple(round(x * 1e3, 3) for x in latency),
        algorithmic_latency_ms=round(live.engine.latency / rate * 1e3, 3),
        callback_p50_us=float(np.percentile(times, 50)) if n else 0.0,
        callback_p99_us=float(np.percentile(times, 99)) if n else 0.0,
        callback_max_us=float(times.max()) if n else 0.0,
        cpu_load=float(times.mean() / 1e6 / period) if n else 0.0)


def report_json(r: LiveReport) -> str:
    return json.dumps(asdict(r), indent=2)
