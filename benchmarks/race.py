"""Time to accuracy: the fashion-mnist recipe for a fixed wall-clock budget, with vitkit, and with the same
hyperparameters on timm's VisionTransformer in the plain PyTorch loop a user would write (torchvision
dataset and transforms in a DataLoader, torch.optim.AdamW, warm-up + cosine over the steps that fit).

Both sides are given the budget the same way: a short calibration run measures the steady-state step
time, the schedule's length is set to the steps that fit in the budget, and training stops at the
budget whatever happens. Test top-1 on the 10,000 test images at the end (evaluation not timed).

    python benchmarks/race.py                 # 10 minutes each (about 22 minutes in all)
    python benchmarks/race.py --budget 120    # a quick look

Writes benchmarks/results/race.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitkit.config import apply_overrides
from vitkit.recipes import get_recipe
from vitkit.train.loop import train

HERE = Path(__file__).parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def steady_rate(run_dir: Path) -> tuple[float, float]:
    """(images/s after warm-up, seconds lost before it: compile etc.) from a run's cumulative img/s lines."""
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"]
    seen = [r["step"] * 128 for r in rows]
    t = [s / r["img_per_s"] for s, r in zip(seen, rows)]
    rate = (seen[-1] - seen[1]) / (t[-1] - t[1])
    return rate, max(0.0, t[1] - seen[1] / rate)


def race_vitkit(budget: float, work: Path) -> dict:
    base = get_recipe("fashion-mnist")
    calib = train(apply_overrides(base, ["train.progress=false", "train.time_limit_s=60", "train.log_every=10",
                                         "train.epochs=100", "train.eval_every=100000"]), out=work / "vitkit-calibration")
    rate, lost = steady_rate(Path(calib["run_dir"]))
    steps = int(0.97 * (budget - lost) * rate / base.train.batch_size)
    cfg = apply_overrides(get_recipe("fashion-mnist"), ["train.progress=false", f"train.steps={steps}", f"train.time_limit_s={budget}"])
    t = time.perf_counter()
    res = train(cfg, out=work / "vitkit")
    return {"test_top1": res["test"]["top1"], "steps": res["steps"], "planned_steps": steps, "epochs": res["epochs"],
            "train_wall_s": res["train_wall_s"], "img_per_s": res["train_img_per_s"], "calibrated_img_per_s": rate,
            "compile_and_warmup_s": lost, "wall_s_with_eval": time.perf_counter() - t}


def fmnist_root(work: Path) -> Path:
    """torchvision's FashionMNIST reads uncompressed IDX files under ROOT/FashionMNIST/raw."""
    raw = work / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FMNIST.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return work / "tv"


def race_timm(budget: float, work: Path, seed: int = 0) -> dict:
    """What a timm user writes: model, torchvision dataset + transforms, DataLoader, AdamW, cosine."""
    import timm
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    r = get_recipe("fashion-mnist")
    torch.manual_seed(seed)
    root = fmnist_root(work)
    norm = transforms.Normalize((0.5,), (0.5,))
    train_tf = transforms.Compose([transforms.RandomCrop(28, padding=1), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    train_ds = datasets.FashionMNIST(root, train=True, transform=train_tf)
    test_ds = datasets.FashionMNIST(root, train=False, transform=transforms.Compose([transforms.ToTensor(), norm]))
    loader = DataLoader(train_ds, batch_size=r.train.batch_size, shuffle=True, drop_last=True, num_workers=0)
    m = r.model

    def new_model():
        return timm.models.vision_transformer.VisionTransformer(
            img_size=28, patch_size=m.patch_size, in_chans=1, num_classes=10, embed_dim=m.width, depth=m.depth,
            num_heads=m.heads, mlp_ratio=m.mlp_dim / m.width, class_token=False, global_pool="avg", fc_norm=False)

    def run(steps: int, limit: float) -> tuple[torch.nn.Module, int, float]:
        model = new_model()
        opt = torch.optim.AdamW(model.parameters(), lr=r.optim.lr, weight_decay=r.optim.weight_decay)
        warm = max(1, int(r.optim.warmup_fraction * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
        model.train()
        done, t0 = 0, time.perf_counter()
        while done < steps and time.perf_counter() - t0 < limit:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y, label_smoothing=r.optim.label_smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if done >= steps or time.perf_counter() - t0 >= limit:
                    break
        return model, done, time.perf_counter() - t0

    _, n, secs = run(10**9, 45.0)  # calibration
    rate = n * r.train.batch_size / secs
    steps = int(0.97 * budget * rate / r.train.batch_size)
    model, done, wall = run(steps, budget)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test_ds, batch_size=512):
            correct += (model(x).argmax(1) == y).sum().item()
    return {"test_top1": correct / len(test_ds), "steps": done, "planned_steps": steps, "epochs": done * r.train.batch_size / len(train_ds),
            "train_wall_s": wall, "img_per_s": done * r.train.batch_size / wall, "calibrated_img_per_s": rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of training for each side")
    args = ap.parse_args()
    from train_recipe import machine, hardware

    work = Path(tempfile.mkdtemp(prefix="vitkit-race-"))
    out = {"command": "python benchmarks/race.py" + (f" --budget {args.budget:g}" if args.budget != 600 else ""),
           "machine": machine(), "hardware": hardware(), "budget_s": args.budget}
    out["timm_plain_loop"] = race_timm(args.budget, work)
    print("timm:", json.dumps(out["timm_plain_loop"]), flush=True)
    out["vitkit"] = race_vitkit(args.budget, work)
    print("vitkit:", json.dumps(out["vitkit"]), flush=True)
    (HERE / "results" / "race.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
