"""Streaming (contract v2) models as LiteRT flatbuffers with external state: exported, checked
and run by the same engine as the ONNX ones."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import soundfile as sf

from conftest import unetsep

pytest.importorskip("ai_edge_litert")

FRAME = 64


def noise(seconds: float, channels: int = 2, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((int(seconds * 44100) // FRAME * FRAME, channels)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def models(stream_exported):
    """{suffix: loaded model} of the exported tiny-stream run: ONNX fp32 and both LiteRT files."""
    from unetsep.runtime.backends import load_model

    return {s: load_model(stream_exported / f"drums.{s}") for s in ("onnx", "tflite", "int8.tflite")}


def test_export_writes_and_passes_the_litert_formats(stream_exported):
    """`unetsep export` of a streaming run writes drums.tflite and drums.int8.tflite, each with
    the contract's JSON beside it, and both pass their kind's rule (the fixture exports with
    --allow-degraded, so a failure would still be written: the reason is asserted empty)."""
    report = json.loads((stream_exported / "report.json").read_text())
    rows = {r["format"]: r for r in report["formats"]}
    assert set(rows) == {"onnx", "int8.onnx", "tflite", "int8.tflite"}
    fp32, int8 = rows["tflite"], rows["int8.tflite"]
    assert fp32["kind"] == "float32" and int8["kind"] == "int8"
    assert fp32["reason"] == "" and int8["reason"] == "", (fp32["reason"], int8["reason"])
    assert fp32["max_abs_error"] <= 1e-4 and fp32["max_abs_error_hop"] <= 1e-4
    assert int8["delta_sdr"] >= -0.3 and int8["snr_db"] >= 3.0
    assert int8["snr_db"] < fp32["snr_db"]  # it is quantized: not the float graph again
    onnx_meta = {p.key: p.value for p in onnx.load(str(stream_exported / "drums.onnx")).metadata_props}
    for name in ("drums.tflite", "drums.int8.tflite"):
        assert (stream_exported / name).is_file()
        meta = json.loads((stream_exported / name).with_suffix(".json").read_text())
        assert meta["version"] == 2 and meta["states"] == json.loads(onnx_meta["states"])
    assert "| drums.int8.tflite |" in (stream_exported / "report.md").read_text()


def test_litert_model_takes_and_returns_the_onnx_contract(models):
    from ai_edge_litert.interpreter import Interpreter

    onnx_info = models["onnx"].info
    for suffix in ("tflite", "int8.tflite"):
        m = models[suffix]
        assert m.info == onnx_info and m.info.streaming and len(m.info.states) == 13
        runner = Interpreter(model_path=str(m.path)).get_signature_runner()
        ins, outs = runner.get_input_details(), runner.get_output_details()
        assert set(ins) == {"mix", *(s.input for s in m.info.states)}
        assert set(outs) == {"stem", *(s.output for s in m.info.states)}
        for s in m.info.states:
            assert list(ins[s.input]["shape_signature"]) == [-1, *s.shape]
            assert ins[s.input]["dtype"] == np.float32 and outs[s.output]["dtype"] == np.float32
        assert list(ins["mix"]["shape_signature"]) == [-1, FRAME, 1]  # one hop a call


@pytest.mark.parametrize("suffix", ["tflite", "int8.tflite"])
def test_hop_by_hop_equals_whole_file(models, suffix):
    """Live (one hop per call, T = 1), odd block sizes and the file path (`estimate`, long calls
    the backend runs hop by hop) agree. The flatbuffer sees the same hops and states either way,
    so they agree to float rounding (observed: exactly)."""
    from unetsep.runtime.separate import estimate
    from unetsep.runtime.stream import StreamEngine, stream_blocks

    m = models[suffix]
    x = noise(3.0)
    file = estimate(m, x)
    assert np.abs(file).max() > 0
    assert np.abs(stream_blocks(m, x, block=FRAME) - file).max() <= 1e-6
    engine = StreamEngine(m, channels=2, max_block=1000)
    rng = np.random.default_rng(3)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 1001))
        out.append(engine.process(x[i:i + n]))
        i += n
    y = np.concatenate(out)[engine.latency:]
    assert np.abs(y - file[:len(y)]).max() <= 1e-6


def test_litert_float_equals_onnx_and_carries_state(models):
    """fp32 LiteRT == the lean ONNX graph (both float32 renderings of the same weights: 1e-5, the
    tolerance the ONNX hop-by-hop test uses); from a non-zero start state too, which only holds if
    each state goes in and comes out under its own name."""
    from unetsep.runtime.stream import StatefulRunner

    x = noise(1.0)
    rng = np.random.default_rng(5)
    start = {s.input: (rng.standard_normal((2, *s.shape)) * 0.3).astype(np.float32)
             for s in models["onnx"].info.states}
    xin = np.ascontiguousarray(x.T[..., None])
    want, want_next = models["onnx"].run_stateful(xin, start)
    got, got_next = models["tflite"].run_stateful(xin, start)
    assert np.abs(got - want).max() <= 1e-5
    for k in want_next:
        assert np.abs(got_next[k] - want_next[k]).max() <= 1e-5, k
    zero, _ = models["tflite"].run_stateful(xin, {k: np.zeros_like(v) for k, v in start.items()})
    assert np.abs(zero - got).max() > 1e-3  # the start state matters
    # The runner (live path) from the same start state, one hop a call.
    runner = StatefulRunner(models["tflite"], channels=2, hops=[1])
    runner.load_state(start)
    out = []
    for i in range(0, len(x), FRAME):
        runner.x[1][:, :, 0] = x[i:i + FRAME].T
        out.append(runner(1)[:, :, 0].copy())
    assert np.abs(np.concatenate(out, axis=1) - want[:, :, 0]).max() <= 1e-5


def test_separate_with_litert_matches_onnx(stream_exported, song, tmp_path):
    """`unetsep separate` with the .tflite files: fp32 within 1e-5 of the ONNX model's stems
    (float32 rounding of two kernels libraries, as above); int8 within the export's own int8
    rule of the float stems (output SNR >= 3 dB); the stems still sum to the mixture."""
    from unetsep.runtime.measures import snr_db

    stems = {}
    for suffix, folder in (("onnx", "tiny-stream"), ("tflite", "tiny-stream-tflite"),
                           ("int8.tflite", "tiny-stream-int8-tflite")):
        unetsep("separate", song, "--model", stream_exported / f"drums.{suffix}", "-o", tmp_path)
        drums, _ = sf.read(tmp_path / folder / song.stem / "drums.wav", dtype="float32")
        rest, _ = sf.read(tmp_path / folder / song.stem / "no_drums.wav", dtype="float32")
        stems[suffix] = drums
        x, _ = sf.read(song, dtype="float32")
        assert drums.shape == x.shape and np.abs(drums + rest - x).max() <= 1e-6
    assert np.abs(stems["onnx"]).max() > 0
    assert np.abs(stems["tflite"] - stems["onnx"]).max() <= 1e-5
    assert snr_db(stems["onnx"], stems["int8.tflite"]) >= 3.0


def test_litert_stream_model_in_bench(stream_exported, tmp_path):
    """bench times a streaming .tflite at batch 1 and 2 (one interpreter per batch)."""
    unetsep("bench", "--model", stream_exported / "drums.int8.tflite", "--frames", 300, "--batch", 1, 2,
            "--json", tmp_path / "b.json")
    res = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["batch"] for r in res] == [1, 2] and all(r["p50_us"] > 0 for r in res)


def test_int8_litert_that_fails_its_check_is_not_shipped(stream_run, tmp_path):
    """A calibration 80 dB too quiet saturates the int8 state and activations: the export reports
    drums.int8.tflite's reason and writes nothing (no --allow-degraded)."""
    out = tmp_path / "m"
    proc = unetsep("export", stream_run, "--out", out, "--check-seconds", 6, "--calibration-gain", "1e-4",
                   check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "failed their check" in last and "drums.int8.tflite (" in last
    assert "drums.tflite (" not in last  # the float32 file is not affected by calibration
    assert not out.exists()
