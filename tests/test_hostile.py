"""A second hostile test of the CLI: damaged datasets, models whose metadata lies, a model that
fails inside the audio callback, absurd resource flags, SIGTERM, and misleading messages.

Each case ends with exit status 2 (143 for SIGTERM) and one line naming the problem and the fix,
and leaves nothing behind. The datasets and models are made here from the shipped model and a few
seconds of noise, so the module needs no training run; cheap cases run in-process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ENV
from test_reliability import one_line_error, run_main, temporaries

RATE = 44100
STEMS = ("mixture", "drums", "bass", "other", "vocals")


def write_dataset(root: Path, seconds: float = 2.0) -> Path:
    """A valid MUSDB18-HQ-layout folder: tracks a, b (train, b for validation) and c (test) of
    stereo noise, every stem the same length, and a setup.yaml naming the validation track."""
    rng = np.random.default_rng(0)
    for subset, name in (("train", "a"), ("train", "b"), ("test", "c")):
        track = root / subset / name
        track.mkdir(parents=True)
        for stem in STEMS:
            sf.write(track / f"{stem}.wav", 0.1 * rng.standard_normal((int(seconds * RATE), 2)), RATE)
    from unetsep.train.render import _setup_yaml

    (root / "setup.yaml").write_text(_setup_yaml(["b"]))
    return root


@pytest.fixture
def data(tmp_path) -> Path:
    return write_dataset(tmp_path / "d")


@pytest.fixture(scope="module")
def shipped() -> Path:
    from unetsep.runtime.backends import shipped_model

    return shipped_model("default")


def with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of an ONNX model with some metadata fields rewritten (the graph untouched)."""
    import onnx

    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key in changes:
            p.value = changes[p.key]
    onnx.save(m, str(dst))
    return dst


# --- damaged datasets: named track and file, before TensorFlow, no run folder ---

def _corrupt(path: Path) -> None:
    path.write_bytes(b"not a wav file at all")


def _empty(path: Path) -> None:
    sf.write(path, np.zeros((0, 2)), RATE)


def _short(path: Path) -> None:
    sf.write(path, np.zeros((1000, 2)), RATE)


def _mono(path: Path) -> None:
    sf.write(path, np.zeros((2 * RATE,)), RATE)


@pytest.mark.parametrize("damage,file,says", [
    (_corrupt, "mixture.wav", "not a readable wav"), (_corrupt, "drums.wav", "not a readable wav"),
    (_empty, "mixture.wav", "empty"), (_short, "drums.wav", "must match its mixture"),
    (_mono, "mixture.wav", "mono"),
])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_damaged_track_is_named_in_one_line(data, tmp_path, damage, file, says, command):
    subset, name = ("test", "c") if command == "evaluate" else ("train", "a")
    damage(data / subset / name / file)
    argv = (["train", "--data", data, "--out", tmp_path / "run"] if command == "train" else
            ["evaluate", "--data", data, "--tracks", 1, "--seconds", 1])
    line = one_line_error(*run_main(*argv), f"{name}/{file}", says)
    assert "remove the track" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit,says", [
    (lambda s: "validation_tracks: [\n", "does not parse"),
    (lambda s: "validation_tracks:\n- b\n", "lacks sources, targets"),
    (lambda s: s.split("validation_tracks:")[0] + "validation_tracks:\n", "validation_tracks is a NoneType"),
    (lambda s: s.replace("  mixture: 0\n", ""), "stem_ids lacks mixture"),
])
def test_a_broken_setup_yaml_is_named(data, tmp_path, edit, says):
    (data / "setup.yaml").write_text(edit((data / "setup.yaml").read_text()))
    one_line_error(*run_main("train", "--data", data, "--out", tmp_path / "run"), "setup.yaml", says)
    assert not (tmp_path / "run").exists()


def test_damaged_data_fails_train_without_importing_tensorflow(data, tmp_path):
    """In a fresh process: the check runs before the import that takes seconds."""
    _corrupt(data / "train" / "a" / "drums.wav")
    code = ("import sys; from unetsep.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--data", str(data), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=ENV, timeout=120)
    one_line_error(proc.returncode, proc.stderr, "drums.wav")


def test_evaluate_checks_the_target_and_takes_one_second(data, shipped, tmp_path):
    one_line_error(*run_main("evaluate", "--data", data, "--model", shipped, "--target", "bass"),
                   "separates drums, not bass", "--target drums")
    # 1 s is 689.06 frames of 64: rounded up to whole frames, not refused as too short.
    code, err = run_main("evaluate", "--data", data, "--model", shipped, "--tracks", 1, "--seconds", 1,
                         "--json", tmp_path / "e.json")
    assert code == 0, err
    assert np.isfinite(json.loads((tmp_path / "e.json").read_text())["median_sdr"])


# --- models whose metadata lies about their graph ---

@pytest.mark.parametrize("changes,says", [
    ({"frame": "7", "context": "7"}, "does not run on 1 stream(s) of one frame"),
    ({"sample_rate": "1000000000"}, "outside 4000-768000 Hz"),
    ({"sample_rate": "1"}, "outside 4000-768000 Hz"),
    ({"target": "../../evil"}, "not a plain stem name"),
    ({"target": ""}, "not a plain stem name"),
])
def test_metadata_the_model_cannot_keep_is_refused_at_load(shipped, tmp_path, changes, says):
    model = with_metadata(shipped, tmp_path / "m.onnx", **changes)
    sf.write(tmp_path / "x.wav", np.zeros((RATE, 2)), RATE)
    for argv in (["separate", tmp_path / "x.wav", "-o", tmp_path / "out"],
                 ["bench", "--frames", 10, "--batch", 1]):
        one_line_error(*run_main(*argv, "--model", model), "m.onnx", says, "re-export")
    assert not (tmp_path / "out").exists()


def test_a_fixed_batch_axis_is_refused_at_load(shipped, tmp_path):
    """A graph whose batch axis is fixed at 1 runs mono and failed stereo with a traceback."""
    import onnx

    m = onnx.load(str(shipped))
    for t in [*m.graph.input, *m.graph.output]:
        t.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(tmp_path / "b1.onnx"))
    line = one_line_error(*run_main("bench", "--model", tmp_path / "b1.onnx", "--frames", 10),
                          "does not run on 2 stream(s) of one frame", "re-export")
    assert "Expected: 1" in line or "Got: 2" in line, line  # onnxruntime's reason survives


def test_cause_of_keeps_onnxruntimes_reason():
    from unetsep.runtime.errors import cause_of

    e = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: "
                     "mix for the following indices\n index: 1 Got: 64 Expected: 128\n Please fix "
                     "either the inputs/outputs or the model.")
    assert cause_of(e).startswith("Got invalid dimensions for input: mix for the following indices "
                                  "index: 1 Got: 64 Expected: 128")
    assert cause_of(RuntimeError("")) == "RuntimeError" and len(cause_of(RuntimeError("x" * 999))) == 160


def test_litert_metadata_that_is_not_an_object(tmp_path):
    from unetsep.runtime.backends import litert_available, shipped_model

    if not litert_available():
        pytest.skip("LiteRT is not installed (the litert extra)")
    src = shipped_model("default").with_name("drums.int8.tflite")
    shutil.copy(src, tmp_path / "x.tflite")
    (tmp_path / "x.json").write_text("[1, 2]")
    one_line_error(*run_main("bench", "--model", tmp_path / "x.tflite", "--frames", 10),
                   "x.json holds a JSON list")


def test_live_reports_a_model_that_fails_in_the_callback(jackd, shipped, tmp_path):
    """A fault injected into the engine's per-block call, through a real PortAudio stream on the
    JACK dummy server: the run stops, says so in one line and exits 2, and writes no summary that
    would read as a clean run (sounddevice alone prints the traceback and goes on)."""
    script = ("import sys\n"
              "from unetsep.runtime import stream\n"
              "def fail(self, *a, **k):\n"
              "    raise RuntimeError('injected fault')\n"
              "stream.StreamEngine.process = fail\n"
              "from unetsep.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, "live", "--model", str(shipped), "--seconds", "20",
                           "--json", str(tmp_path / "r.json"), "--record", str(tmp_path / "rec.wav")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    one_line_error(proc.returncode, proc.stderr, "failed in the audio callback", "injected fault")
    assert not (tmp_path / "r.json").exists()
    assert list(tmp_path.iterdir()) == []  # nothing was played: no recording, no temporary
    assert time.perf_counter() - t < 15  # stopped at the fault, not after its 20 s


# --- flags that would hang or exhaust the machine ---

@pytest.mark.parametrize("argv,flag", [
    (["separate", "x.wav", "--threads", "100000"], "--threads"),
    (["bench", "--batch", "100000000"], "--batch"), (["bench", "--threads", "999"], "--threads"),
    (["bench", "--frames", "1000000000000"], "--frames"), (["live", "--channels", "100000"], "--channels"),
    (["data", "--out", "d", "--songs", "2"], "--songs"), (["demo", "--seconds", "0.01"], "--seconds"),
])
def test_absurd_values_are_refused_at_the_parser(argv, flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(*run_main(*argv), flag)
    assert list(tmp_path.iterdir()) == []


def test_live_blocksize_is_bounded(shipped):
    one_line_error(*run_main("live", "--model", shipped, "--blocksize", 1048576), "--blocksize",
                   "longer than 4096 samples")


# --- SIGTERM cleans up as Ctrl-C does ---

def test_sigterm_during_separate_leaves_nothing(shipped, tmp_path):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "long.wav", 0.1 * rng.standard_normal((240 * RATE, 2)).astype(np.float32), RATE)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "unetsep.cli", "separate", str(tmp_path / "long.wav"),
                             "--model", str(shipped), "-o", str(out)], env=ENV, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 90
    while not temporaries(tmp_path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    # Frozen the moment a temporary shows, so that a busy machine cannot let it finish writing
    # (and exit 0) between this check and the signal; SIGTERM is then handled on SIGCONT.
    proc.send_signal(signal.SIGSTOP)
    assert temporaries(tmp_path), "separate wrote no temporaries to interrupt"
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err and "Traceback" not in err, err
    assert temporaries(tmp_path) == [] and not list(out.rglob("*.wav")), list(out.rglob("*"))


# --- messages that named the wrong problem ---

def test_messages_name_the_real_problem(shipped, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a regular file")
    sf.write(tmp_path / "x.wav", np.zeros((RATE, 2)), RATE)
    one_line_error(*run_main("separate", "x.wav", "--model", shipped.parent), "is a folder",
                   str(shipped.parent / "drums.onnx"))
    one_line_error(*run_main("separate", "/dev/null", "--model", shipped), "not a regular file")
    one_line_error(*run_main("export", shipped.parent), "exported model folder", "model.keras")
    for argv in (["train", "--data", data, "--out", "afile/run"], ["export", "run", "--out", "afile/x"],
                 ["data", "--out", "afile"], ["demo", "-o", "afile"], ["demo", "-o", "afile/sub"]):
        one_line_error(*run_main(*argv), "afile is a file, not a folder")
    one_line_error(*run_main("train", "--data", "x.wav"), "is a file, not a folder")
    (tmp_path / "notes.sf2").write_text("not a soundfont")
    for extra, says in ((["--soundfont", "notes.sf2"], "not a SoundFont"),
                        (["--workers", "0"], "--workers 0 must be at least 1")):
        one_line_error(*run_main("data", "--out", "new", "--songs", 3, "--seconds", 1, *extra), says)
        assert not (tmp_path / "new").exists()


def test_sigterm_stops_live_with_its_summary(jackd, shipped, tmp_path):
    """SIGTERM ends live as Ctrl-C does: the summary, and --record's file complete up to the stop
    (every block played, as 24-bit FLAC for a .flac name), no temporary left."""
    proc = subprocess.Popen([sys.executable, "-m", "unetsep.cli", "live", "--model", str(shipped),
                             "--seconds", "60", "--json", str(tmp_path / "r.json"), "--record",
                             str(tmp_path / "rec.flac")], env=ENV, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # start-up, then a few seconds of audio
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stopped_by"] == "sigterm" and report["callbacks"] > 0, report
    info = sf.info(str(tmp_path / "rec.flac"))
    assert (info.format, info.subtype, info.channels) == ("FLAC", "PCM_24", 2)
    assert info.frames == report["callbacks"] * 64 and report["record_dropped_blocks"] == 0
    assert "recorded" in err and sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "rec.flac"]


def test_sigterm_to_data_and_its_workers_is_quiet(tmp_path):
    """systemd and `kill -- -PGID` signal the whole group: the rendering workers end without a
    traceback each, and no half-rendered song is left where a finished one would be."""
    import os

    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "unetsep.cli", "data", "--out", str(out), "--songs", "8",
                             "--seconds", "20", "--workers", "2"], env=ENV, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 60
    while not (out / ".staging").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # the workers are gone too
        os.killpg(proc.pid, 0)
    for track in [*out.glob("train/*"), *out.glob("test/*")]:  # finished tracks only
        assert {p.name for p in track.iterdir()} >= {"mixture.wav", "drums.wav"}, track


def test_names_and_paths_of_models_and_outputs(shipped, tmp_path, monkeypatch):
    """A third hostile round: a file named like a shipped model in the current folder, a bad
    $UNETSEP_MODEL, --plot of an unknown type, --json through a symlink, an input named ..wav and
    one whose name is not UTF-8."""
    from unetsep.runtime.backends import resolve_model, shipped_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text("notes")
    assert resolve_model("default") == shipped_model("default")  # the name wins over the file
    assert resolve_model("./default") == Path("default")  # a path says it is one
    monkeypatch.setenv("UNETSEP_MODEL", "nosuch")
    one_line_error(*run_main("separate", "x.wav"), "UNETSEP_MODEL=nosuch", "unset it")
    monkeypatch.setenv("UNETSEP_MODEL", str(tmp_path / "none.onnx"))
    one_line_error(*run_main("bench", "--frames", 5, "--batch", 1), "UNETSEP_MODEL=", "no such file")
    monkeypatch.delenv("UNETSEP_MODEL")
    for plot in ("b.xyz", "bplot"):  # refused before any timing
        one_line_error(*run_main("bench", "-n", shipped, "--frames", 5, "--plot", plot), "--plot", ".png")
    (tmp_path / "target.json").write_text("{}")
    (tmp_path / "link.json").symlink_to("target.json")
    code, err = run_main("bench", "-n", shipped, "--frames", 5, "--batch", 1, "--json", "link.json",
                         "--plot", "b.svg")
    assert code == 0, err
    assert (tmp_path / "link.json").is_symlink()  # its target was written, the link kept
    assert json.loads((tmp_path / "target.json").read_text())["results"]
    assert (tmp_path / "b.svg").read_text().lstrip().startswith("<?xml")
    # /dev/stdout redirected by the shell to a file: written through, nothing before or after lost
    script = ("print('before'); from unetsep.runtime.files import write_text_atomic; "
              "write_text_atomic('/dev/stdout', 'JSON\\n'); print('after')")
    (tmp_path / "stdout.json").symlink_to("/dev/stdout")
    for name in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", str(tmp_path / "stdout.json")):
        (tmp_path / "o.txt").write_text("first\n")
        with open(tmp_path / "o.txt", "a") as out:
            subprocess.run([sys.executable, "-c", script.replace("/dev/stdout", name)], stdout=out,
                           check=True, env=ENV)
        assert (tmp_path / "o.txt").read_text() == "first\nbefore\nJSON\nafter\n", name
    clip = 0.1 * np.random.default_rng(0).standard_normal((RATE // 4, 2))
    names = ["..wav", "...wav", b"bad\xff.wav".decode(errors="surrogateescape")]
    for name in names:
        sf.write(tmp_path / "clip.wav", clip, RATE)
        (tmp_path / "clip.wav").rename(tmp_path / name)
    code, err = run_main("separate", "-n", shipped, "-o", "out", *names)
    assert code == 0, err
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.wav"))
    assert written == sorted(f"default/{d}/{s}.wav" for d in ("_", "__", names[2][:-4])
                             for s in ("drums", "no_drums")), written


def test_failed_starts_leave_no_run_folder_and_made_folders_are_readable(data, tmp_path,
                                                                          monkeypatch):
    import tempfile

    from unetsep.runtime.files import as_public_folder, clear_stale_temps

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a keras model")
    for init in ("nosuch", "afile"):  # one found missing at once, one only when loaded
        one_line_error(*run_main("train", "--data", data, "--out", "run", "--init", init,
                                 "--epochs", 1, "--steps", 1), "--init")
        assert not (tmp_path / "run").exists()
    one_line_error(*run_main("train", "--data", data, "--out", "run", "--preset", "stream",
                             "--lookahead", 30), "lookahead 30")
    assert not (tmp_path / "run").exists()
    # mkdtemp makes 0700 folders; what data and export rename into place follows the umask
    old = os.umask(0o022)
    try:
        assert as_public_folder(Path(tempfile.mkdtemp(dir=tmp_path))).stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)
    # a temporary of a recording killed with SIGKILL: its process is gone, so it goes
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        (tmp_path / f".take.{pid}.tmp.wav").write_bytes(b"RIFF")
    assert clear_stale_temps(tmp_path / "take.wav") == [f".take.{dead.pid}.tmp.wav"]
    assert (tmp_path / f".take.{os.getpid()}.tmp.wav").exists()
