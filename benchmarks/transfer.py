"""Transfer on real data (issue 5): a ViT pre-trained on Fashion-MNIST with vitkit, fine-tuned on
scikit-learn's digits (resized to the model's 28 px), against the same ViT trained from scratch on
digits with the same labels and budget (all 808 training images, and 10 per class); fine-tuning at
twice the resolution; few-shot accuracy of the pre-trained features against randomly initialised ViTs'.

Every run gets the same budget (200 steps of 128 images). The fine-tune is the paper's recipe (SGD,
momentum 0.9, no weight decay, clipping, warm-up + cosine) with its LR picked on the validation split;
scratch runs get the quickstart recipe's AdamW (its tuned default) and the same SGD recipe with the
same sweep.

    # the pre-trained model: the fashion-mnist recipe without label smoothing (the paper pre-trains
    # without it; with 0.1 the features transfer worse, README)
    vitkit train --recipe fashion-mnist --set optim.label_smoothing=0 --out benchmarks/runs/fashion-mnist-ls0
    python benchmarks/transfer.py --pretrained benchmarks/runs/fashion-mnist-ls0

Writes benchmarks/results/transfer.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import vitkit
from vitkit.config import apply_overrides
from vitkit.evaluate.run import fewshot_model
from vitkit.recipes import get_recipe
from vitkit.train.finetune import finetune
from vitkit.train.loop import train

HERE = Path(__file__).parent


def best_of(runs: dict) -> tuple[str, float]:
    lr = max(runs, key=lambda k: (runs[k]["val_top1"], -runs[k]["val_loss"]))  # as `vitkit finetune --lr-sweep`
    return lr, runs[lr]["test_top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", help="a Fashion-MNIST run directory (default: the newest under benchmarks/runs)")
    ap.add_argument("--steps", type=int, default=200, help="training steps for every digits run (the budget)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lrs", default="0.03,0.1,0.3", help="SGD LR sweep, picked on validation")
    ap.add_argument("--labels", default="0,10", help="labelled images per class (0: all)")
    args = ap.parse_args()
    pre = Path(args.pretrained) if args.pretrained else sorted((HERE / "runs").glob("fashion-mnist-*"))[-1]
    lrs = [float(v) for v in args.lrs.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vitkit-transfer-"))
    budget = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", "train.progress=false", "train.micro_batch_size=0"]
    out: dict = {"command": f"python benchmarks/transfer.py --pretrained {pre}", "pretrained": str(pre),
                 "budget": f"{args.steps} steps x {args.batch} images", "sgd_lr_sweep": lrs}
    fm = get_recipe("fashion-mnist")
    arch = [f"model.{k}={v}" for k, v in fm.model.overrides().items()] + [f"model.name={fm.model.name}"]
    for n in [int(v) for v in args.labels.split(",")]:
        key = "all_808_labels" if n == 0 else f"{n}_labels_per_class"
        labels = [f"data.labels_per_class={n}"]
        row: dict = {}
        t = time.perf_counter()
        ft = finetune(str(pre), "digits", out=work / f"ft{n}", overrides=budget + labels, lr_sweep=lrs)
        row["finetune_28px"] = {"test_top1": ft["test"]["top1"], "chosen_lr": ft["chosen_lr"], "sweep": ft["lr_sweep"],
                                "wall_s": time.perf_counter() - t}
        if n == 0:  # twice the pre-training resolution, at the LR chosen at 28 px
            ft2 = finetune(str(pre), "digits", resolution=56, out=work / "ft56", overrides=budget + labels + [f"optim.lr={ft['chosen_lr']}"])
            row["finetune_56px"] = {"test_top1": ft2["test"]["top1"], "lr": ft["chosen_lr"], "wall_s": ft2["train_wall_s"]}
        scratch = arch + budget + labels + ["data.name=digits", "data.image_size=28", "data.crop=pad", "data.crop_padding=2"]
        sc = train(apply_overrides(get_recipe("quickstart"), scratch), out=work / f"scratch_adamw{n}")
        row["scratch_adamw_28px"] = {"test_top1": sc["test"]["top1"], "lr": 1e-3}
        sgd = {}
        for lr in lrs:
            r = train(apply_overrides(get_recipe("quickstart"), scratch + ["optim.name=sgd", f"optim.lr={lr}", "optim.weight_decay=0",
                                                                           "optim.momentum=0.9", "optim.clip_norm=1.0"]),
                      out=work / f"scratch_sgd{n}_{lr:g}")
            sgd[f"{lr:g}"] = {"val_top1": r["val"]["top1"], "val_loss": r["val"]["loss"], "test_top1": r["test"]["top1"]}
        lr, acc = best_of(sgd)
        row["scratch_sgd_28px"] = {"test_top1": acc, "chosen_lr": float(lr), "sweep": sgd}
        out[key] = row
        print(json.dumps({key: row}, indent=2), flush=True)

    # few-shot: frozen features of the pre-trained model vs randomly initialised ones of the same shape (3 inits)
    shots = [1, 5, 10, 25]
    out["fewshot_pretrained"] = fewshot_model(pre, "digits", shots, seeds=3)["shots"]
    rand = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = vitkit.create_model(fm.model.name, num_classes=10, image_size=28, in_chans=1, **fm.model.overrides())
        vitkit.save_model(m, work / f"random{seed}", preprocess={"image_size": 28, "normalize": "google", "in_chans": 1})
        rand.append(fewshot_model(work / f"random{seed}", "digits", shots, seeds=3)["shots"])
    out["fewshot_random_init"] = {str(s): {"mean": statistics.mean(r[str(s)]["mean"] for r in rand),
                                           "per_init": [r[str(s)]["mean"] for r in rand]} for s in shots}
    for v in out["fewshot_pretrained"].values():
        v.pop("runs", None)
    from vitkit import runtime

    out["hardware"] = runtime.describe()
    (HERE / "results" / "transfer.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
