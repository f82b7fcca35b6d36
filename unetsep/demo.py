"""`unetsep demo`: a song the shipped model never heard, separated, scored, and timed per frame; then
a real recording (the MUSDB18 excerpt stempeg ships), separated and scored."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEMO_SEED = 90210  # the shipped model was trained on seed 2026's songs


def write_wav_atomic(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile as sf

    from unetsep.runtime.files import write_atomic

    write_atomic(path, lambda p: sf.write(str(p), audio, rate, subtype="FLOAT", format="WAV"))


def run(out: str = "separated", model_path: str | None = None, seconds: float = 20.0) -> None:
    import soundfile as sf

    from unetsep.runtime.measures import Timed, deadline_us, time_calls
    from unetsep.runtime.backends import open_model
    from unetsep.runtime.separate import model_name
    from unetsep.runtime.stream import frame_call
    from unetsep.train.render import render_dataset

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = open_model(model_path, "cpu", threads=1, say=say)
    with tempfile.TemporaryDirectory() as tmp:
        say(f"rendering 3 new songs (seed {DEMO_SEED}, never seen in training)...")
        render_dataset(Path(tmp) / "d", songs=3, seconds=seconds, seed=DEMO_SEED)
        track = sorted((Path(tmp) / "d" / "test").iterdir())[0]
        mix, rate = sf.read(track / "mixture.wav", dtype="float32")
        drums, _ = sf.read(track / f"{model.info.target}.wav", dtype="float32")
        dest = Path(out) / model_name(model.path, model.info.target) / track.name

    frame = model.info.frame
    say(f"separating {track.name} ({len(mix) / rate:.0f} s stereo)...")
    # File mode, as `unetsep separate` runs: the same graph and state as live, many hops per call.
    # The per-frame timing below is what the live path costs.
    sdr, base, took = separate_into(model, mix, drums, rate, dest)
    print(f"{model.info.target} SDR {sdr:.2f} dB (the mixture itself scores {base:.2f} dB; museval v4, "
          f"median over 1 s)")
    for r in time_calls([Timed(frame_call(model, b), model.info, b) for b in (1, 2)], 3000):
        print(f"per-frame latency, batch {r['batch']} ({'mono' if r['batch'] == 1 else 'stereo'}): "
              f"p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us "
              f"(deadline {deadline_us(model.info):.0f} us)")
    print(f"separated {len(mix) / rate:.0f} s in {took:.1f} s ({len(mix) / rate / took:.0f}x real time, "
          f"file mode on 1 thread; live runs one {frame}-sample frame per call at the latency above)")
    print(f"stems written to {dest}/ ({model.info.target}.wav, no_{model.info.target}.wav, mixture.wav)")
    real = real_recording(model, Path(out), say)
    if real:
        print(real)


def separate_into(model, mix: np.ndarray, ref: np.ndarray, rate: int,
                  dest: Path) -> tuple[float, float, float]:
    """Separate `mix` (samples, channels) in file mode, write mixture, target and no_target WAVs into
    `dest` (each atomically), and score the estimate against `ref`: (SDR, the mixture's own SDR as
    the floor, seconds the separation took)."""
    from unetsep.runtime.measures import mixture_sdr, target_sdr
    from unetsep.runtime.separate import estimate

    target = model.info.target
    t = time.perf_counter()
    est = estimate(model, mix)
    took = time.perf_counter() - t
    dest.mkdir(parents=True, exist_ok=True)
    for stem, audio in (("mixture", mix), (target, est), (f"no_{target}", mix - est)):
        write_wav_atomic(dest / f"{stem}.wav", audio, rate)
    return (target_sdr(mix, ref, est, rate, sir_sar=False)["sdr"],
            mixture_sdr(mix, ref, rate, sir_sar=False)["sdr"], took)


def real_recording(model, out: Path, say) -> str | None:
    """The one real multitrack recording at hand offline, the 6 s MUSDB18 excerpt the stempeg package
    ships (recorded and mixed by people, not rendered): separated into `out` and scored, the line to
    print. None, with a line on stderr, where ffmpeg cannot decode it."""
    import stempeg  # comes with musdb (the train extra), which the rendering above imported already

    from unetsep.runtime.errors import cause_of
    from unetsep.runtime.separate import model_name
    from unetsep.train.dataset import musdb_setup

    ids = musdb_setup()["stem_ids"]  # musdb's own order of the streams in a .stem.mp4
    target, rate = model.info.target, model.info.sample_rate
    path = Path(stempeg.example_stem_path())
    name = path.name.removesuffix(".stem.mp4")
    say(f"separating a real recording: {name} (MUSDB18, as stempeg ships it)...")
    try:  # ffmpeg decodes (and resamples, for a model at another rate)
        stems = stempeg.read_stems(str(path), dtype=np.float32, sample_rate=rate)[0]  # (5, samples, 2)
    except Exception as e:  # noqa: BLE001  an ffmpeg subprocess's failure, whatever its type
        say(f"skipped the real recording: ffmpeg could not decode {path} ({cause_of(e, 100)})")
        return None
    # the target is one of musdb's stems: the rendered song above was read by the same name
    mix, ref = stems[ids["mixture"]], stems[ids[target]]
    dest = out / model_name(model.path, target) / name
    sdr, base, _ = separate_into(model, mix, ref, rate, dest)
    return (f"on a real recording ({name}, {len(mix) / rate:.0f} s): {target} SDR {sdr:.2f} dB "
            f"(the mixture {base:.2f} dB); stems written to {dest}/")
