"""The streaming preset and contract v2: causal, stateful, one graph for hops and files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import unetsep

FRAME = 64


def random_stream_onnx(tmp_path, lookahead: int = 0, seed: int = 0):
    """A tiny-stream Keras model with random weights (and non-trivial BatchNorm statistics) as a
    lean ONNX file; returns (Keras model, loaded OrtModel)."""
    pytest.importorskip("keras")
    import onnx

    from unetsep.export.convert import model_info
    from unetsep.export.lean_stream import build_lean_stream_onnx
    from unetsep.runtime.backends import load_model
    from unetsep.train.model import build_unet, preset

    import keras

    keras.utils.set_random_seed(seed)
    cfg = preset("tiny-stream", lookahead=lookahead)
    model = build_unet(cfg)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.endswith("_bn"):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 2, v.shape)])
    proto, _ = build_lean_stream_onnx(model, cfg, model_info(cfg))
    path = tmp_path / f"drums-la{lookahead}.onnx"
    onnx.save(proto, str(path))
    return model, load_model(path)


def noise(seconds: float, channels: int = 2, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((int(seconds * 44100) // FRAME * FRAME, channels)) * 0.1).astype(np.float32)


def whole(model, audio: np.ndarray) -> np.ndarray:
    """One call of the graph over the whole signal (T = all hops), zero initial state."""
    info = model.info
    states = {s.input: np.zeros((audio.shape[1], *s.shape), np.float32) for s in info.states}
    y, _ = model.run_stateful(np.ascontiguousarray(audio.T[..., None]), states)
    return y[:, :, 0].T


@pytest.fixture(scope="module")
def stream_model(stream_exported):
    from unetsep.runtime.backends import load_model

    return load_model(stream_exported / "drums.onnx")


def test_stream_run_logs_the_all_zero_estimate(stream_run):
    """Every epoch's losses stand next to the loss of an all-zero estimate on the same data."""
    import csv

    rows = list(csv.DictReader(open(stream_run / "history.csv")))
    assert len(rows) == 2
    for r in rows:
        zero, val_zero = float(r["zero_estimate"]), float(r["val_zero_estimate"])
        assert np.isfinite([float(r["loss"]), float(r["val_loss"]), zero, val_zero]).all()
        assert zero > 0 and val_zero > 0
    cfg = json.loads((stream_run / "config.json").read_text())
    assert cfg["streaming"] and cfg["extra"]["augment"] is True
    assert (stream_run / "best.keras").is_file()


def test_stream_model_declares_contract_v2(stream_model):
    info = stream_model.info
    assert info.version == 2 and info.streaming and info.lookahead == 0
    assert info.frame == FRAME and info.context == FRAME and info.latency == FRAME
    names = [s.name for s in info.states]
    assert "memory" in names and len(names) == len(set(names)) == 13  # 6 down, GRU, 5 up, mask
    assert all(isinstance(n, int) for s in info.states for n in s.shape)


def test_hop_by_hop_equals_whole_sequence_and_keras(stream_run, stream_model):
    """30 s streamed one hop per call (T = 1, state carried) == one call over all 30 s == Keras."""
    from unetsep.export.convert import load_run
    from unetsep.export.pipeline import keras_estimate
    from unetsep.runtime.stream import stream_blocks

    x = noise(30.0)
    full = whole(stream_model, x)
    hops = stream_blocks(stream_model, x, block=FRAME)
    assert np.abs(hops - full).max() <= 1e-5
    keras_model, cfg = load_run(stream_run)
    assert np.abs(keras_estimate(keras_model, cfg, x[:44100 * 3]) - full[:44100 * 3]).max() <= 1e-4


@pytest.mark.parametrize("sizes", [[1], [63], [65], [4096], "random"])
def test_any_block_sizes_equal_the_file_path(stream_model, sizes):
    from unetsep.runtime.separate import estimate
    from unetsep.runtime.stream import StreamEngine

    x = noise(4.0)
    ref = estimate(stream_model, x)  # long calls, as `separate` runs
    engine = StreamEngine(stream_model, channels=2, max_block=4096)
    rng = np.random.default_rng(0)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 4097)) if sizes == "random" else sizes[0]
        out.append(engine.process(x[i:i + n]))
        i += n
    y = np.concatenate(out)
    lat = engine.latency
    assert np.abs(y[:lat]).max() == 0
    assert np.abs(y[lat:] - ref[:len(y) - lat]).max() <= 1e-5


@pytest.mark.parametrize("lookahead", [0, 64, 192])
def test_causal_and_delay_is_frame_plus_lookahead(tmp_path, lookahead):
    """The estimate of input sample s uses input up to the end of s's hop plus the lookahead, no
    further: changing the input from sample t on changes the engine's output (the estimate of s
    comes out at s + latency) from the hop holding t - lookahead on, not before. And an impulse
    comes out exactly frame + lookahead samples later."""
    from unetsep.runtime.stream import StreamEngine, stream_blocks

    _, model = random_stream_onnx(tmp_path, lookahead)
    assert model.info.latency == FRAME + lookahead
    engine = StreamEngine(model, channels=1, max_block=FRAME)
    x = noise(0.5, channels=1)
    run = lambda a: np.concatenate([engine.process(a[i:i + FRAME])  # noqa: E731
                                    for i in range(0, len(a), FRAME)])
    y = run(x)
    # One hop per call (T = 1) == one long call (the file path, which takes the delay out): the
    # look-ahead's delay state carried across calls as within one.
    lat = model.info.latency
    assert np.abs(y).max() > 1e-3 and np.abs(y[lat:] - stream_blocks(model, x)[:len(y) - lat]).max() <= 1e-5
    for t in (1000, 1000 + 37, 5000 + 63):
        x2 = x.copy()
        x2[t:] += 0.5
        engine.reset()
        y2 = run(x2)
        changed = np.flatnonzero(np.abs(y2 - y)[:, 0] > 0)
        first_estimate = (t - lookahead) // FRAME * FRAME  # the first sample allowed to hear t
        assert changed.min() >= first_estimate + model.info.latency
        assert changed.min() <= t + model.info.latency  # the estimate of t itself changed
        assert changed.min() > t  # the engine's output never answers input it has not had
    engine.reset()
    imp = np.zeros((FRAME * 20, 1), np.float32)
    imp[300] = 1.0  # the masked output is nonzero only where the (delayed) input is
    out = run(imp)
    assert np.flatnonzero(np.abs(out[:, 0]) > 0).tolist() == [300 + FRAME + lookahead]
    # the file path takes the delay out again
    aligned = stream_blocks(model, imp)
    assert np.flatnonzero(np.abs(aligned[:, 0]) > 0).tolist() == [300]


def test_bottleneck_step_hears_its_whole_hop(tmp_path):
    """The alignment pitfall: the deepest step of hop n must depend on the last sample of hop n
    (a plain causal stride-2 window would end at its first), and not on hop n + 1."""
    keras_model, _ = random_stream_onnx(tmp_path)
    import keras

    enc = keras.Model(keras_model.input, keras_model.get_layer("enc6_lrelu").output)
    x = noise(0.1, channels=1)[None, :, :1].reshape(1, -1, 1)
    base = np.asarray(enc(x))
    n = 3
    for sample, changes_hop_n in ((FRAME * n + FRAME - 1, True), (FRAME * (n + 1), False)):
        x2 = x.copy()
        x2[0, sample, 0] += 1.0
        d = np.abs(np.asarray(enc(x2)) - base)[0].max(axis=1)  # per hop
        assert d[:n].max() == 0
        assert (d[n] > 0) == changes_hop_n


def test_device_bound_runner_matches_host_arrays(stream_model):
    """The path CUDA takes (x, y and both state sets in the device's own memory, bound once,
    copied in and out per call), run here with onnxruntime's CPU memory: the same output as the
    host-array binding for calls of 1 and 3 hops in any order, the same state after them, and
    reset and load_state reach the device copies."""
    from unetsep.runtime.stream import StatefulRunner

    x = noise(0.1)
    host = StatefulRunner(stream_model, channels=2, hops=[1, 3])
    dev = StatefulRunner(stream_model, channels=2, hops=[1, 3], device="cpu")
    assert dev.device == "cpu" and host.device is None
    assert stream_model.graph_session() is None  # CUDA graphs only where the session is on CUDA

    def go(runner):
        out, i = [], 0
        for k, hops in enumerate([1, 3, 1, 1, 3] * 40):
            if i + hops * FRAME > len(x):
                break
            runner.x[hops][:, :, 0] = x[i:i + hops * FRAME].T
            out.append(runner(hops)[:, :, 0].copy())
            i += hops * FRAME
        return np.concatenate(out, axis=1)

    a, b = go(host), go(dev)
    assert np.abs(a).max() > 0 and np.abs(a - b).max() <= 1e-6
    for k, v in host.state.items():
        assert np.abs(dev.state[k] - v).max() <= 1e-6, k
    dev.reset()
    assert all(not v.any() for v in dev.state.values())
    assert np.abs(go(dev) - a).max() <= 1e-6  # from silence again: the same output
    rng = np.random.default_rng(2)
    start = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.3 for k, v in host.state.items()}
    host.reset(); host.load_state(start)
    dev.reset(); dev.load_state(start)
    c = go(host)
    assert np.abs(go(dev) - c).max() <= 1e-6 and np.abs(c - a).max() > 1e-3


def test_graph_ids_never_shared(stream_model):
    """CUDA graphs replay the addresses they were captured with, so every (runner, hop count,
    parity) must get its own gpu_graph_id from the model, calls longer than the captured ones
    run uncaptured (-1), and the capture runs in the constructor leave no trace in the output.
    (onnxruntime's CPU provider ignores the ids: the CUDA capture itself needs a GPU.)"""
    from unetsep.runtime.stream import StatefulRunner

    x = noise(0.05)
    host = StatefulRunner(stream_model, channels=2, hops=[1, 2])
    runners = [StatefulRunner(stream_model, channels=c, hops=[1, 2], device="cpu",
                              graphs=stream_model.session) for c in (2, 1)]
    ids = [i for r in runners for i in r.graph_ids.values()]
    assert len(ids) == 8 and min(ids) >= 1 and len(set(ids)) == 8
    runners[0].prepare(20)  # a file-mode call: no graph
    assert runners[0].graph_ids[20, 0] == runners[0].graph_ids[20, 1] == -1
    assert all(not v.any() for v in runners[0].state.values())  # capture ran on silence, reset after
    out = {}
    for name, r in (("host", host), ("graphs", runners[0])):
        ys = []
        for i in range(0, len(x) - 2 * FRAME + 1, 2 * FRAME):
            r.x[2][:, :, 0] = x[i:i + 2 * FRAME].T
            ys.append(r(2)[:, :, 0].copy())
        out[name] = np.concatenate(ys, axis=1)
    assert np.abs(out["host"]).max() > 0 and np.abs(out["host"] - out["graphs"]).max() <= 1e-6


class FailingLater:
    """A real session whose IOBinding runs fail after the first `ok` (on a GPU: a CUDA error
    inside onnxruntime part way through the capture)."""

    def __init__(self, session, ok: int):
        self.session, self.ok = session, ok

    def io_binding(self):
        return self.session.io_binding()

    def run_with_iobinding(self, binding, options=None):
        if self.ok <= 0:
            raise RuntimeError("CUDA failure 700: an illegal memory access was encountered")
        self.ok -= 1
        return self.session.run_with_iobinding(binding, options)


def test_failed_graph_capture_runs_without_graphs(stream_model, capsys):
    """A capture that fails part way costs the graphs, not the stream: one line on stderr, then
    the plain session on the same device-bound path, from silence (the runs before the failure
    moved the state), output unchanged."""
    from unetsep.runtime.stream import StatefulRunner

    x = noise(0.02)
    host = StatefulRunner(stream_model, channels=2, hops=[1])
    r = StatefulRunner(stream_model, channels=2, hops=[1], device="cpu",
                       graphs=FailingLater(stream_model.session, ok=4))
    assert r.captured == [] and r.graph_ids == {} and r._session is stream_model.session
    assert all(not v.any() for v in r.state.values())
    err = capsys.readouterr().err
    assert "CUDA graph capture failed (CUDA failure 700" in err and err.count("\n") == 1
    for i in range(0, len(x) - FRAME + 1, FRAME):
        host.x[1][:, :, 0] = r.x[1][:, :, 0] = x[i:i + FRAME].T
        assert np.abs(host(1) - r(1)).max() <= 1e-6


def test_live_blocks_capture_only_the_shapes_they_bring(stream_model):
    """A live engine's blocks of B samples make B // 64 or one more hops ready, call after call:
    only those get graphs; file-mode engines (blocks over 4096 samples) none; a runner told to
    capture some hop counts leaves the others uncaptured (-1)."""
    from unetsep.runtime.stream import StatefulRunner, live_shapes

    assert live_shapes(64, FRAME) == [1] and live_shapes(32, FRAME) == [1]
    assert live_shapes(100, FRAME) == [1, 2] and live_shapes(4096, FRAME) == [64]
    assert live_shapes(131072, FRAME) == []
    r = StatefulRunner(stream_model, channels=1, hops=[1, 2, 3], device="cpu",
                       graphs=stream_model.session, capture=[2])
    assert r.captured == [2] and r.graph_ids[2, 0] >= 1 and r.graph_ids[2, 1] >= 1
    assert r.graph_ids[1, 0] == r.graph_ids[1, 1] == r.graph_ids[3, 0] == -1


def test_frame_runner_device_path_and_graph_ids(capsys):
    """The version-1 runner's CUDA path (x and y in the device's own memory, graph ids from the
    model), on onnxruntime's CPU device: the same frames as the host binding, ids never shared
    between runners, and a failing capture falls back with one line."""
    from unetsep.runtime.backends import load_model, shipped_model
    from unetsep.runtime.stream import Runner

    seed = load_model(shipped_model("seed"))
    rng = np.random.default_rng(3)
    host = Runner(seed, [2, 4])
    a = Runner(seed, [2, 4], device="cpu", graphs=seed.session)
    b = Runner(seed, [2, 4], device="cpu", graphs=seed.session)
    ids = [*a.graph_ids.values(), *b.graph_ids.values()]
    assert len(ids) == 4 and min(ids) >= 1 and len(set(ids)) == 4

    c = Runner(seed, [2, 4], device="cpu", graphs=FailingLater(seed.session, ok=2))
    assert c.graph_ids == {} and c._session is seed.session and "CUDA graph capture failed (CUDA failure 700" in capsys.readouterr().err
    for batch in (2, 4, 2):
        x = (rng.standard_normal((batch, FRAME, 1)) * 0.2).astype(np.float32)
        host.x[batch][...] = x
        want = host(batch).copy()
        assert np.abs(want).max() > 0
        for r in (a, b, c):
            r.x[batch][...] = x
            assert np.abs(r(batch) - want).max() <= 1e-6


def test_reset_and_initial_state(stream_model):
    from unetsep.runtime.stream import StatefulRunner

    x = noise(0.2)
    runner = StatefulRunner(stream_model, channels=2, hops=[1])

    def go():
        out = []
        for i in range(0, len(x), FRAME):
            runner.x[1][:, :, 0] = x[i:i + FRAME].T
            out.append(runner(1)[:, :, 0].copy())
        return np.concatenate(out, axis=1)

    a = go()
    runner.reset()
    assert np.array_equal(go(), a)
    # A non-zero initial state is used as given: the runner equals one explicit call from it.
    rng = np.random.default_rng(5)
    runner.reset()
    start = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.3 for k, v in runner.state.items()}
    runner.load_state(start)
    b = go()
    y, _ = stream_model.run_stateful(np.ascontiguousarray(x.T[..., None]), start)
    assert np.abs(b - y[:, :, 0]).max() <= 1e-5
    assert np.abs(b - a).max() > 0


def test_model_whose_metadata_lies_about_a_state_is_refused(stream_exported, song, tmp_path):
    import onnx

    proto = onnx.load(str(stream_exported / "drums.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    states = json.loads(meta["states"])
    states[0]["shape"] = [states[0]["shape"][0] + 1, states[0]["shape"][1]]
    for p in proto.metadata_props:
        if p.key == "states":
            p.value = json.dumps(states)
    bad = tmp_path / "lying.onnx"
    onnx.save(proto, str(bad))
    r = unetsep("separate", song, "--model", bad, "--provider", "cpu", "-o", tmp_path / "out", check=False)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "state_enc1_conv" in lines[0] and "re-export" in lines[0], r.stderr


def test_contract_fields_parse_by_type():
    from dataclasses import fields

    from unetsep.runtime import contract
    from unetsep.runtime.contract import ModelInfo, StateSpec

    assert {f.name for f in fields(ModelInfo)} == set(contract._CONVERTERS)
    info = ModelInfo(version=2, lookahead=128, preset="stream",
                     states=(StateSpec("a", "state_a", "next_a", (3, 4)),))
    back = ModelInfo.from_metadata(info.to_metadata())
    assert back == info and isinstance(back.lookahead, int) and isinstance(back.states[0].shape[0], int)
    for bad in ({"frame": "0"}, {"context": "32"}, {"sample_rate": "0"}, {"lookahead": "10"},
                {"version": "x"}):
        with pytest.raises(ValueError):
            ModelInfo.from_metadata({**ModelInfo().to_metadata(), **bad})


def test_separate_with_a_stream_model_is_aligned(stream_model, stream_exported, song, tmp_path):
    from unetsep.runtime.separate import estimate

    unetsep("separate", song, "--model", stream_exported / "drums.onnx", "-o", tmp_path)
    drums, _ = sf.read(tmp_path / "tiny-stream" / song.stem / "drums.wav", dtype="float32")
    rest, _ = sf.read(tmp_path / "tiny-stream" / song.stem / "no_drums.wav", dtype="float32")
    x, _ = sf.read(song, dtype="float32")
    assert drums.shape == x.shape
    assert np.abs(drums + rest - x).max() <= 1e-6
    assert np.abs(drums - estimate(stream_model, x)).max() <= 1e-5


def test_stream_model_in_bench_and_evaluate(stream_exported, dataset, tmp_path):
    unetsep("bench", "--model", stream_exported / "drums.onnx", "--frames", 300, "--batch", 1, 2,
            "--json", tmp_path / "b.json")
    res = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["batch"] for r in res] == [1, 2] and all(r["p50_us"] > 0 for r in res)
    from unetsep.train.render import heldout_tracks

    r = unetsep("evaluate", "--data", dataset, "--model", stream_exported / "drums.onnx", "--json",
                tmp_path / "e.json", "--seconds", 2)
    e = json.loads((tmp_path / "e.json").read_text())
    assert np.isfinite(e["median_sdr"])
    # in-kit and held-out-kit songs are reported apart, as the dataset's manifest splits them
    held = heldout_tracks(dataset)
    want = {("held-out" if held[t["name"]] else "in-kit") for t in e["tracks"]}
    assert set(e["groups"]) == want and all(f"{g} (" in r.stdout for g in want)


def test_soak_output_and_state_stay_bounded(stream_model):
    """Streamed hop by hop for 60 s (a shorter soak than the benchmark's), the output level and
    the carried state's norm neither die away nor grow."""
    from unetsep.runtime.stream import StatefulRunner

    rng = np.random.default_rng(2)
    hops = 60 * 44100 // FRAME
    runner = StatefulRunner(stream_model, channels=1, hops=[1])
    out_rms, state_norm = np.empty(hops), np.empty(hops)
    # a steady, music-like input: noise bursts every ~0.5 s over a quieter bed
    for n in range(hops):
        x = rng.standard_normal(FRAME).astype(np.float32) * (0.3 if n % 345 < 30 else 0.05)
        runner.x[1][0, :, 0] = x
        y = runner(1)
        out_rms[n] = np.sqrt(np.mean(y ** 2))
        state_norm[n] = np.sqrt(sum(float((v ** 2).sum()) for v in runner.state.values()))
    second = 44100 // FRAME
    early, late = out_rms[second:10 * second].mean(), out_rms[-9 * second:].mean()
    assert late > 0.5 * early and late < 2 * early
    s_early, s_late = state_norm[second:10 * second].mean(), state_norm[-9 * second:].mean()
    assert s_late < 2 * s_early and s_late > 0.5 * s_early
