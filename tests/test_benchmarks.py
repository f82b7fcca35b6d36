"""`unetsep bench` and `unetsep evaluate`: the schema of their JSON and known cases."""
from __future__ import annotations

import json
from pathlib import Path

import musdb
import numpy as np
import pytest

from conftest import unetsep


def test_bench_schema(exported, tmp_path):
    unetsep("bench", "--model", exported / "drums.onnx", "--model", exported / "drums.tflite",
            "--frames", 300, "--batch", 1, 2, "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png")
    out = json.loads((tmp_path / "b.json").read_text())
    assert len(out["results"]) == 4
    for r in out["results"]:
        for key in ("model", "backend", "provider", "batch", "frames", "p50_us", "p99_us", "p999_us",
                    "max_us", "deadline_us", "deadline_misses"):
            assert key in r, key
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
        assert r["frames"] >= 300 and r["deadline_us"] > 1450
    assert out["bound"]["gemm_gflops"] > 0 and out["bound"]["bound_us"] > 0
    assert out["bound"]["cached_read_gbs"] > 0 and out["bound"]["cached_read_us"] > 0
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_evaluate_schema_and_oracles(dataset, exported, tmp_path):
    unetsep("evaluate", "--data", dataset, "--model", exported / "drums.onnx", "--json",
            tmp_path / "e.json", "--plot", tmp_path / "e.png")
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["target"] == "drums" and len(out["tracks"]) == 2  # the test split
    assert all({"name", "sdr"} <= set(t) for t in out["tracks"])
    assert np.isfinite(out["median_sdr"])
    for t in out["tracks"]:  # the 2048-sample oracle beats the mixture used as the estimate
        assert t["scores"]["irm2048"]["sdr"] > t["scores"]["mixture"]["sdr"]


def test_known_cases(dataset):
    import museval

    from unetsep.benchmarks.quality import score_track
    from unetsep.runtime.measures import mixture_sdr, museval_sdr, target_sdr

    track = musdb.DB(root=str(dataset), is_wav=True, subsets="test").tracks[0]
    mix = track.audio.astype(np.float32)
    stems = {k: v.audio.astype(np.float32) for k, v in track.sources.items()}
    truth = stems["drums"]
    scores = score_track(mix, stems, "drums", {"self": truth}, track.rate, oracles=False)
    assert scores["self"]["sdr"] > 60  # the truth scored against itself
    # The mixture baseline is museval's own figure on the same arrays.
    sdr, _, _, _ = museval.evaluate(np.stack([truth, mix - truth]), np.stack([mix, mix]),
                                    win=track.rate, hop=track.rate)
    assert np.isclose(scores["mixture"]["sdr"], np.nanmedian(sdr[0]))
    assert museval_sdr(np.stack([truth, mix - truth]), np.zeros((2, *mix.shape)),
                       track.rate)["sdr"] == float("-inf")
    # The SDR alone (demo, export's checks) is the two-source SDR: also on a song whose
    # accompaniment rests for two of its seconds (museval leaves those frames out).
    rest = mix - truth
    rest[track.rate:3 * track.rate] = 0.0
    for m in (mix, truth + rest):
        est = 0.7 * truth + 0.2 * m
        for full, fast in ((target_sdr(m, truth, est, track.rate),
                            target_sdr(m, truth, est, track.rate, sir_sar=False)),
                           (mixture_sdr(m, truth, track.rate),
                            mixture_sdr(m, truth, track.rate, sir_sar=False))):
            assert fast.keys() == {"sdr"} and abs(fast["sdr"] - full["sdr"]) < 1e-9, (fast, full)
    # the rule matters here: without it the one-source median is another figure
    est = 0.7 * truth + 0.2 * (truth + rest)
    alone = museval.evaluate(truth[None], est[None], win=track.rate, hop=track.rate)[0][0]
    fast = target_sdr(truth + rest, truth, est, track.rate, sir_sar=False)["sdr"]
    assert np.isnan(alone).sum() == 0 and abs(np.median(alone) - fast) > 1e-3


def test_results_quote_the_export_report():
    from unetsep.benchmarks.results import tried

    report = json.loads((Path(__file__).resolve().parent.parent / "models" / "seed" / "report.json").read_text())
    text = tried(report)
    lean = [f for f in report["formats"] if f["format"] == "onnx"][0]
    assert f"lean {lean['nodes']}-node graph" in text and f"{lean['p50_us']:.0f} us" in text
    for raw in report["converter_output"]:
        assert f"{raw['nodes']} " in text


def test_band_diagnostics_find_bleed_loss_and_pumping():
    from unetsep.benchmarks.bands import WINDOW_S, band_scores

    rate = 44100
    t = np.arange(rate * 2) / rate
    rng = np.random.default_rng(0)
    drums = (0.5 * np.sin(2 * np.pi * 60 * t) + 0.05 * rng.standard_normal(len(t)))[:, None]
    rest = (0.3 * np.sin(2 * np.pi * 2500 * t))[:, None]
    mix = drums + rest
    exact = band_scores(mix, drums, drums, rate)
    assert all(exact[b]["sdr_db"] > 60 and abs(exact[b]["level_db"]) < 1e-6 for b in ("kick", "cymbals"))
    # Half the kick lost and a tenth of the 2.5 kHz part kept: each shows in its own band only.
    est = drums - 0.5 * (0.5 * np.sin(2 * np.pi * 60 * t))[:, None] + 0.1 * rest
    s = band_scores(mix, drums, est, rate)
    assert s["kick"]["level_db"] < -4 and s["snare/high-mid"]["level_db"] > -1
    assert s["snare/high-mid"]["bleed_db"] > s["kick"]["bleed_db"] + 20
    # The accompaniment ducked to half on every other 20 ms window: a 3.01 dB standard deviation.
    win = int(WINDOW_S * rate)
    gain = np.where((np.arange(len(t)) // win) % 2 == 0, 1.0, 0.5)[:, None]
    ducked = band_scores(mix, drums, drums + rest * (1 - gain), rate)
    assert abs(ducked["pumping_db"] - 20 * np.log10(2) / 2) < 0.01
    assert exact["pumping_db"] < 1e-6


def test_converted_files_take_their_float_models_bound():
    """bench sets a converted file's p50 against the compute bound of the float model it came from."""
    from unetsep.runtime.separate import float_model_name, model_name

    for file, name in (("models/default/drums.int8.tflite", "default-int8-tflite"),
                       ("models/default/drums.fp16.tflite", "default-fp16-tflite"),
                       ("models/default/drums.dynint8.tflite", "default-dynint8-tflite"),
                       ("models/seed/drums.int8.onnx", "seed-int8"),
                       ("runs/stream-real/drums.int8.tflite", "stream-real-int8-tflite")):
        assert model_name(Path(file), "drums") == name
        assert float_model_name(name) == Path(file).parent.name
    assert float_model_name("seed") == "seed"


@pytest.mark.parametrize("name", ["cuda-h100.json", "cuda-h200.json"])
def test_results_quote_the_cuda_figures(name):
    """The committed GPU figures render as RESULTS.md's CUDA section: every timed row, the refused
    CUDA graph captures with their reason, and the shape-change table."""
    from unetsep.benchmarks.results import cuda_section

    path = Path(__file__).parents[1] / "benchmarks" / name
    c = json.loads(path.read_text())
    text = "\n".join(cuda_section(str(path)))
    timed = [r for r in c["results"] if "error" in r or "p50_us" in r]
    assert len(timed) == len(c["results"]) > 0
    for r in c["results"]:
        if "p50_us" in r:
            assert f"| {r['model']} | {r['channels']} | {r['hops']} | {r['cuda_graph']} | {r['p50_us']:.0f} |" in text
        else:
            assert "refused: " + r["error"] in text
    assert all(note in text for note in c.get("notes", []))
    assert text.count("| batch 1 and 2 in turn |") == sum(
        r["calls"] == "batch 1 and 2 in turn" for r in c["shape_changes"]["rows"])


def test_gemm_probe_is_a_graph_older_runtimes_take(monkeypatch):
    """bench's GEMM probe declares IR 8 / opset 17, as the exported models: the onnx package's own
    newest IR (14 with onnx 1.23) made onnxruntime-gpu 1.30 refuse it, and bench crash, on a GPU.
    The oldest onnxruntime the project allows (1.17) reads IR <= 9 and opset <= 20: the session
    machine_rates opens is checked for that (this onnxruntime would take a newer IR)."""
    import onnx
    import onnxruntime as ort

    from unetsep.benchmarks.latency import machine_rates

    real, seen = ort.InferenceSession, []

    def checked(model, *args, **kw):
        m = onnx.load_from_string(model)
        seen.append((m.ir_version, max(o.version for o in m.opset_import)))
        return real(model, *args, **kw)

    monkeypatch.setattr(ort, "InferenceSession", checked)
    gflops, gbs = machine_rates(0.05)
    assert gflops > 0 and gbs > 0
    assert seen and all(ir <= 9 and opset <= 20 for ir, opset in seen)


def test_results_render_what_cuda_latency_writes(tmp_path):
    """cuda_latency's own JSON (shape changes as written, or as bare rows) renders too."""
    from unetsep.benchmarks.results import cuda_section

    row = {"model": "default/drums.onnx", "cudnn_conv_algo_search": "DEFAULT", "calls": "batch 1 only",
           "timed": 160, "p50_us": 1000.0, "p99_us": 1200.0}
    timed = {"model": "default/drums.onnx", "channels": 1, "hops": 1, "cuda_graph": False, "p50_us": 900.0,
             "p99_us": 1000.0, "p999_us": 1100.0, "max_us": 1200.0, "seconds_per_second": 1.5}
    for shapes in ({"what": "1 thread", "rows": [row]}, [row]):
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"results": [timed], "shape_changes": shapes}))
        text = "\n".join(cuda_section(str(path)))
        assert "| default/drums.onnx | DEFAULT | batch 1 only | 1000 | 1200 |" in text
        assert "| default/drums.onnx | 1 | 1 | False | 900 | 1000 | 1100 | 1200 | 1.5 |" in text


def test_cuda_latency_times_the_runtime_runners_on_any_device():
    """cuda_latency times the runtime's own runners; on onnxruntime's CPU device (no GPU here)
    the same code gives a row for a stream model and for the seed, and asking for CUDA graphs
    where none can be captured is an error for that row, not a row timed without them."""
    from unetsep.benchmarks.cuda_latency import time_hops
    from unetsep.runtime.backends import load_model, shipped_model

    for name, channels in (("default", 2), ("seed", 2)):
        model = load_model(shipped_model(name))
        for hops in (1, 8):  # the seed takes the 8 hops of both streams as one batch of 16 frames
            row = time_hops(model, channels, hops, 20, device="cpu")
            assert row["model"] == name and row["hops"] == hops and row["channels"] == channels
            assert 0 < row["p50_us"] <= row["p999_us"]
            # audio per second: hops x 64 samples of each stream per call (the seed's file-mode
            # row once counted one frame per batch and read 1 s/s for 1,861)
            assert row["seconds_per_second"] == pytest.approx(
                hops * 64 / 44100 / (row["p50_us"] * 1e-6), rel=1e-6)
        with pytest.raises(RuntimeError):
            time_hops(model, channels, 1, 5, graph=True, device="cpu")
