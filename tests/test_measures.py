"""runtime/measures.py: the one place for timing, SNR and SDR; the deadline follows the model."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from unetsep.runtime.contract import ModelInfo
from unetsep.runtime.measures import Timed, deadline_us, snr_db, time_calls


def test_deadline_follows_the_model():
    assert round(deadline_us(ModelInfo())) == 1451  # 64 samples at 44.1 kHz
    assert np.isclose(deadline_us(ModelInfo(frame=128, context=128, sample_rate=48000), 2), 2 * 128 / 48000 * 1e6)


def test_time_calls_counts_misses_against_the_models_deadline():
    info = ModelInfo(frame=32, context=96, sample_rate=32000)  # 1000 us per frame
    shapes = []

    def fast(x):
        shapes.append(x.shape)
        return x[:, :32]

    def slow(x):  # every call past the 1 ms deadline
        time.sleep(0.0015)
        return x[:, :32]

    fast_r, slow_r = time_calls([Timed(fast, info, 1, {"model": "fast"}), Timed(slow, info, 2, {"model": "slow"})],
                                frames=20, warmup=2)
    assert shapes[0] == (1, 96, 1)  # fed the model's context
    assert fast_r["model"] == "fast" and fast_r["calls"] == 20 and fast_r["deadline_misses"] == 0
    assert slow_r["calls"] == 10 and slow_r["deadline_us"] == 1000.0 and slow_r["deadline_misses"] == 10
    assert slow_r["p50_us"] <= slow_r["p99_us"] <= slow_r["p999_us"] <= slow_r["max_us"]
    assert len(slow_r["times_us"]) == 10


def test_snr():
    x = np.ones((100, 2), np.float32)
    assert snr_db(x, x) == float("inf")
    assert np.isclose(snr_db(x, x * 1.1), 20.0)


def test_measures_import_no_heavy_module():
    code = ("import sys, unetsep.runtime.measures; print(sorted(m for m in ('tensorflow', 'museval', "
            "'scipy', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
