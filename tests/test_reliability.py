"""Issue 14: what a new user and a hostile tester tried, each as a user runs it.

Bad flags and inputs end with exit 2 and one line (never a traceback); a batch goes on past a bad
file; outputs are always a consistent pair, even after kill -9; temporaries of a killed run go away.
Cheap cases run in-process through `unetsep.cli.main` (no TensorFlow import, no process start-up).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ENV, MACHINE, unetsep

TEMP_SUFFIXES = (".tmp", ".old")


def run_main(*argv) -> tuple[int, str]:
    """`unetsep ARGV` in this process: (exit status, stderr). An uncaught exception fails the test
    with its traceback, which is what a user would have seen."""
    from unetsep.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    return code, err.getvalue()


def one_line_error(code, stderr: str, *words: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith(TEMP_SUFFIXES))


def digest(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
            for n in ("drums.wav", "no_drums.wav") if (folder / n).exists()}


@pytest.fixture(scope="module")
def onnx(exported) -> Path:
    return exported / "drums.onnx"


@pytest.fixture(scope="module")
def clip(tmp_path_factory, song) -> Path:
    """0.5 s of the song: enough for every separate case, fast to run."""
    x, rate = sf.read(song, dtype="float32")
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(path, x[: rate // 2], rate)
    return path


# --- items 0, 1, 4, 7, 9, 12: numbers and data are checked before anything runs or is written ---

@pytest.mark.parametrize("flag,value", [("--steps", "-3"), ("--steps", "0"), ("--epochs", "0"),
                                        ("--epochs", "-1"), ("--batch-size", "0"),
                                        ("--batch-size", "-5"), ("--epochs", "x"),
                                        ("--cpu-devices", "-1"), ("--seed", "-2")])
def test_train_rejects_bad_numbers_before_writing(dataset, tmp_path, flag, value):
    code, err = run_main("train", "--data", dataset, "--out", tmp_path / "r", "--epochs", 1, flag, value)
    one_line_error(code, err, flag, "--help")
    assert not (tmp_path / "r").exists()  # no config.json to refuse the corrected command later


def test_train_steps_negative_fails_fast_in_a_real_process(dataset, tmp_path):
    """`--steps -3` used to hang forever after the banner; now it never imports TensorFlow."""
    t = time.perf_counter()
    proc = unetsep("train", "--data", dataset, "--out", tmp_path / "r", "--epochs", 1, "--steps", -3,
                   check=False, timeout=60)
    one_line_error(proc.returncode, proc.stderr, "--steps", "at least 1")
    assert time.perf_counter() - t < 30 and not (tmp_path / "r").exists()


def main_without_tensorflow(*argv) -> subprocess.CompletedProcess:
    """`unetsep ARGV` in a fresh process that fails if TensorFlow was imported by the time it ends."""
    code = ("import sys; from unetsep.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'tf imported'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          env=ENV, timeout=120)


def test_train_bad_data_never_imports_tensorflow(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = main_without_tensorflow("train", "--data", tmp_path / "empty", "--out", tmp_path / "r")
    one_line_error(proc.returncode, proc.stderr, "MUSDB")


def test_tensorflow_start_up_lines_stay_off_the_terminal(dataset, tmp_path):
    """An error found after TensorFlow is imported (an --init file Keras cannot load) is still the
    only line: the absl/oneDNN start-up lines that TF_CPP_MIN_LOG_LEVEL does not filter are kept
    away."""
    (tmp_path / "not.keras").write_text("not a model")
    proc = unetsep("train", "--data", dataset, "--init", tmp_path / "not.keras", "--out",
                   tmp_path / "r", check=False, timeout=300)
    one_line_error(proc.returncode, proc.stderr, "cannot be loaded as a Keras model")


@pytest.mark.parametrize("flags,words", [
    (["--preset", "huge"], "invalid choice: 'huge'"), (["--loss", "l2"], "invalid choice: 'l2'"),
    (["--loss", "sdr"], "use a streaming preset"),  # the seed preset scores frames, not segments
    (["--lookahead", "64"], "--lookahead is for the streaming presets"),
    (["--preset", "stream", "--lookahead", "30"], "whole number of hops"),
    (["--target", "piano"], "unknown target 'piano'"),
])
def test_unfit_training_flags_are_refused_before_tensorflow(flags, words, tmp_path):
    """train/config.py does not import TensorFlow: a wrong preset, loss, look-ahead or target
    costs no 5 s start-up, and nothing is written."""
    proc = main_without_tensorflow("train", "--data", tmp_path, *flags, "--out", tmp_path / "r")
    one_line_error(proc.returncode, proc.stderr, words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,flag", [
    (["bench", "--batch", "0"], "--batch"), (["bench", "--frames", "0"], "--frames"),
    (["bench", "--threads", "0"], "--threads"), (["live", "--blocksize", "0"], "--blocksize"),
    (["live", "--channels", "-2"], "--channels"), (["live", "--seconds", "0"], "--seconds"),
    (["separate", "x.wav", "--threads", "0"], "--threads"),
    (["evaluate", "--data", "d", "--seconds", "0"], "--seconds"),
    (["evaluate", "--data", "d", "--tracks", "0"], "--tracks"),
    (["data", "--out", "d", "--songs", "0"], "--songs"), (["data", "--out", "d", "--seconds", "nan"], "--seconds"),
    (["export", "run", "--check-seconds", "-1"], "--check-seconds"),
])
def test_numeric_flags_are_checked_at_the_parser(argv, flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(*run_main(*argv), flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,prog,bad", [
    (["separate", "--bogus", "x.wav"], "unetsep separate", "--bogus"),
    (["bench", "--frames", "3", "zz"], "unetsep bench", "zz"),
    (["--bogus", "separate", "x.wav"], "unetsep", "--bogus"),  # before the command: the top level's
])
def test_an_unknown_flag_is_named_with_its_command(argv, prog, bad, tmp_path, monkeypatch):
    """The line says `unetsep separate: ... see 'unetsep separate --help'`, where the flags are."""
    monkeypatch.chdir(tmp_path)
    line = one_line_error(*run_main(*argv), f"{prog}: error: unrecognized arguments: {bad};",
                          f"see '{prog} --help'")
    assert list(tmp_path.iterdir()) == [], line


def test_bench_checks_its_outputs_before_timing(onnx, tmp_path):
    (tmp_path / "file").write_text("a regular file")
    t = time.perf_counter()
    code, err = run_main("bench", "--model", onnx, "--frames", 1000000, "--batch", 1,
                         "--json", tmp_path / "file" / "b.json")
    one_line_error(code, err, "--json", "not a folder")
    assert time.perf_counter() - t < 10  # a million frames were not timed first


def test_evaluate_defaults_to_the_shipped_fp32_model(dataset, tmp_path):
    code, err = run_main("evaluate", "--data", dataset, "--tracks", 1, "--seconds", 2,
                         "--json", tmp_path / "e.json")
    assert code == 0, err
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["model"] == "default"  # models/default/drums.onnx, not the int8 one
    assert set(out["median"]) == {"default", "irm64", "irm2048", "mixture"}
    assert out["median_sdr"] == out["median"]["default"]["sdr"]


def test_evaluate_on_no_test_tracks_and_too_short(dataset, onnx, tmp_path):
    shutil.copytree(dataset / "train", tmp_path / "d" / "train")
    (tmp_path / "d" / "test").mkdir()
    one_line_error(*run_main("evaluate", "--data", tmp_path / "d", "--model", onnx), "no test tracks")
    one_line_error(*run_main("evaluate", "--data", dataset, "--model", onnx, "--seconds", 0.5), "1 s")


# --- item 10: a damaged run ---

def test_export_names_a_damaged_model_keras(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.json", run)
    blob = (tiny_run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(blob[: len(blob) // 2])  # cut short
    proc = unetsep("export", run, "--out", tmp_path / "m", check=False, timeout=300)
    one_line_error(proc.returncode, proc.stderr, "model.keras", "damaged")
    assert not (tmp_path / "m").exists()


# --- item 11: no audio device ---

def test_live_without_an_audio_device(onnx):
    listing = unetsep("live", "-l", check=False)
    if listing.returncode == 0:
        pytest.skip(f"{MACHINE}it has an audio device (or a JACK server is running)")
    one_line_error(listing.returncode, listing.stderr, "no audio input or output device", "jackd -d dummy")
    proc = unetsep("live", "--model", onnx, "--seconds", 1, check=False)
    one_line_error(proc.returncode, proc.stderr, "no audio input or output device", "jackd -d dummy")


# --- items 2, 3, 14: batches of inputs ---

def test_inputs_sharing_a_stem_keep_their_own_folders(clip, onnx, tmp_path):
    x, rate = sf.read(clip, dtype="float32")
    for fmt in ("flac", "mp3", "wav"):
        sf.write(tmp_path / f"a.{fmt}", x, rate, format=fmt.upper())
    code, err = run_main("separate", *(tmp_path / f"a.{f}" for f in ("flac", "mp3", "wav")),
                         "--model", onnx, "--provider", "cpu", "-o", tmp_path / "out")
    assert code == 0, err
    assert "share the name 'a'" in err
    out = tmp_path / "out" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == ["a.flac", "a.mp3", "a.wav"]
    for d in out.iterdir():
        assert sorted(p.name for p in d.iterdir()) == ["drums.wav", "no_drums.wav"]
    # The same name in two folders cannot be told apart: refused before anything is written.
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        shutil.copy(clip, tmp_path / d / "a.wav")
    code, err = run_main("separate", tmp_path / "x" / "a.wav", tmp_path / "y" / "a.wav", "--model", onnx,
                         "--provider", "cpu", "-o", tmp_path / "out2")
    one_line_error(code, err, "x/a.wav", "y/a.wav", "-o")
    assert not (tmp_path / "out2").exists()


def test_decode_errors_fail_alone_and_the_batch_goes_on(clip, onnx, tmp_path):
    x, rate = sf.read(clip, dtype="float32")
    sf.write(tmp_path / "full.flac", np.tile(x, (4, 1)), rate)
    blob = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(blob[: len(blob) // 2])
    sf.write(tmp_path / "good.mp3", x, rate, format="MP3")
    mp3 = bytearray((tmp_path / "good.mp3").read_bytes())
    mp3[200:] = bytes(random.Random(0).randrange(256) for _ in range(len(mp3) - 200))
    (tmp_path / "corrupt.mp3").write_bytes(bytes(mp3))
    (tmp_path / "folder.wav").mkdir()
    proc = unetsep("separate", tmp_path / "cut.flac", tmp_path / "folder.wav", clip,
                   tmp_path / "corrupt.mp3", "--model", onnx, "--provider", "cpu", "-o", tmp_path / "o",
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "folder.wav is a folder" in errors[0] and "corrupt.mp3" in errors[1], errors
    assert f"{clip} -> " in proc.stdout  # the good file after the bad ones was separated
    assert proc.stderr.strip().splitlines()[-1].startswith("unetsep separate: ")
    assert "2 of 4 inputs failed" in proc.stderr.strip().splitlines()[-1]
    assert (tmp_path / "o" / "tiny" / "clip" / "drums.wav").is_file()
    # The FLAC cut in half: what decodes is separated, the rest padded with silence, and said so
    # (as for a cut WAV or MP3); its decoder stops at the cut with "lost sync".
    warning = [line for line in proc.stderr.splitlines() if "cut.flac" in line]
    assert len(warning) == 1 and "warning" in warning[0] and "decoding stopped there" in warning[0]
    drums, _ = sf.read(tmp_path / "o" / "tiny" / "cut" / "drums.wav")
    rest, _ = sf.read(tmp_path / "o" / "tiny" / "cut" / "no_drums.wav")
    whole = np.tile(x, (4, 1))
    kept = int(warning[0].split(" holds ")[1].split(" of ")[0])
    assert len(drums) == len(whole) and 0 < kept < len(whole)
    np.testing.assert_allclose((drums + rest)[:kept], whole[:kept], atol=1e-4)
    assert not drums[kept:].any() and not rest[kept:].any()
    assert temporaries(tmp_path / "o") == []


def test_full_disk_fails_each_file_cleanly(clip, song, onnx, tmp_path):
    disk = tmp_path / "tiny-disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"{MACHINE}cannot mount a small tmpfs here ({mount.stderr.strip()})")
    try:
        proc = unetsep("separate", song, clip, "--model", onnx, "--provider", "cpu", "-o", disk / "out",
                       check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 2 and all("no space left on device" in e for e in errors), errors
        assert "2 of 2 inputs failed" in proc.stderr.splitlines()[-1]
        assert list(disk.iterdir()) == []  # no temporaries, no empty output root
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_smaller_cases(clip, onnx, tmp_path):
    x, rate = sf.read(clip, dtype="int16")
    # A failed run leaves no empty output root, and keeps an empty folder the user made.
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00")
    one_line_error(*run_main("separate", tmp_path / "junk.wav", "--model", onnx, "--provider", "cpu",
                             "-o", tmp_path / "new"), "junk.wav")
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine" / "tiny" / "junk"
    mine.mkdir(parents=True)
    code, err = run_main("separate", tmp_path / "junk.wav", "--model", onnx, "--provider", "cpu",
                         "-o", tmp_path / "mine")
    assert code == 2 and mine.is_dir(), err
    # A WAV whose header announces more audio than it holds: separated, with a warning.
    sf.write(tmp_path / "t.wav", x, rate, subtype="PCM_16")
    blob = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(blob[: len(blob) // 2])
    code, err = run_main("separate", tmp_path / "t.wav", "--model", onnx, "--provider", "cpu",
                         "-o", tmp_path / "o")
    assert code == 0 and "warning" in err and "cut short" in err, err
    assert (tmp_path / "o" / "tiny" / "t" / "drums.wav").is_file()


# --- items 6, 13: temporaries of a killed run, and the pair swapped in together ---

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_by_the_next_run(clip, onnx, tmp_path):
    track = tmp_path / "o" / "tiny" / "clip"
    track.mkdir(parents=True)
    pid = dead_pid()
    for n in ("drums.wav", "no_drums.wav"):
        (track / f".{n}.{pid}.tmp").write_bytes(b"half a file")
    (track / "notes.txt").write_text("the user's own file stays")
    code, err = run_main("separate", clip, "--model", onnx, "--provider", "cpu", "-o", tmp_path / "o")
    assert code == 0, err
    assert f"removed 2 unfinished temporary files left in {track} by an interrupted run" in err
    assert sorted(p.name for p in track.iterdir()) == ["drums.wav", "no_drums.wav", "notes.txt"]


def test_a_failed_rename_restores_the_previous_pair(clip, onnx, tmp_path, monkeypatch):
    out = tmp_path / "o"
    track = out / "tiny" / "clip"
    assert run_main("separate", clip, "--model", onnx, "--provider", "cpu", "-o", out)[0] == 0
    before = digest(track)
    (track / "drums.wav").write_bytes((track / "drums.wav").read_bytes())  # same bytes, new inode
    real = os.replace

    def second_rename_fails(src, dst):
        if str(dst).endswith("no_drums.wav") and str(src).endswith(".tmp"):
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    clip2 = tmp_path / "clip.wav"  # other audio, so a mixed pair would show
    x, rate = sf.read(clip, dtype="float32")
    sf.write(clip2, x[::-1] * 0.5, rate)
    code, err = run_main("separate", clip2, "--model", onnx, "--provider", "cpu", "-o", out)
    one_line_error(code, err, "Input/output error", "unchanged")
    assert digest(track) == before and temporaries(out) == []
    # With no previous pair, the lone new file goes too: nothing rather than half a result.
    code, err = run_main("separate", clip2, "--model", onnx, "--provider", "cpu", "-o", tmp_path / "o2")
    assert code == 2 and not (tmp_path / "o2").exists(), err


def test_recover_pairs_after_a_kill_between_the_renames(tmp_path):
    from unetsep.runtime.files import recover_pairs

    names = ("drums.wav", "no_drums.wav")
    pid = dead_pid()
    for n in names:
        (tmp_path / n).write_text(f"old {n}")
        os.link(tmp_path / n, tmp_path / f".{n}.{pid}.old")
    (tmp_path / ".drums.wav.new").write_text("new drums.wav")
    os.replace(tmp_path / ".drums.wav.new", tmp_path / "drums.wav")  # the first rename happened
    (tmp_path / f".no_drums.wav.{pid}.tmp").write_text("new no_drums.wav")
    notes = recover_pairs(tmp_path, names)
    assert any("restored the previous" in n for n in notes), notes
    assert {n: (tmp_path / n).read_text() for n in names} == {n: f"old {n}" for n in names}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def pair_source(track: Path, sources: list[np.ndarray]) -> int | None:
    """Which source the pair in `track` separates (drums + no_drums == the input), None if the
    folder holds no pair; fails on a lone file or a mixed pair."""
    names = [n for n in ("drums.wav", "no_drums.wav") if (track / n).exists()]
    if not names:
        return None
    assert len(names) == 2, names
    d, _ = sf.read(track / "drums.wav", dtype="float32")
    nd, _ = sf.read(track / "no_drums.wav", dtype="float32")
    for i, x in enumerate(sources):
        if len(d) == len(x) and np.abs(d + nd - x).max() < 1e-3:
            return i
    raise AssertionError("the folder holds a mixed pair")


def test_kill_9_at_random_points_leaves_a_consistent_folder(onnx, tmp_path):
    """Five kill -9s (seeded) while separating 60 s of noise and tones: after each the track folder
    holds the previous complete pair or nothing; the next run succeeds and leaves no temporary.
    Two different inputs of the same name alternate, so a pair mixed from two runs would show."""
    rate = 44100
    t = np.arange(60 * rate) / rate
    rng = np.random.default_rng(14)
    sources, paths = [], []
    for i, freqs in enumerate(([220, 330], [110, 550])):
        x = 0.1 * rng.standard_normal((len(t), 2)) + 0.3 * np.sin(2 * np.pi * np.outer(t, freqs))
        x = (x / np.abs(x).max() * 0.9).astype(np.float32)
        (tmp_path / str(i)).mkdir()
        paths.append(tmp_path / str(i) / "long.wav")
        sf.write(paths[-1], x, rate, subtype="FLOAT")
        sources.append(x)
    out = tmp_path / "o"
    track = out / "tiny" / "long"

    def cmd(i: int) -> list[str]:
        return [sys.executable, "-m", "unetsep.cli", "separate", str(paths[i]), "--model", str(onnx),
                "--provider", "cpu", "--threads", "1", "-o", str(out)]

    pick = random.Random(14)
    previous = None  # which source the folder's pair came from
    interrupted = 0
    work = 1.5  # seconds of separating after the temporaries appear; measured by the first full run
    for k in range(5):
        i = 0 if previous is None else 1 - previous
        proc = subprocess.Popen(cmd(i), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and not any(track.glob(f".drums.wav.{proc.pid}.tmp")):
            assert time.time() < deadline
            time.sleep(0.002)
        time.sleep(pick.uniform(0, work))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = pair_source(track, sources)
        # The previous pair, or the killed run's whole result if it had finished; never a mix.
        assert seen in (previous, i), (k, seen, previous)
        interrupted += seen == previous
        # The next run: succeeds, cleans what the killed one left, leaves no temporary.
        t0 = time.perf_counter()
        done = subprocess.run(cmd(i), env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert temporaries(out) == [], temporaries(out)
        assert sorted(p.name for p in track.iterdir()) == ["drums.wav", "no_drums.wav"]
        if previous is None:
            work = max(0.2, time.perf_counter() - t0 - 1.0)  # minus start-up, roughly
        previous = pair_source(track, sources)
        assert previous == i
    assert interrupted >= 3  # most kills landed while the run was writing, as intended
