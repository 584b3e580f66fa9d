"""Multi-process training with torchrun on 2 CPU processes (gloo): DDP and FSDP follow one process step
for step; checkpoints move between world sizes and parallelisms; a killed rank ends the whole job."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitkit.train.checkpoint import checkpoint_dir

TINY = ["--recipe", "quickstart", "--set", "model.width=32", "--set", "model.depth=2", "--set", "model.heads=2",
        "--set", "model.mlp_dim=64", "--set", "model.patch_size=4", "--set", "data.image_size=8",
        "--set", "train.progress=false", "--set", "train.threads=1", "--set", "train.batch_size=32",
        "--set", "train.log_every=1", "--set", "train.precision=fp32"]  # fp32 on every CPU: losses compared to 1e-5
STEPS = 8
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VITKIT_DIST_TIMEOUT": "60"}


def vitkit(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "vitkit", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "vitkit", *args]


def run(nproc: int, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(vitkit(nproc, *args), env=ENV, capture_output=True, text=True, timeout=300)
    errors = "\n".join(l for l in res.stderr.splitlines() if not l.startswith("W1"))  # torchrun's warnings out
    assert res.returncode == 0, res.stdout[-2000:] + errors[-6000:]
    return res


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """One process, the same global batch and seed."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run(1, "train", *TINY, "--set", f"train.steps={STEPS}", "--out", str(out))
    ref = losses(out)
    assert sorted(ref) == list(range(1, STEPS + 1))
    return ref


def assert_same(got: dict[int, float], ref: dict[int, float], steps) -> None:
    for s in steps:
        assert abs(got[s] - ref[s]) < 1e-5, (s, got[s], ref[s])


# one run carried across every change of world size and parallelism the checkpoints must survive, stopping at a step
# after each leg: (processes, parallelism, the step it stops at, extra settings)
LEGS = [
    (2, "fsdp", 2, ()),  # sharded (DCP) state ...
    (1, "ddp", 4, ()),  # ... resumes in one process; a single process's state ...
    (2, "ddp", 6, ()),  # ... resumes in DDP; a DDP checkpoint ...
    (1, "ddp", 7, ()),  # ... in one process; and full state resumes sharded, with activation checkpointing and
    (2, "fsdp", STEPS, ("train.activation_checkpointing=true", "train.micro_batch_size=8")),  # accumulation
]


def test_parallel_runs_match_one_process_and_resume_across_world_sizes(reference, tmp_path):
    out = tmp_path / "run"
    for i, (n, parallel, stop, extra) in enumerate(LEGS):
        sets = [a for s in (f"train.parallel={parallel}", *extra) for a in ("--set", s)]
        if stop < STEPS:
            sets += ["--set", f"train.stop_at_step={stop}"]
        start = [*TINY, "--set", f"train.steps={STEPS}", "--out", str(out)] if i == 0 else ["--resume", str(out)]
        res = run(n, "train", *start, *sets)
        if stop < STEPS:
            assert f"stopped at step {stop}" in res.stdout, (i, res.stdout[-2000:])
            assert torch.load(checkpoint_dir(out) / "state.pt", weights_only=True)["world"] == n
    got = losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))  # one line per step: only rank 0 logs, no step repeated
    assert_same(got, reference, range(1, STEPS + 1))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 899 and metrics["steps"] == STEPS  # evaluation covers every test image once
    from vitkit import load_model

    load_model(out)  # the final model is one ordinary vitkit checkpoint


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the rank's process through /proc")
def test_killing_one_rank_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(vitkit(2, "train", *TINY, "--set", "train.steps=2000", "--set", "train.ckpt_every=3",
                                   "--out", str(out)), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoint" / "state.pt").exists():
            time.sleep(0.1)
        assert (out / "checkpoint" / "state.pt").exists(), "no checkpoint written"
        workers = [p for p in _children(proc.pid) if _rank_of(p) is not None]
        victim = next(p for p in workers if _rank_of(p) == 1)
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)  # the whole job ends: no hang on the dead rank
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "FAILED" in output or "ChildFailedError" in output, output[-2000:]
    step = torch.load(checkpoint_dir(out) / "state.pt", weights_only=True)["step"]
    assert step > 0 and step % 3 == 0
    res = run(1, "train", "--resume", str(out), "--set", f"train.stop_at_step={step + 2}")
    assert f"stopped at step {step + 2}" in res.stdout


def test_memory_estimate_matches_a_real_forward_and_scales():
    from vitkit.train.memory import activation_bytes, per_rank

    tiny = dict(width=32, depth=2, heads=2, mlp_dim=64, in_chans=1)
    meta = activation_bytes("ViT-Ti/16", 32, batch=4, **tiny)
    real = activation_bytes("ViT-Ti/16", 32, batch=4, device="cpu", **tiny)
    assert abs(meta - real) < 0.02 * real  # meta counts what the CPU keeps (the attention kernel's extras differ a little)
    assert abs(activation_bytes("ViT-Ti/16", 32, batch=8, **tiny) - 2 * meta) < 0.02 * meta
    assert activation_bytes("ViT-Ti/16", 32, batch=4, checkpointing=True, **tiny) < meta / 2
    ddp = per_rank("ViT-B/16", 224, 8, 8, "ddp")
    fsdp = per_rank("ViT-B/16", 224, 8, 8, "fsdp")
    assert ddp["params"] == 86_567_656 and abs(ddp["state_gib"] * 2**30 - 16 * ddp["params"]) < 1
    assert fsdp["state_gib"] < ddp["state_gib"] / 4 and fsdp["activations_gib"] == ddp["activations_gib"]


MEASURE = """
import gc, os, sys, torch
from vitkit.models.registry import create_model
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
torch.manual_seed(0)
m = create_model(sys.argv[1], image_size=int(sys.argv[2])).train()
x = torch.randn(1, 3, int(sys.argv[2]), int(sys.argv[2]))
m(x).sum().backward()
m.zero_grad(set_to_none=True)
gc.collect()
base = rss()
out = m(x).sum()  # the graph alive: what autograd keeps for the backward pass
print(rss() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures resident memory through /proc (Linux)")
def test_memory_estimate_is_what_a_real_training_forward_holds_at_384_px():
    """Counted on the meta device as the fused attention kernels store it; measured as the resident-memory growth
    of a real CPU forward with its graph alive (big allocations mmap'ed, so freed memory leaves at once)."""
    import contextlib

    import vitkit.train.memory as memory
    from vitkit.train.memory import activation_bytes

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", MEASURE, "ViT-S/16", "384"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    measured = int(out.stdout.split()[-1])
    estimate = activation_bytes("ViT-S/16", 384, batch=1)
    assert abs(estimate - measured) < 0.15 * measured, (estimate, measured)
    # counted through the composite attention (T x T weights kept), as before, it would be far off at 577 tokens
    real = memory._fused_attention
    memory._fused_attention = contextlib.nullcontext
    try:
        composite = activation_bytes("ViT-S/16", 384, batch=1)
    finally:
        memory._fused_attention = real
    assert composite > 1.3 * measured


def test_masked_patch_prediction_runs_sharded(tmp_path):
    out = tmp_path / "run"
    run(2, "train", *TINY, "--set", "objective=mpp", "--set", "train.steps=3", "--set", "train.parallel=fsdp", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["mpp_acc"] <= 1.0 and metrics["test"]["n"] == 899
    from vitkit import load_model

    assert load_model(out).config.num_classes == 0  # the encoder alone; the [mask] token and head stay in the objective


def test_only_a_segmentation_heads_batchnorm_is_synchronised(capsys):
    """On GPUs SETR's head trains BatchNorm over the global batch; an AxialResNet classifier's BatchNorm keeps its
    per-process statistics (what it always had: a classifier's results do not change under DDP)."""
    import torch.nn as nn

    import vitkit
    from vitkit.heads.segmentation import SegmentationModel
    from vitkit.train.distributed import Env, sync_batchnorm

    seg = SegmentationModel(vitkit.create_model("ViT-Ti/16", image_size=32, width=32, depth=1, heads=2, mlp_dim=64),
                            3, head="progressive", channels=32, norm="batch")
    both = nn.ModuleDict({"seg": seg, "classifier": nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))})
    weight = seg.head.stages[0][1].weight
    assert sync_batchnorm(both, Env(rank=0, world=2, device=torch.device("cuda"))) == [seg.head]
    kinds = {name: type(m).__name__ for name, m in both.named_modules() if "BatchNorm" in type(m).__name__}
    assert kinds == {**{f"seg.head.stages.{i}.1": "SyncBatchNorm" for i in range(4)}, "classifier.1": "BatchNorm2d"}
    assert seg.head.stages[0][1].weight is weight  # the same parameters, converted in place
    fresh = SegmentationModel(vitkit.create_model("ViT-Ti/16", image_size=32, width=32, depth=1, heads=2, mlp_dim=64),
                              3, head="progressive", channels=32, norm="batch")
    capsys.readouterr()
    sync_batchnorm(fresh, Env(rank=0, world=2))  # CPU processes: no SyncBatchNorm (gloo), a note instead
    assert type(fresh.head.stages[0][1]).__name__ == "BatchNorm2d" and "per process" in capsys.readouterr().out
    assert sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), Env(rank=0, world=2, device=torch.device("cuda"))) == []
