"""The fashion-mnist recipe in 1 process against 2 processes (torchrun, gloo; DDP and FSDP) on this
machine: the same global batch and seed, so the loss curves should lie on each other, and the
throughput per process, which on a 2-core machine cannot improve (each process gets one core).

    python benchmarks/distributed.py                 # 1 epoch each (about 10 minutes on 2 cores)
    python benchmarks/distributed.py --epochs 0.25   # quicker

Writes benchmarks/results/distributed.json and distributed.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from train_recipe import machine, hardware  # noqa: E402

HERE = Path(__file__).parent


def launch(nproc: int, parallel: str, threads: int, out: Path, sets: list[str]) -> float:
    cmd = ["-m", "vitkit", "train", "--recipe", "fashion-mnist", "--out", str(out), "--set", f"train.parallel={parallel}",
           "--set", f"train.threads={threads}", "--set", "train.progress=false", "--set", "train.compile=false",
           "--set", "train.log_every=10", *sum((["--set", s] for s in sets), [])]
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd]
    t = time.perf_counter()
    subprocess.run([sys.executable, *cmd], check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="vitkit-dist-"))
    sets = [f"train.epochs={args.epochs}"]
    runs = {"1 process": (1, "ddp", cores), "2 processes, DDP": (2, "ddp", max(1, cores // 2)),
            "2 processes, FSDP": (2, "fsdp", max(1, cores // 2))}
    out: dict = {"command": "python benchmarks/distributed.py" + (f" --epochs {args.epochs:g}" if args.epochs != 1 else ""),
                 "machine": machine(), "hardware": hardware(),
                 "note": "compile off in all three (the recipe's default is on) so they compare like for like",
                 "runs": {}}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, (nproc, parallel, threads) in runs.items():
        run = work / label.replace(" ", "_").replace(",", "")
        wall = launch(nproc, parallel, threads, run, sets)
        m = json.loads((run / "metrics.json").read_text())
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in rows if r["split"] == "train"]
        out["runs"][label] = {"processes": nproc, "threads_per_process": threads, "img_per_s": m["train_img_per_s"],
                              "img_per_s_per_process": m["train_img_per_s"] / nproc, "train_wall_s": m["train_wall_s"],
                              "wall_s_with_startup": wall, "val_top1": m["val"]["top1"], "test_top1": m["test"]["top1"],
                              "final_loss": train_rows[-1]["loss"]}
        ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label=label, lw=1, alpha=0.8)
        print(label, json.dumps(out["runs"][label]), flush=True)
    one = out["runs"]["1 process"]
    for r in out["runs"].values():
        r["throughput_vs_1_process"] = r["img_per_s"] / one["img_per_s"]
    ax.set(xlabel="step", ylabel="training loss", title=f"fashion-mnist recipe, {args.epochs:g} epoch(s), {cores} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "results" / "distributed.png", dpi=120)
    (HERE / "results" / "distributed.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
