"""`unetsep live` for real: a JACK server with the dummy driver, a JACK client playing a known
mixture into unetsep's input and recording its output, compared with `unetsep separate`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ENV, unetsep

pytestmark = pytest.mark.skipif(shutil.which("jackd") is None,
                                reason="jackd is not installed (apt-get install jackd2)")


def test_list_devices_shows_jack(jackd):
    proc = unetsep("live", "-l")
    assert "JACK" in proc.stdout


def test_live_matches_separate(jackd, exported, song, tmp_path):
    import jack

    x, rate = sf.read(song, dtype="float32")  # (n, 2)
    x = x[: 3 * rate]
    unetsep("separate", song, "--model", exported / "drums.onnx", "-o", tmp_path / "sep")
    offline, _ = sf.read(tmp_path / "sep" / "tiny" / song.stem / "drums.wav", dtype="float32")
    offline = offline[: len(x)]

    live = subprocess.Popen([sys.executable, "-m", "unetsep.cli", "live", "--model",
                             str(exported / "drums.onnx"), "--seconds", "8", "--json",
                             str(tmp_path / "r.json"), "--record", str(tmp_path / "played.wav")],
                            env=ENV, stderr=subprocess.PIPE, text=True)
    client = jack.Client("player", no_start_server=True)
    outs = [client.outports.register(f"out_{i}") for i in range(2)]
    ins = [client.inports.register(f"in_{i}") for i in range(2)]
    rec = np.zeros((len(x) + rate, 2), np.float32)
    state = {"play": -1, "pos": 0}

    @client.set_process_callback
    def process(frames):
        pos, play = state["pos"], state["play"]
        for c in range(2):
            buf = outs[c].get_array()
            buf.fill(0)
            if play >= 0 and 0 <= pos - play < len(x):
                seg = x[pos - play: pos - play + frames, c]
                buf[: len(seg)] = seg
            if play >= 0 and 0 <= pos - play and pos - play + frames <= len(rec):
                rec[pos - play: pos - play + frames, c] = ins[c].get_array()
        state["pos"] = pos + frames

    with client:
        deadline = time.time() + 60
        while True:  # wait for unetsep's ports
            theirs = [p for p in client.get_ports(is_audio=True)
                      if not p.name.startswith(("system:", "player:"))]
            if len([p for p in theirs if p.is_input]) >= 2 and len([p for p in theirs if p.is_output]) >= 2:
                break
            assert time.time() < deadline and live.poll() is None, live.stderr.read() if live.poll() else ""
            time.sleep(0.1)
        their_in = [p for p in theirs if p.is_input][:2]
        their_out = [p for p in theirs if p.is_output][:2]
        for a, b in zip(outs, their_in):
            client.connect(a, b)
        for a, b in zip(their_out, ins):
            client.connect(a, b)
        time.sleep(0.5)
        state["play"] = state["pos"] + 64 * 8  # start on a period boundary
        time.sleep(len(x) / rate + 1.0)
    live.wait(60)
    assert live.returncode == 0, live.stderr.read()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["blocksize"] == 64 and report["channels"] == 2 and report["callbacks"] > 0
    assert "xruns" in report

    # Align by the reported latency: the model's frame, plus whole JACK periods of graph delay.
    lat = round(report["algorithmic_latency_ms"] * rate / 1000)
    assert lat == 64
    n = len(offline) // 64 * 64
    errs = {d: float(np.median(np.abs(rec[d: d + n] - offline[:n]))) for d in range(lat, lat + 64 * 8)}
    best = min(errs, key=errs.get)
    assert (best - lat) % 64 == 0, best  # whole JACK periods of graph delay after the model's frame
    # Blocks where an xrun dropped audio may differ; all others must match the offline result.
    blocks = np.abs(rec[best: best + n] - offline[:n]).reshape(-1, 64, 2).max(axis=(1, 2))
    assert np.mean(blocks <= 1e-5) >= 0.8, (best, np.mean(blocks <= 1e-5), report["xruns"])

    # --record wrote every block it played: each (non-silent) period the JACK client received is,
    # sample for sample, one of the recording's blocks. (Matched block by block: an xrun on this
    # shared VM shifts the two streams against each other from there on.)
    played, prate = sf.read(tmp_path / "played.wav", dtype="float32")
    assert prate == rate and played.shape == (report["callbacks"] * 64, 2)
    assert report["recorded"] == str(tmp_path / "played.wav") and report["record_dropped_blocks"] == 0
    assert report["recorded_seconds"] == pytest.approx(len(played) / rate, abs=1e-3)
    assert not list(tmp_path.glob(".played*"))  # no temporary left beside it
    recorded = {played[i: i + 64].tobytes() for i in range(0, len(played), 64)}
    heard = [rec[i: i + 64] for i in range(0, len(rec) - 63, 64) if np.abs(rec[i: i + 64]).max() > 0]
    assert len(heard) > 2 * rate / 64
    found = np.mean([b.tobytes() in recorded for b in heard])
    assert found >= 0.9, (found, report["xruns"])


def test_live_runs_a_streaming_model(jackd, stream_exported, tmp_path):
    """A version-2 model (state carried hop to hop) runs live at a 64-sample period."""
    unetsep("live", "--model", stream_exported / "drums.onnx", "--seconds", 3, "--json",
            tmp_path / "r.json", timeout=120)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["blocksize"] == 64 and r["channels"] == 2
    assert r["callbacks"] > 0.5 * 3 * 44100 / 64  # the stream ran (xruns aside) for its 3 s


def test_live_picks_the_shipped_models_format(jackd, tmp_path):
    """With a shipped model, --format auto runs its LiteRT int8 file where LiteRT is installed
    (the cheaper callback), --format onnx the float32 graph; a file given by path runs as given."""
    from unetsep.runtime.backends import litert_available, shipped_model

    path = shipped_model("default")  # drums.onnx, given as a file: no switch to LiteRT
    runs = {"auto": (), "onnx": ("--format", "onnx"), "named": ("--model", "default", "-f", "int8.onnx"),
            "path": ("--model", path)}
    for name, args in runs.items():
        r = unetsep("live", *args, "--seconds", 2, "--json", tmp_path / f"{name}.json", timeout=120)
        if name == "named":  # the summary names the model, not only its file (all are drums.*)
            assert "live: default-int8 (drums.int8.onnx, " in r.stderr, r.stderr
    got = {n: Path(json.loads((tmp_path / f"{n}.json").read_text())["model"]).name for n in runs}
    assert got == {"auto": "drums.int8.tflite" if litert_available() else "drums.onnx",
                   "onnx": "drums.onnx", "named": "drums.int8.onnx", "path": "drums.onnx"}
    for args, says in ((("--model", "seed", "--format", "tflite"), "has no tflite file"),
                       (("--model", "models/default/drums.onnx", "-f", "onnx"), "is a path"),
                       (("--format", "fp8"), "unknown --format")):
        r = unetsep("live", *args, "--seconds", 1, check=False)
        assert r.returncode != 0 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
