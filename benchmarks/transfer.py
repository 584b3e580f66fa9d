"""Transfer on real data (issue 5): a ViT pre-trained on Fashion-MNIST with vitkit, fine-tuned on
scikit-learn's digits (resized to the model's 28 px), against the same ViT trained from scratch on
digits with the same labels and budget; fine-tuning at twice the resolution; few-shot accuracy of the
pre-trained features against a randomly initialised ViT's.

    python benchmarks/train_recipe.py --recipe fashion-mnist      # the pre-trained model
    python benchmarks/transfer.py --pretrained benchmarks/runs/fashion-mnist-...

Writes benchmarks/results/transfer.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import vitkit
from vitkit.config import apply_overrides
from vitkit.evaluate.run import fewshot_model
from vitkit.recipes import get_recipe
from vitkit.train.finetune import finetune
from vitkit.train.loop import train

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", help="a Fashion-MNIST run directory (default: the newest under benchmarks/runs)")
    ap.add_argument("--steps", type=int, default=200, help="training steps for every digits run (the budget)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01, help="fine-tuning LR (SGD)")
    args = ap.parse_args()
    pre = Path(args.pretrained) if args.pretrained else sorted((HERE / "runs").glob("fashion-mnist-*"))[-1]
    work = Path(tempfile.mkdtemp(prefix="vitkit-transfer-"))
    budget = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", "train.progress=false", "train.micro_batch_size=0"]
    out: dict = {"pretrained": str(pre), "budget": f"{args.steps} steps x {args.batch} images on digits' 808 training images"}

    t = time.perf_counter()
    ft = finetune(str(pre), "digits", out=work / "ft28", overrides=budget + [f"optim.lr={args.lr}"])
    out["finetune_28px"] = {"test_top1": ft["test"]["top1"], "wall_s": time.perf_counter() - t}
    t = time.perf_counter()
    ft2 = finetune(str(pre), "digits", resolution=56, out=work / "ft56", overrides=budget + [f"optim.lr={args.lr}"])
    out["finetune_56px"] = {"test_top1": ft2["test"]["top1"], "wall_s": time.perf_counter() - t}

    # the same ViT from scratch, same labels and budget: its own best recipe (AdamW) and the fine-tuning one (SGD)
    fm = get_recipe("fashion-mnist")
    arch = [f"model.{k}={v}" for k, v in fm.model.overrides().items()] + [f"model.name={fm.model.name}"]
    scratch_sets = arch + budget + ["data.name=digits", "data.image_size=28", "data.crop=pad", "data.crop_padding=2"]
    t = time.perf_counter()
    sc = train(apply_overrides(get_recipe("quickstart"), scratch_sets), out=work / "scratch_adamw")
    out["scratch_adamw_28px"] = {"test_top1": sc["test"]["top1"], "wall_s": time.perf_counter() - t}
    sc2 = train(apply_overrides(get_recipe("quickstart"), scratch_sets + ["optim.name=sgd", f"optim.lr={args.lr}",
                                                                          "optim.weight_decay=0", "data.flip=true"]),
                out=work / "scratch_sgd")
    out["scratch_sgd_28px"] = {"test_top1": sc2["test"]["top1"]}

    # few-shot: frozen features of the pre-trained model vs a randomly initialised one of the same shape
    rand = vitkit.create_model(fm.model.name, num_classes=10, image_size=28, in_chans=1, **fm.model.overrides())
    vitkit.save_model(rand, work / "random")
    shots = [1, 5, 10, 25]
    out["fewshot_pretrained"] = fewshot_model(pre, "digits", shots, seeds=3)["shots"]
    out["fewshot_random_init"] = fewshot_model(work / "random", "digits", shots, seeds=3)["shots"]
    for r in (out["fewshot_pretrained"], out["fewshot_random_init"]):
        for v in r.values():
            v.pop("runs", None)
    out["command"] = "python benchmarks/transfer.py"
    (HERE / "results" / "transfer.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
