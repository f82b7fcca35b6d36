"""`unetsep live` as a musician sees it: the once-a-second status line (from the main thread, read
from the callback's preallocated arrays), the --mix choices of the model's target, --quiet."""
from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ENV, unetsep


def test_mix_choices_follow_the_target():
    from unetsep.runtime.live import mixes

    assert mixes("bass") == ("bass", "no-bass", "blend")
    assert mixes("drums") == ("drums", "no-drums", "blend")


def test_callback_records_levels_and_status_reads_them():
    from unetsep.runtime.backends import load_model
    from unetsep.runtime.errors import UserError
    from unetsep.runtime.live import LEVEL_FLOOR_DB, Live, status_line

    model = load_model("default")
    with pytest.raises(UserError, match="choose drums, no-drums, blend"):
        Live(model, 2, 64, "no-bass")
    live = Live(model, 2, 64, None)  # the default: the target alone
    assert live.mix == "drums"
    out = np.zeros((64, 2), np.float32)
    for i in range(50):
        x = np.full((64, 2), 0.5 if i >= 25 else 0.0, np.float32)
        x[0, 0] = -0.5 if i >= 25 else 0.0
        live.callback(x, out, 64, None, 1 if i == 3 else 0)
    assert live.n == 50 and live.flags[:50].sum() == 1
    assert live.peak_in[24] == 0 and np.isclose(live.peak_in[25], 0.5)
    line = status_line(live, 25, 50, 1.0, 64 / 44100)
    assert "xruns   1" in line and "in   -6.0 dBFS" in line and "dBFS" in line.split("out")[1]
    quiet = status_line(live, 0, 25, 0.5, 64 / 44100)
    assert f"in {LEVEL_FLOOR_DB:6.1f} dBFS" in quiet
    assert "p99" in line and "max" in line and "CPU" in line


def test_each_mix_is_what_it_says():
    """no-drums plays the input delayed by the model's latency less the estimate (what is left in
    step with it), blend the estimate plus BLEND_REST of that; drums the estimate alone."""
    from unetsep.runtime.backends import load_model
    from unetsep.runtime.live import BLEND_REST, Live

    model = load_model("default")
    rng = np.random.default_rng(7)
    blocks = [(rng.standard_normal((64, 2)) * 0.2).astype(np.float32) for _ in range(40)]
    heard = {}
    for mix in ("drums", "no-drums", "blend"):
        live = Live(model, 2, 64, mix)
        out = np.zeros((64, 2), np.float32)
        heard[mix] = np.concatenate([live.callback(x, out, 64, None, 0) or out.copy() for x in blocks])
    lat = live.engine.latency
    est = heard["drums"]
    assert lat > 0 and np.abs(est).max() > 1e-3
    dry = np.concatenate([np.zeros((lat, 2), np.float32), *blocks])[:len(est)]
    np.testing.assert_allclose(heard["no-drums"], dry - est, atol=1e-6)
    np.testing.assert_allclose(heard["blend"], est + BLEND_REST * (dry - est), atol=1e-6)


def test_bad_mix_is_one_line():
    proc = unetsep("live", "--mix", "no-bass", "--seconds", 1, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no-drums" in proc.stderr  # or the no-device line


@pytest.mark.skipif(shutil.which("jackd") is None, reason="jackd is not installed (apt-get install jackd2)")
def test_status_line_on_a_terminal_and_quiet(jackd, tmp_path):
    # stderr on a pseudo-terminal, as a musician's shell has it
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "unetsep.cli", "live", "--seconds", "3.5"],
                            env=ENV, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    end = time.time() + 60
    while time.time() < end:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text
    lines = [part for part in text.split("\r") if "xruns" in part and "dBFS" in part and "live:" not in part]
    assert len(lines) >= 3, text  # one per second
    assert "live:" in text and "peak level in" in text  # the summary at the end

    # --quiet, and not on a terminal: nothing but the JSON
    q = subprocess.run([sys.executable, "-m", "unetsep.cli", "live", "--seconds", "1.5", "--quiet",
                        "--json", str(tmp_path / "r.json")], env=ENV, capture_output=True, text=True,
                       timeout=60)
    assert q.returncode == 0 and q.stdout == "" and "xruns" not in q.stderr and "live:" not in q.stderr
    assert (tmp_path / "r.json").is_file()
