"""Train a recipe end to end and record its final-epoch test accuracy and wall time.

    python benchmarks/train_recipe.py --recipe fashion-mnist      # the README's Fashion-MNIST figure
    python benchmarks/train_recipe.py --recipe quickstart --baseline

Writes benchmarks/results/<recipe>.json (and the run directory under benchmarks/runs/).
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

from vitkit import runtime

runtime.configure_threads_env()  # as the `vitkit` command does, before torch starts: the figures are `vitkit train`'s

from vitkit.config import apply_overrides  # noqa: E402
from vitkit.recipes import get_recipe  # noqa: E402
from vitkit.train.loop import train  # noqa: E402

HERE = Path(__file__).parent


def machine() -> str:
    """The machine in one line (vitkit.runtime.summary): CPU model and kind, cores, torch, threads."""
    return runtime.summary()


def hardware() -> dict:
    """The full record (vitkit.runtime.describe): what the hardware has and what vitkit chose for it."""
    return runtime.describe()


def svc_baseline(cfg) -> dict:
    """A simple non-ViT baseline on the same split: scikit-learn's SVC on raw pixels."""
    from sklearn.svm import SVC

    from vitkit.data.datasets import load_dataset

    ds = load_dataset(cfg.data)
    flat = lambda s: s.images.reshape(len(s), -1).numpy() / 255.0 * 16  # noqa: E731 - digits' 0..16 scale
    t = time.perf_counter()
    clf = SVC(gamma=0.001).fit(flat(ds.train), ds.train.labels.numpy())
    acc = float((clf.predict(flat(ds.test)) == ds.test.labels.numpy()).mean())
    return {"model": "SVC(gamma=0.001) on raw pixels", "test_top1": acc, "wall_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="fashion-mnist")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--baseline", action="store_true", help="also fit an SVC on the same split")
    args = ap.parse_args()
    cfg = apply_overrides(get_recipe(args.recipe), args.set)
    run_dir = HERE / "runs" / f"{args.recipe}-{datetime.now():%Y%m%d-%H%M%S}"
    t = time.perf_counter()
    res = train(cfg, out=run_dir)
    wall = time.perf_counter() - t
    out = {"recipe": args.recipe, "overrides": args.set, "command": f"python benchmarks/train_recipe.py --recipe {args.recipe}"
           + "".join(f" --set {s}" for s in args.set), "machine": machine(), "hardware": hardware(), "date": f"{datetime.now():%Y-%m-%d}",
           "wall_s_total": wall, "train_wall_s": res["train_wall_s"], "epochs": res["epochs"],
           "train_img_per_s": res["train_img_per_s"], "test_top1": res["test"]["top1"], "test_top5": res["test"]["top5"],
           "val_top1": res.get("val", {}).get("top1"), "run_dir": str(run_dir)}
    if args.baseline:
        out["baseline"] = svc_baseline(cfg)
    path = HERE / "results" / f"{args.recipe}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
