"""Peak RSS of `unetsep train` on 8 songs vs 32 songs: memory must not grow with the dataset.

    python -m unetsep.benchmarks.train_memory [--seconds 30] [--steps 60] [--work DIR]

Renders the two datasets (same seed, so the 8 are not a subset problem), trains the seed preset for
one epoch of the same number of steps on each in a fresh process, and reads the peak RSS of each
process from getrusage. Prints both figures and their relative difference (goal: < 15%).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory (MB) of one child process, from the kernel's accounting (wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with status {proc.returncode}")
    return usage.ru_maxrss / 1024


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--work", help="folder for the datasets (default: a temporary one)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="unetsep-mem-"))
    results = {}
    for songs in (8, 32):
        data = work / f"songs{songs}"
        if not (data / "setup.yaml").exists():
            subprocess.run([sys.executable, "-m", "unetsep.cli", "data", "--out", str(data), "--songs",
                            str(songs), "--seconds", str(args.seconds), "--seed", "1"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmd = [sys.executable, "-m", "unetsep.cli", "train", "--data", str(data), "--epochs", "1",
               "--steps", str(args.steps), "--out", str(work / f"run{songs}")]
        results[songs] = peak_rss_mb(cmd)
        print(f"{songs:3d} songs x {args.seconds:.0f} s: peak RSS {results[songs]:,.0f} MB", flush=True)
    diff = (results[32] - results[8]) / results[8]
    print(f"32 vs 8 songs: {diff:+.1%} (goal: less than 15%)")


if __name__ == "__main__":
    main()
