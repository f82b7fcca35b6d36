"""`--strategy multiworker` for real: two worker processes on this machine (TF_CONFIG with
127.0.0.1 ports) train one short epoch of the tiny preset together. The chief (worker 0) writes a
complete, resumable run folder; the other worker's copy of the weights equals the chief's."""
from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from conftest import ENV, unetsep


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def keras_weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight array in a .keras file (a zip holding model.weights.h5), by its HDF5 path."""
    import h5py

    with zipfile.ZipFile(path) as z:
        blob = z.read("model.weights.h5")
    out = {}
    with h5py.File(io.BytesIO(blob), "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_two_workers_train_and_agree(dataset, tmp_path):
    run = tmp_path / "run"
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        scratch = tmp_path / f"worker{i}"
        scratch.mkdir()
        env = {**ENV, "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "unetsep.cli", "train", "--data", str(dataset), "--preset", "tiny",
             "--epochs", "1", "--steps", "3", "--batch-size", "64", "--strategy", "multiworker",
             "--out", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:  # a worker left waiting for the other must not outlive the test
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    assert "2 replicas" in outs[0]

    # The chief's folder is complete ...
    assert {p.name for p in run.iterdir()} == {"config.json", "history.csv", "loss.png", "model.keras",
                                               "best.keras", "checkpoint"}
    assert [p.name for p in (run / "checkpoint").iterdir()] == ["epoch-0001.keras"]
    assert [r["epoch"] for r in csv.DictReader(open(run / "history.csv"))] == ["1"]
    # ... the other worker wrote only to its own scratch folder, and holds the same weights.
    theirs = list((tmp_path / "worker1").glob("unetsep-worker-*/checkpoint/epoch-0001.keras"))
    assert len(theirs) == 1
    mine = keras_weights(run / "checkpoint" / "epoch-0001.keras")
    other = keras_weights(theirs[0])
    assert mine.keys() == other.keys() and len(mine) > 4
    for k in mine:
        np.testing.assert_allclose(mine[k], other[k], rtol=0, atol=1e-6, err_msg=k)
    # Both report the same cluster-wide losses (the seconds column aside).
    rows = [list(csv.DictReader(open(folder / "history.csv")))
            for folder in (run, theirs[0].parent.parent)]
    for key in ("lr", "loss", "zero_estimate", "val_loss", "val_zero_estimate"):
        assert rows[0][0][key] == rows[1][0][key], key
    # The run resumes (here on one worker): epoch 2 continues from the chief's checkpoint.
    proc = unetsep("train", "--data", dataset, "--preset", "tiny", "--epochs", 2, "--steps", 3,
                   "--batch-size", 64, "--out", run)
    assert f"resuming {run} after epoch 1" in proc.stdout
    assert [r["epoch"] for r in csv.DictReader(open(run / "history.csv"))] == ["1", "2"]
