"""Session fixtures: one short rendered dataset and one small trained run, built with the real CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


# The start of a skip's reason when the machine, not a missing package, rules the test out (an audio
# device present, no right to mount a tmpfs): such a skip stays a skip under CI=true.
MACHINE = "this machine: "


STRICT = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _fail_a_skip(report) -> None:
    """Under CI=true any other skip is a failure: .ci/run installs jackd, LiteRT, ffmpeg and the
    rest, so a test (or a module, at collection) skipped there means something it needs broke, and
    must not read as a pass."""
    if report.skipped and STRICT and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if MACHINE not in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped under CI=true, where everything is installed: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_a_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_a_skip(outcome.get_result())


def unetsep(*args: str, check: bool = True, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "unetsep.cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"unetsep {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def jackd():
    """A JACK server with the dummy driver (44.1 kHz, 64-sample periods) for this module's tests."""
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed (apt-get install jackd2)")
    jack = pytest.importorskip("jack")
    proc = subprocess.Popen(["jackd", "--no-realtime", "-d", "dummy", "-r", "44100", "-p", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            jack.Client("probe", no_start_server=True).close()
            break
        except jack.JackError:
            assert proc.poll() is None, "jackd exited"
            time.sleep(0.1)
    yield proc
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """6 songs of 6 s in MUSDB18-HQ layout (3 train, 1 valid, 2 test)."""
    out = tmp_path_factory.mktemp("data") / "d"
    unetsep("data", "--out", out, "--songs", 6, "--seconds", 6, "--seed", 7)
    return out


@pytest.fixture(scope="session")
def tiny_run(dataset, tmp_path_factory) -> Path:
    """The tiny preset trained for 2 short epochs: enough for export and runtime tests."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    unetsep("train", "--data", dataset, "--preset", "tiny", "--epochs", 2, "--steps", 20,
            "--batch-size", 256, "--out", run)
    return run


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported to every format; degraded int8 formats kept so tests can use them."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    unetsep("export", tiny_run, "--out", out, "--check-seconds", 6, "--allow-degraded")
    return out


@pytest.fixture(scope="session")
def song(tmp_path_factory) -> Path:
    """A 5 s stereo song the tiny model never saw (another seed), as wav."""
    root = tmp_path_factory.mktemp("song")
    unetsep("data", "--out", root / "d", "--songs", 3, "--seconds", 5, "--seed", 99)
    track = sorted((root / "d" / "test").iterdir())[0]
    return (track / "mixture.wav").rename(root / "song.wav")


@pytest.fixture(scope="session")
def stream_run(dataset, tmp_path_factory) -> Path:
    """The tiny streaming preset (causal, GRU memory, carried state) trained for 2 short epochs."""
    run = tmp_path_factory.mktemp("runs") / "tiny-stream"
    unetsep("train", "--data", dataset, "--preset", "tiny-stream", "--epochs", 2, "--steps", 6,
            "--out", run)
    return run


@pytest.fixture(scope="session")
def stream_exported(stream_run, tmp_path_factory) -> Path:
    """The tiny streaming run exported (lean ONNX with explicit state, ORT int8)."""
    out = tmp_path_factory.mktemp("models") / "tiny-stream"
    unetsep("export", stream_run, "--out", out, "--check-seconds", 6, "--allow-degraded")
    return out
