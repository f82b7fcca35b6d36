"""Soak test of `unetsep live`: minutes of real-time callbacks against a running JACK server.

    jackd --no-realtime -d dummy -r 44100 -p 64 &      # a virtual sound card (or a real one)
    python -m unetsep.benchmarks.live_soak --minutes 10 [--model M] [--json soak.json]

It starts nothing but `unetsep live` itself (run in this process through `unetsep.cli.main`, so
the callback timings are the live path's own, not a copy of it) and reports, per minute, the
xruns PortAudio flagged; over the whole run the callback time at p50/p99/p99.9/max; and this
process's resident memory (RSS, psutil) at the start, every minute and at the end, so that growth
over a long session shows. With the dummy driver nothing is connected to the input, so the model
runs on silence: the same arithmetic per callback as on music for this convolutional model.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np


def _jack_running() -> bool:
    import sounddevice as sd

    return any("JACK" in api["name"] and api["devices"] for api in sd.query_hostapis())


def soak(minutes: float, model_path: str | None = None, blocksize: int = 64, channels: int = 2,
         say=print) -> dict:
    import psutil

    from unetsep import cli
    from unetsep.runtime import live as live_mod
    from unetsep.runtime.errors import UserError

    if not _jack_running():
        raise UserError("no JACK server found; start one first, e.g. 'jackd --no-realtime -d dummy -r "
                        "44100 -p 64 &' (a virtual card) or jackd on your sound card")
    instances: list = []

    class Recorded(live_mod.Live):  # keeps a handle on the Live object; the callback is untouched
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            instances.append(self)

    proc = psutil.Process()
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    before = proc.memory_info().rss

    def sample_rss() -> None:  # every 5 s, off the audio thread; wakes rarely and allocates little
        while not stop.is_set() and not (instances and instances[-1].n > 0):
            stop.wait(0.2)  # "start" is once the stream runs: model loading is not growth
        t0 = time.perf_counter()
        while not stop.is_set():
            rss.append((time.perf_counter() - t0, proc.memory_info().rss))
            stop.wait(5.0)

    argv = ["live", "--seconds", str(minutes * 60), "--blocksize", str(blocksize), "--channels",
            str(channels)] + (["--model", model_path] if model_path else [])
    sampler = threading.Thread(target=sample_rss, daemon=True)
    live_mod.Live, original = Recorded, live_mod.Live
    try:
        sampler.start()
        status = cli.main(argv)
    finally:
        live_mod.Live = original
        stop.set()
        sampler.join()
    rss.append((rss[-1][0] if rss else 0.0, proc.memory_info().rss))
    if status != 0 or not instances:
        raise UserError(f"'unetsep {' '.join(argv)}' failed (exit {status})")
    lv = instances[-1]
    n = min(lv.n, len(lv.times))
    times = lv.times[:n] * 1e6
    rate = lv.model.info.sample_rate
    per_minute = int(round(60 * rate / blocksize))  # callbacks per minute
    flags = lv.flags[:n]
    xruns_per_minute = [int(flags[i:i + per_minute].sum()) for i in range(0, n, per_minute)]
    pct = (lambda q: float(np.percentile(times, q))) if n else (lambda q: 0.0)
    report = {
        "minutes": minutes, "callbacks": int(lv.n), "blocksize": blocksize, "channels": channels,
        "deadline_us": blocksize / rate * 1e6, "xruns": int(flags.sum()),
        "xruns_per_minute": xruns_per_minute,
        "callback_p50_us": pct(50), "callback_p99_us": pct(99), "callback_p999_us": pct(99.9),
        "callback_max_us": float(times.max()) if n else 0.0,
        "rss_before_mb": before / 2**20, "rss_start_mb": rss[0][1] / 2**20, "rss_end_mb": rss[-1][1] / 2**20,
        "rss_mb_every_5s": [round(r / 2**20, 1) for _, r in rss],
        "model": str(lv.model.path),
    }
    if lv.n > len(lv.times):
        report["note"] = f"timings cover the first {len(lv.times)} callbacks"
    return report


def main(argv: list[str] | None = None) -> int:
    from unetsep.cli import Parser, positive_float, positive_int
    from unetsep.runtime.errors import UserError

    p = Parser(prog="python -m unetsep.benchmarks.live_soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=positive_float, default=10.0, help="soak length (default 10)")
    p.add_argument("--model", "-n", help="model file (default: the shipped model)")
    p.add_argument("--blocksize", "-b", type=positive_int, default=64)
    p.add_argument("--channels", "-c", type=positive_int, default=2)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    try:
        if args.json:
            from unetsep.runtime.files import check_writable

            check_writable(args.json, "--json")
        r = soak(args.minutes, args.model, args.blocksize, args.channels)
    except UserError as e:
        print(f"live_soak: error: {e}", file=sys.stderr)
        return 2
    print(f"{r['minutes']:g} min, {r['callbacks']} callbacks of {r['blocksize']} x {r['channels']}: "
          f"xruns {r['xruns']} (per minute {r['xruns_per_minute']}); callback p50 "
          f"{r['callback_p50_us']:.0f} us, p99 {r['callback_p99_us']:.0f} us, p99.9 "
          f"{r['callback_p999_us']:.0f} us, max {r['callback_max_us']:.0f} us (deadline "
          f"{r['deadline_us']:.0f} us); RSS {r['rss_start_mb']:.1f} -> {r['rss_end_mb']:.1f} MB")
    if args.json:
        from pathlib import Path

        from unetsep.runtime.files import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
