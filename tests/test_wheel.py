"""The on-device install, as a new user gets it: build the wheel, install it without extras into a
fresh virtualenv (no TensorFlow, no LiteRT, no museval), and run the runtime commands from a folder
with no repository in it. The shipped model must come from the wheel's package data.

Needs network to PyPI (or pip's cache) for the base dependencies; about half a minute."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.wheel

# Run the CLI in the installed venv and report, after it returns, which heavy modules it imported.
PROBE = """
import sys
from unetsep.cli import main
status = main(sys.argv[1:])
heavy = sorted(m for m in ("tensorflow", "keras", "ai_edge_litert", "museval", "onnx") if m in sys.modules)
print("imported heavy modules:", heavy, file=sys.stderr)
sys.exit(1 if heavy else status)
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with the unetsep wheel and its base dependencies only."""
    root = tmp_path_factory.mktemp("wheel")
    run = lambda *a: subprocess.run([str(x) for x in a], check=True, capture_output=True,  # noqa: E731
                                    text=True, timeout=600)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", REPO)
    wheel = next((root / "dist").glob("unetsep-*.whl"))
    run(sys.executable, "-m", "venv", root / "venv")
    py = root / "venv" / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", wheel)
    return root / "venv"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "UNETSEP_MODEL", "VIRTUAL_ENV")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def probe(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", PROBE, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=_env(), timeout=300)


def test_wheel_is_lean_and_ships_the_model(venv):
    py = venv / "bin" / "python"
    where = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in "
                            "('tensorflow', 'keras', 'ai_edge_litert', 'museval', 'tf2onnx') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, env=_env(), check=True,
                           cwd=venv)
    assert where.stdout.strip() == "[]"  # the base install has none of the heavy packages
    folder = subprocess.run([str(py), "-c", "from unetsep.runtime.backends import default_model_path as d; "
                             "print(d())"], capture_output=True, text=True, env=_env(), check=True,
                            cwd=venv).stdout.strip()
    folder = Path(folder).parent
    assert "site-packages" in str(folder) and REPO not in folder.parents
    assert {p.name for p in folder.iterdir()} >= {"drums.onnx", "drums.int8.onnx", "drums.int8.tflite",
                                                  "drums.int8.json", "MODEL.md"}
    assert not (folder / "loss.png").exists() and not (folder / "history.csv").exists()


def test_installed_cli_runs_without_tensorflow(venv, tmp_path, request):
    try:  # a JACK server gives `live -l` a device to list where jackd is installed
        request.getfixturevalue("jackd")
    except pytest.skip.Exception:
        pass
    work = tmp_path / "elsewhere"
    work.mkdir()
    rate = 44100
    t = np.arange(2 * rate) / rate
    x = 0.3 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)
    x[:: rate // 4] += 0.6  # clicks for the model to find
    sf.write(work / "song.wav", x.astype(np.float32), rate)

    # The console script itself, then the same commands through the probe.
    script = subprocess.run([str(venv / "bin" / "unetsep"), "separate", "song.wav", "-o", "out"],
                            cwd=work, capture_output=True, text=True, env=_env(), timeout=300)
    assert script.returncode == 0, script.stderr
    d, r = sf.read(work / "out" / "default" / "song" / "drums.wav")
    nd, _ = sf.read(work / "out" / "default" / "song" / "no_drums.wav")
    assert r == rate and d.shape == x.shape and np.abs(d + nd - x).max() < 1e-4

    sep = probe(venv, work, "separate", "song.wav", "-o", "out2")
    assert sep.returncode == 0, sep.stderr
    bench = probe(venv, work, "bench", "--frames", "200")
    assert bench.returncode == 0, bench.stderr
    assert "default" in bench.stdout and "LiteRT is not installed" in bench.stderr
    listing = probe(venv, work, "live", "-l")
    # With no sound card and no JACK the answer is the one-line error, never a traceback.
    assert listing.returncode == 0 or "unetsep live: error: no audio" in listing.stderr, listing.stderr
    for proc in (sep, bench, listing):
        assert "imported heavy modules: []" in proc.stderr and "Traceback" not in proc.stderr

    # A missing optional backend or extra: one line naming the extra to install.
    tflite = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "from unetsep.runtime.backends "
                                  "import shipped_model as s; print(s('default').parent)"],
                                 capture_output=True, text=True, env=_env(), check=True,
                                 cwd=work).stdout.strip())
    for args, extra in ((("bench", "--frames", "10", "--model", tflite / "drums.int8.tflite"), "litert"),
                        (("demo",), "train")):
        proc = probe(venv, work, *args)
        assert proc.returncode == 2 and f"pip install 'unetsep[{extra}]'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
