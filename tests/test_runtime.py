"""The runtime on a small exported model: streaming == offline, latency, file formats, bad input."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import unetsep


@pytest.fixture(scope="module")
def model(exported):
    from unetsep.runtime.backends import load_model

    return load_model(exported / "drums.onnx")


def test_runtime_never_imports_tensorflow(exported, song, tmp_path):
    import subprocess

    code = ("import sys; from unetsep.cli import main; rc = main(['separate', sys.argv[1], '--model', "
            "sys.argv[2], '-o', sys.argv[3]]); assert 'tensorflow' not in sys.modules, 'tf imported'; "
            "sys.exit(rc)")
    subprocess.run([sys.executable, "-c", code, str(song), str(exported / "drums.onnx"),
                    str(tmp_path)], check=True, capture_output=True)


def test_streaming_equals_offline_in_random_blocks(model, exported, song, tmp_path):
    from unetsep.runtime.stream import StreamEngine

    unetsep("separate", song, "--model", exported / "drums.onnx", "-o", tmp_path)
    offline, _ = sf.read(tmp_path / "tiny" / song.stem / "drums.wav", dtype="float32")
    x, _ = sf.read(song, dtype="float32")
    engine = StreamEngine(model, channels=2, max_block=1000)
    rng = np.random.default_rng(0)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 1001))
        out.append(engine.process(x[i:i + n]))
        i += n
    y = np.concatenate(out)
    lat = engine.latency
    assert lat == 64
    assert np.abs(y[lat:] - offline[:len(y) - lat]).max() <= 1e-6
    assert np.abs(y[:lat]).max() == 0


def test_impulse_comes_out_one_frame_later(model):
    from unetsep.runtime.stream import StreamEngine

    engine = StreamEngine(model, channels=1, max_block=64)
    x = np.zeros((64 * 8, 1), np.float32)
    x[100] = 1.0  # an impulse mid-frame; the masked output is nonzero only where the input is
    y = np.concatenate([engine.process(x[i:i + 64]) for i in range(0, len(x), 64)])
    assert np.flatnonzero(np.abs(y[:, 0]) > 0).tolist() == [100 + engine.latency]


@pytest.mark.parametrize("fmt,rate,channels", [("FLAC", 44100, 2), ("OGG", 48000, 1),
                                                ("WAV", 22050, 3)])
def test_formats_rates_channels(exported, song, tmp_path, fmt, rate, channels):
    import soxr

    x, sr = sf.read(song, dtype="float32")
    x = soxr.resample(x, sr, rate)[:, [0, 1, 0][:channels]]
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, x, rate, format=fmt)
    n = sf.info(path).frames
    unetsep("separate", path, "--model", exported / "drums.onnx", "-o", tmp_path / "sep")
    for stem in ("drums", "no_drums"):
        y, r = sf.read(tmp_path / "sep" / "tiny" / "clip" / f"{stem}.wav")
        assert r == rate and y.reshape(len(y), -1).shape == (n, channels)
    d, _ = sf.read(tmp_path / "sep" / "tiny" / "clip" / "drums.wav")
    nd, _ = sf.read(tmp_path / "sep" / "tiny" / "clip" / "no_drums.wav")
    xin, _ = sf.read(path)
    # The residual is the input less the stem at the model's rate, so the two sum to the input as
    # the model heard it: the file itself at 44.1 kHz, else the file resampled there and back (the
    # streamed resampler gives whole-array soxr's samples; a swapped rate or a lost tail fails here).
    want = xin if rate == 44100 else soxr.resample(soxr.resample(xin, rate, 44100), 44100, rate)[:len(xin)]
    assert np.abs(d + nd - want).max() < 1e-3
    assert np.abs(d).max() > 0.01 and np.abs(nd).max() > 0.01  # neither stem is silence


def test_tflite_model_separates(exported, song, tmp_path):
    unetsep("separate", song, "--model", exported / "drums.tflite", "-o", tmp_path)
    assert (tmp_path / "tiny-tflite" / song.stem / "drums.wav").is_file()


def test_bad_inputs_fail_alone(exported, song, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.wav").write_text("not audio")
    sf.write(bad / "empty.wav", np.zeros((0, 2)), 44100)
    sf.write(bad / "silence.wav", np.zeros((44100, 2)), 44100)
    nan = np.full((44100, 2), 0.1, np.float32)
    nan[30000] = np.nan
    sf.write(bad / "nan.wav", nan, 44100, subtype="FLOAT")
    files = [bad / n for n in ("missing.wav", "text.wav", "empty.wav", "silence.wav", "nan.wav")]
    proc = unetsep("separate", *files, song, "--model", exported / "drums.onnx", "-o", tmp_path / "o",
                   check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 4
    for word, line in zip(("no such file", "not an audio file", "empty", "NaN"), errors):
        assert word in line, line
    # A silent file is not an error: silent stems and a warning.
    assert any("silence.wav is silent" in line and "warning" in line for line in proc.stderr.splitlines())
    assert "4 of 6 inputs failed" in proc.stderr.splitlines()[-1]
    out = tmp_path / "o" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == sorted(["silence", song.stem])  # the good ones
    assert sorted(p.name for p in (out / song.stem).iterdir()) == ["drums.wav", "no_drums.wav"]
    silent, _ = sf.read(out / "silence" / "drums.wav")
    assert silent.shape == (44100, 2) and not silent.any()


def test_bad_models(song, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"nope")
    proc = unetsep("separate", song, "--model", tmp_path / "junk.onnx", check=False)
    assert proc.returncode == 2 and "not an ONNX model" in proc.stderr
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["mix"], ["stem"])], "g",
                          [helper.make_tensor_value_info("mix", TensorProto.FLOAT, [None, 64, 1])],
                          [helper.make_tensor_value_info("stem", TensorProto.FLOAT, [None, 64, 1])])
    # IR 8 / opset 17 as exported models: onnx's newest IR can be ahead of onnxruntime's
    onnx.save(helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "nometa.onnx"))
    proc = unetsep("separate", song, "--model", tmp_path / "nometa.onnx", check=False)
    assert proc.returncode == 2 and "lacks the unetsep model metadata" in proc.stderr


def test_live_format_choice_without_audio(tmp_path, monkeypatch):
    """Which file `live` runs: a format passes only where export's report says so; a path (given
    or in UNETSEP_MODEL) runs as given and refuses --format; the CUDA provider refuses LiteRT."""
    import json

    from unetsep.runtime.backends import live_model_path, passed_check, shipped_model
    from unetsep.runtime.errors import UserError

    model = tmp_path / "drums.int8.tflite"
    model.write_bytes(b"")
    assert not passed_check(model)  # no report beside it
    rows = [{"file": "drums.int8.tflite", "written": True, "reason": "int8 SDR -0.9 dB < -0.3"}]
    (tmp_path / "report.json").write_text(json.dumps({"formats": rows}))
    assert not passed_check(model)  # written with --allow-degraded: failed
    rows[0]["reason"] = ""
    (tmp_path / "report.json").write_text(json.dumps({"formats": rows}))
    assert passed_check(model)

    onnx = shipped_model("default")
    assert live_model_path("default", "onnx") == onnx
    assert live_model_path(None, "auto", "cuda") == onnx
    assert live_model_path(str(model)) == model
    with pytest.raises(UserError, match="is a path"):
        live_model_path(str(model), "onnx")
    monkeypatch.setenv("UNETSEP_MODEL", str(model))
    assert live_model_path(None) == model
    with pytest.raises(UserError, match="UNETSEP_MODEL="):
        live_model_path(None, "int8.onnx")
    monkeypatch.setenv("UNETSEP_MODEL", "seed")
    assert live_model_path(None, "onnx") == shipped_model("seed")
    with pytest.raises(UserError, match="runs .onnx files only"):
        live_model_path("default", "int8.tflite", "cuda")


# onnxruntime-gpu 1.30's banner when its CUDA provider cannot start (seen with no GPU visible).
EP_BANNER = """*************** EP Error ***************
EP Error /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:154 std::conditional_t<THRW, void, onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*, SUCCTYPE, const char*, const char*, int) [with ERRTYPE = cudaError; bool THRW = true] CUDA failure 100: no CUDA-capable device is detected ; GPU=-1 ; hostname=vm ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_execution_provider.cc ; line=352 ; expr=cudaSetDevice(info_.device_id); 

 when using ['CUDAExecutionProvider', 'CPUExecutionProvider']
Falling back to ['CPUExecutionProvider'] and retrying.
****************************************
"""


def test_cuda_fallback_banner_becomes_one_short_cause():
    """onnxruntime prints a multi-line banner on stdout when CUDA throws while starting; the runtime
    names the CUDA error in its own one line. The first banner is the one seen on an H100 with no
    GPU visible; the second (a library that would not load) is made up in the same form."""
    from unetsep.runtime.backends import fallback_cause

    assert fallback_cause(EP_BANNER) == "CUDA failure 100: no CUDA-capable device is detected"
    lib = EP_BANNER.replace(EP_BANNER.splitlines()[1].split(" when")[0],
                            "EP Error [ONNXRuntimeError] : 1 : FAIL : libcudnn.so.9: cannot open shared object file")
    assert fallback_cause(lib) == "libcudnn.so.9: cannot open shared object file"
    assert fallback_cause("") is None and fallback_cause("separated 3 files\n") is None


def test_cuda_fallback_is_held_off_stdout_and_named(monkeypatch, capsys):
    """The banner path end to end, with onnxruntime's session made to print it and come back on the
    CPU, as onnxruntime-gpu does with no GPU visible: nothing reaches stdout, `--provider cuda` is
    refused and `auto` runs on the CPU, each in one line naming the CUDA error."""
    import onnxruntime as ort

    from unetsep.runtime import backends
    from unetsep.runtime.errors import UserError

    real = ort.InferenceSession

    def falls_back(path, so=None, providers=None, **kw):
        print(EP_BANNER)
        return real(path, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", falls_back)
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    shipped = backends.shipped_model("default")
    said = []
    with pytest.raises(UserError, match="did not start: CUDA failure 100: no CUDA-capable device"):
        backends.open_model(shipped, "cuda", say=said.append)
    model = backends.open_model(shipped, "auto", say=said.append)
    assert model.provider == "CPUExecutionProvider"
    assert said == ["unetsep: the CUDA provider did not start (CUDA failure 100: no CUDA-capable "
                    "device is detected); running on the CPU"]
    out = capsys.readouterr()
    assert out.out == "" and "EP Error" not in out.err


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_recorder_ring_wraps_drops_and_keeps_every_sample(tmp_path, suffix):
    """live --record's ring on its own: blocks of 7 samples into a 50-sample ring wrap around its
    end; a main thread that falls behind loses whole blocks, counted, never half of one; every
    block kept reaches the file sample for sample (24-bit FLAC: within one step), in order; the
    file appears only at finish, and abort leaves nothing."""
    from unetsep.runtime.recorder import Recorder

    path = tmp_path / f"take{suffix}"
    r = Recorder(path, rate=10, channels=2, seconds=5.0)  # 50 samples of ring
    rng = np.random.default_rng(0)
    blocks = [rng.uniform(-0.9, 0.9, (7, 2)).astype(np.float32) for _ in range(40)]
    kept = []
    for i, b in enumerate(blocks):
        before = r.dropped
        r.put(b)
        if r.dropped == before:
            kept.append(b)
        if i % 9 == 8:  # drained now and then: the ring fills up in between
            r.drain()
            assert not path.exists()
    assert r.dropped > 0 and len(kept) + r.dropped == len(blocks)
    r.put(blocks[0])
    kept.append(blocks[0])
    r.finish()
    got, rate = sf.read(path, dtype="float32")
    assert rate == 10 and got.shape == (7 * len(kept), 2)
    step = 2 ** -23 if suffix == ".flac" else 0
    assert np.abs(got - np.concatenate(kept)).max() <= step
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    r2 = Recorder(tmp_path / f"gone{suffix}", rate=10, channels=2)
    r2.put(blocks[1])
    r2.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_recorder_holds_ctrl_c_until_its_write_is_counted():
    """A Ctrl-C (or SIGTERM) that lands inside soundfile's write would skip the count of what was
    written, and the next drain would write it again: it is held to the end of the write, then
    raised, and the handlers are back as they were."""
    import os
    import signal
    import time

    from unetsep.runtime.recorder import _signals_after

    # Python's own Ctrl-C handler, as in a terminal (a runner started in the background, as CI's
    # can be, inherits SIGINT ignored)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        done = []
        with pytest.raises(KeyboardInterrupt):
            with _signals_after():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # without the hold, KeyboardInterrupt would come here
                done.append("counted")
        assert done == ["counted"]
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGINT, outer)
