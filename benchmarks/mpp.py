"""Masked patch prediction on Fashion-MNIST (issue 6): pre-train by masked patch prediction on the
images (labels unused), then fine-tune with a limited label budget, against the same ViT trained from
scratch on the same labels with the same budget.

    python benchmarks/mpp.py                      # pre-trains (recipe mpp-fashion-mnist), then the label-budget runs
    python benchmarks/mpp.py --pretrained RUN     # reuse a pre-trained run

Writes benchmarks/results/mpp.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

from vitkit.config import apply_overrides
from vitkit.recipes import get_recipe
from vitkit.train.finetune import finetune
from vitkit.train.loop import train

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", help="an mpp-fashion-mnist run directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for the pre-training")
    ap.add_argument("--labels", default="100,1000", help="labelled images per class")
    ap.add_argument("--steps", type=int, default=300, help="steps of 128 images for every label-budget run")
    ap.add_argument("--ft-lrs", default="0.01,0.03,0.1", help="fine-tuning LR sweep (SGD), picked on validation")
    args = ap.parse_args()
    out: dict = {"command": "python benchmarks/mpp.py" + "".join(f" --set {s}" for s in args.set), "date": f"{datetime.now():%Y-%m-%d}"}
    if args.pretrained:
        pre = Path(args.pretrained)
    else:
        pre = HERE / "runs" / f"mpp-fashion-mnist-{datetime.now():%Y%m%d-%H%M%S}"
        t = time.perf_counter()
        res = train(apply_overrides(get_recipe("mpp-fashion-mnist"), ["train.progress=false", *args.set]), out=pre)
        out["pretrain"] = {"run_dir": str(pre), "wall_s": time.perf_counter() - t, "epochs": res["epochs"],
                           "val_mpp_acc": res["val"]["mpp_acc"], "test_mpp_acc": res["test"]["mpp_acc"]}
    pre_metrics = json.loads((pre / "metrics.json").read_text())
    out.setdefault("pretrain", {"run_dir": str(pre), "test_mpp_acc": pre_metrics["test"]["mpp_acc"]})
    work = Path(tempfile.mkdtemp(prefix="vitkit-mpp-"))
    budget = [f"train.steps={args.steps}", "train.batch_size=128", "train.progress=false", "train.precision=bf16"]
    fm = get_recipe("fashion-mnist")
    for n in [int(v) for v in args.labels.split(",")]:
        labels = [f"data.labels_per_class={n}"]
        ft = finetune(str(pre), "fashion-mnist", out=work / f"ft{n}",
                      overrides=budget + labels + ["data.crop=pad", "data.crop_padding=2"],
                      lr_sweep=[float(v) for v in args.ft_lrs.split(",")])
        sc = train(apply_overrides(fm, budget + labels + ["train.epochs=0", "data.crop=pad", "data.crop_padding=2"]),
                   out=work / f"scratch{n}")
        out[f"{n}_labels_per_class"] = {"mpp_then_finetune": ft["test"]["top1"], "finetune_chosen_lr": ft["chosen_lr"],
                                         "finetune_sweep": ft["lr_sweep"], "scratch": sc["test"]["top1"]}
        print(json.dumps(out, indent=2))
    from vitkit import runtime

    out["hardware"] = runtime.describe()
    (HERE / "results" / "mpp.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
