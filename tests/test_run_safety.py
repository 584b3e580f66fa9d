"""A run directory under attack and accident (issue 22): resume runs no code from the files, a diverging run stops
and keeps its last good checkpoint, JSON stays JSON, kills leave nothing behind that the next run trips over, one
process at a time trains in a directory, and loaders recover the checkpoint a kill left aside."""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.cli import main
from vitkit.config import Config
from vitkit.rundir import RunDir, RunInUse
from vitkit.train.checkpoint import UnsafeCheckpoint, read_dcp_metadata
from vitkit.train.loop import Diverged, Interrupted, train

from test_train import TINY, _train_state, tiny  # noqa: E402  (the tiny model every training test uses)


def _strict(text: str) -> list:
    """JSON lines as a strict parser reads them: NaN and Infinity are not JSON."""
    def refuse(token):
        raise AssertionError(f"{token} in a JSON file")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line]


def _stopped(tmp_path: Path, *extra: str) -> Path:
    """A run stopped after step 2 of 4, with its checkpoint, to resume."""
    run = tmp_path / "run"
    train(tiny("train.steps=4", "train.batch_size=16", "train.stop_at_step=2", *extra), out=run)
    return run


class _Planted:
    """Unpickled, it creates `marker`: proof that loading ran the file's code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# --- 1. resume unpickles nothing beyond plain data ---------------------------------------------------------------

def test_resume_runs_no_code_from_the_dcp_metadata(tmp_path, capsys):
    run = _stopped(tmp_path)
    meta = run / "checkpoint" / "train_state" / ".metadata"
    metadata = read_dcp_metadata(meta)
    marker = tmp_path / "ran"
    metadata.planted = _Planted(marker)  # the real index, with one object more
    meta.write_bytes(pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpoint, match=r"\.metadata: refusing to load: it asks to unpickle .*open"):
        train(Config(), resume=run)
    assert not marker.exists()
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to load" in err[0] and "do not resume it" in err[0], err
    assert not marker.exists()


def test_resume_runs_no_code_from_a_dcp_bytes_item(tmp_path):
    """DCP keeps non-tensor values (the optimizer's hyper-parameters) as pickles, which its planner would read with
    weights_only=False."""
    import torch.distributed.checkpoint as dcp

    run = _stopped(tmp_path)
    state = _train_state(run / "checkpoint", tmp_path / "state.pt")
    marker = tmp_path / "ran"
    state["optim"]["param_groups"][0]["lr"] = _Planted(marker)
    shutil.rmtree(run / "checkpoint" / "train_state")
    with pytest.warns(UserWarning, match="torch.distributed is disabled"):  # one process: DCP alone, as vitkit saves it
        dcp.save(state, checkpoint_id=run / "checkpoint" / "train_state", no_dist=True)
    with pytest.raises(UnsafeCheckpoint, match=r"optim\.param_groups\.0\.lr in a checkpoint's train_state/: refusing to load"):
        train(Config(), resume=run)
    assert not marker.exists()


# --- 2. divergence ------------------------------------------------------------------------------------------------

def test_a_diverging_run_stops_with_one_line_and_its_log_stays_json(tmp_path, capsys):
    out = tmp_path / "run"
    sets = TINY + ["optim.lr=1e30", "train.steps=3"]
    assert main(["train", "--out", str(out)] + [a for s in sets for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged at step 3: the training loss is nan" in err[0], err
    assert "a learning rate too high (optim.lr=1e+30)" in err[0] and "no checkpoint was written" in err[0]
    rows = _strict((out / "metrics.jsonl").read_text())
    assert rows[-1]["step"] == 3 and rows[-1]["loss"] is None
    assert not (out / "checkpoint").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("log_every, caught", [(1, "the training loss is nan"),  # seen at the next log step
                                               (100, "the weights are no longer finite")])  # no log step: at the checkpoint
def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, log_every, caught):
    import vitkit.train.loop as loop

    real, calls = loop.train_step, []

    def poisoned(module, *a, **k):  # step 3's update leaves a NaN weight (planted)
        metrics = real(module, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(module.parameters()).view(-1)[0] = float("nan")
        return metrics

    monkeypatch.setattr(loop, "train_step", poisoned)
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=rf"diverged at step 4: {caught}.*checkpoint/ keeps step 2, the last with finite"):
        train(tiny("train.steps=6", "train.batch_size=16", "train.ckpt_every=2", f"train.log_every={log_every}"), out=run)
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=True)["step"] == 2
    assert all(torch.isfinite(v).all() for v in load_file(str(run / "checkpoint" / "model.safetensors")).values())
    if log_every == 1:
        assert [r["loss"] is None for r in _strict((run / "metrics.jsonl").read_text())] == [False] * 3 + [True]
    assert not (run / RunDir.LOCK).exists()  # released


def test_non_finite_numbers_are_null_in_the_metrics_files(tmp_path):
    from vitkit.train.metrics import MetricsLogger

    RunDir(tmp_path).write_metrics({"test": {"loss": float("inf"), "top1": 0.5}, "train_wall_s": float("nan")})
    assert _strict((tmp_path / "metrics.json").read_text().replace("\n", " ")) == [
        {"test": {"loss": None, "top1": 0.5}, "train_wall_s": None}]
    log = MetricsLogger(tmp_path)
    log.log(1, "val", {"loss": float("-inf"), "top1": 0.25})
    log.close()
    assert _strict((tmp_path / "metrics.jsonl").read_text()) == [{"step": 1, "split": "val", "loss": None, "top1": 0.25}]


# --- 8, 9, 10: what kills leave behind --------------------------------------------------------------------------

def test_resume_removes_what_killed_checkpoint_writes_left(tmp_path):
    run = _stopped(tmp_path)
    stale = run / ".checkpoint.k1ll3d_a"  # a write killed mid-way: mkdtemp's name, its out/
    shutil.copytree(run / "checkpoint", stale / "out")
    empty = run / ".checkpoint.abcdefgh"  # killed right after mkdtemp
    empty.mkdir()
    early = run / ".checkpoint.m1dsav3_"  # killed while out/ was still in its own temporary (save_model's)
    shutil.copytree(run / "checkpoint", early / ".out.x9y8z7w6" / "out")
    old = run / ".checkpoint.old"  # killed after the second rename, before the old one was removed
    shutil.copytree(run / "checkpoint", old)
    notes = run / ".checkpoint.notes"  # not names this code makes, or not what it puts in them: left alone
    notes.write_text("mine")
    backup = run / ".checkpoint.backup01"
    backup.mkdir()
    (backup / "model.safetensors").write_bytes(b"mine")
    train(Config(), resume=run)
    assert not stale.exists() and not empty.exists() and not early.exists() and not old.exists()
    assert notes.read_text() == "mine" and (backup / "model.safetensors").read_bytes() == b"mine"
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=True)["step"] == 4


def test_a_kill_during_the_final_evaluation_logs_it_once(tmp_path, monkeypatch):
    """Killed after the final validation line, before metrics.json, twice: one (4, val) line all the same."""
    real = RunDir.write_metrics

    def killed(self, results):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_metrics", killed)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny("train.steps=4", "train.batch_size=16", "train.log_every=1"), out=run)
    with pytest.raises(KeyboardInterrupt):
        train(Config(), resume=run)
    monkeypatch.setattr(RunDir, "write_metrics", real)
    train(Config(), resume=run)
    keys = [(r["step"], r["split"]) for r in _strict((run / "metrics.jsonl").read_text())]
    assert keys == [(1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "val")]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4


def test_a_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    run = _stopped(tmp_path, "train.log_every=1")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tr')  # the process died while writing step 3's line
    train(Config(), resume=run)
    keys = [(r["step"], r["split"]) for r in _strict((run / "metrics.jsonl").read_text())]
    assert keys == [(1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "val")]


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, monkeypatch, capsys):
    import vitkit.train.loop as loop

    extra = ("train.steps=4", "train.batch_size=16", "train.log_every=1", "train.ckpt_every=3")
    real, calls = loop.train_step, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_step", interrupted)
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match=re.escape(f"no checkpoint was written yet (the first comes at step 3): "
                                                    f"`vitkit train --resume {run}` starts it again from step 0")):
        train(tiny(*extra), out=run)
    monkeypatch.setattr(loop, "train_step", real)
    with pytest.raises(FileExistsError, match="--resume"):  # a new run there is still refused
        train(tiny(*extra), out=run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert f"vitkit train: {run} has no checkpoint yet (stopped before its first): starting it again from step 0" \
        in capsys.readouterr().out
    train(tiny(*extra), out=tmp_path / "ref")
    a, b = (load_file(str(d / "checkpoint" / "model.safetensors")) for d in (tmp_path / "ref", run))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows, ref = (_strict((d / "metrics.jsonl").read_text()) for d in (run, tmp_path / "ref"))
    assert [(r["step"], r["split"], r["loss"]) for r in rows] == [(r["step"], r["split"], r["loss"]) for r in ref]


# --- 11. one process per run directory -----------------------------------------------------------------------------

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} on elsewhere".encode())
print("held", flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows (the run directory is not locked there)")
def test_a_second_process_on_a_run_is_refused_naming_the_holder(tmp_path, capsys):
    run = _stopped(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=rf"{re.escape(str(run))} is in use by another vitkit process \(PID {holder.pid} on "
                                           rf"elsewhere"):
            train(Config(), resume=run)
        capsys.readouterr()
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"(PID {holder.pid} on elsewhere" in err[0], err
        with pytest.raises(RunInUse):  # --force does not remove a run in use either
            train(tiny("train.steps=2"), out=run, overwrite=True)
        assert torch.load(run / "checkpoint" / "state.pt", weights_only=True)["step"] == 2
    finally:
        holder.kill()
        holder.wait()
    train(Config(), resume=run)  # its holder killed, the lock file it left is no obstacle
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=True)["step"] == 4
    assert not (run / ".lock").exists()


# --- 12. loaders recover a checkpoint left aside -------------------------------------------------------------------

def test_eval_and_load_read_a_checkpoint_left_aside_by_a_kill(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("train.steps=2", "train.batch_size=16"), out=run)
    os.replace(run / "checkpoint", run / ".checkpoint.old")  # killed between the two renames of a checkpoint swap
    model, card = vitkit.load(run)
    assert card.class_names == [str(i) for i in range(10)]
    saved = load_file(str(run / ".checkpoint.old" / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k in saved)
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 899
    # read where it lies: a training still running in the directory renames it itself
    assert not (run / "checkpoint").exists() and (run / ".checkpoint.old" / "state.pt").exists()


# --- 13. the distributed timeout ----------------------------------------------------------------------------------

def test_a_bad_dist_timeout_is_named(monkeypatch):
    from vitkit.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("VITKIT_DIST_TIMEOUT", "5m")
    with pytest.raises(ValueError, match=r"VITKIT_DIST_TIMEOUT='5m': give the seconds .* positive number \(default 300\)"):
        distributed.setup("cpu")
    monkeypatch.delenv("VITKIT_DIST_TIMEOUT")
    assert distributed.dist_timeout().total_seconds() == 300


def test_a_run_killed_as_it_began_is_no_obstacle(tmp_path):
    """Killed while writing its config.json: the lock file and the temporary of config.json are all it left; a new run
    there starts, and its end removes them."""
    run = tmp_path / "run"
    (run / ".config.json.q7x2m9ab").mkdir(parents=True)
    (run / ".config.json.q7x2m9ab" / "out").write_text("{")
    (run / ".lock").write_text("4242 on elsewhere\n")
    train(tiny("train.steps=2", "train.batch_size=16"), out=run)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
