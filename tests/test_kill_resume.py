"""SIGKILL a real training process again and again, at random moments and while it writes a checkpoint, resume it
each time (or start it again, when it died before writing its config.json), and end with the very weights,
optimizer state and log of an uninterrupted run: nothing lost, nothing repeated, nothing left behind."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from test_train import TINY, _train_state  # noqa: E402  (the tiny model every training test uses)

SETS = TINY + ["train.steps=10", "train.batch_size=16", "train.ckpt_every=1", "train.log_every=1", "train.eval_every=4",
               "train.threads=1", "optim.ema=0.9", "model.dropout=0.1", "data.mixup=0.5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(run: Path) -> subprocess.Popen:
    args = ["--resume", str(run)] if (run / "config.json").exists() else ["--out", str(run)] + [a for s in SETS for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "vitkit.cli", "train", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _writing(run: Path) -> bool:
    """A checkpoint write in progress: its temporary directory is there."""
    try:
        return any(e.name.startswith(".checkpoint.") and e.name != ".checkpoint.old" for e in os.scandir(run))
    except FileNotFoundError:
        return False


def _kill(proc: subprocess.Popen, run: Path, mode: str, rng: random.Random) -> str:
    """SIGKILL `proc` as `mode` says; returns where it landed ("write", "other") or "finished" if it ended first."""
    if mode == "write":  # during the n-th checkpoint write this process makes
        n, seen, was = rng.randint(1, 3), 0, False
        while proc.poll() is None:
            now = _writing(run)
            seen += now and not was
            was = now
            if seen >= n:
                break
            time.sleep(0.001)
    else:  # at a random moment: start-up, a step, an evaluation, a write
        deadline = time.monotonic() + rng.uniform(0.5, 4.0)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    if proc.poll() is not None:
        return "finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "write" if _writing(run) else "other"


def test_kills_at_random_moments_and_during_checkpoint_writes_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    done = subprocess.run([sys.executable, "-m", "vitkit.cli", "train", "--out", str(ref)] + [a for s in SETS for a in ("--set", s)],
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    run, rng, landed = tmp_path / "run", random.Random(22), []
    for mode in ["write", "time", "write", "write"]:
        landed.append(_kill(_start(run), run, mode, rng))
        if landed[-1] == "finished":
            break
    assert landed.count("write") >= 2, landed  # the kills did land inside checkpoint writes
    for _ in range(3):  # the last resume; a kill that left it finished needs none
        proc = _start(run)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        if (run / "metrics.json").exists():
            break

    a, b = (load_file(str(d / "checkpoint" / "model.safetensors")) for d in (ref, run))  # the EMA weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (_train_state(d / "checkpoint", tmp_path / f"{d.name}.pt") for d in (ref, run))
    assert all(torch.equal(sa["module"][k], sb["module"][k]) for k in sa["module"])  # the trained weights
    assert all(torch.equal(v, sb["optim"]["state"][p][k]) for p, s in sa["optim"]["state"].items() for k, v in s.items())
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, run)]
    keep = ("step", "split", "loss", "top1", "lr")  # not the timings
    assert [{k: r.get(k) for k in keep} for r in rows[0]] == [{k: r.get(k) for k in keep} for r in rows[1]]
    assert json.loads((run / "metrics.json").read_text())["test"] == json.loads((ref / "metrics.json").read_text())["test"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary, no lock left
