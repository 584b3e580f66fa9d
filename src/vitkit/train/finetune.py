"""`vitkit finetune`: transfer any checkpoint load_model reads, with an optional LR sweep that picks on
the validation split."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from vitkit.config import Config, apply_overrides, check_argument
from vitkit.convert.load import load
from vitkit.recipes.finetune import DERIVED, finetune as finetune_recipe
from vitkit.rundir import RunDir, to_json
from vitkit.runtime import is_main_process
from vitkit.train.loop import Diverged, train
from vitkit.atomic import write_text


def _recipe(src: str, data: str, size: int, normalize: str, overrides: list[str]) -> Config:
    """The fine-tuning recipe with `overrides`; a new train.steps re-derives the schedule's other lengths (warm-up,
    validation, checkpoints, logs) unless they are set too, and says so."""
    cfg = apply_overrides(finetune_recipe(src, data, size, normalize), overrides)
    default = finetune_recipe(src, data, size, normalize).train.steps
    if cfg.train.steps == default:
        return cfg
    cfg = apply_overrides(finetune_recipe(src, data, size, normalize, steps=cfg.train.steps), overrides)
    given = {o.split("=", 1)[0].strip() for o in overrides}
    derived = [k for k in DERIVED if k not in given]
    if derived and is_main_process():
        values = {"optim.warmup_steps": cfg.optim.warmup_steps, "train.eval_every": cfg.train.eval_every,
                  "train.ckpt_every": cfg.train.ckpt_every, "train.log_every": cfg.train.log_every}
        print(f"finetune: {cfg.train.steps} steps (recipe: {default}); derived from them: "
              + ", ".join(f"{k}={values[k]}" for k in derived) + " (set any with --set to choose)")
    return cfg


def finetune(src: str, data: str, resolution: int | None = None, overrides: list[str] | None = None,
             out: str | Path | None = None, lr_sweep: list[float] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune `src` on `data` with the paper's recipe (`overrides` as --set; `overwrite`: an existing run directory
    at `out` is replaced); with `lr_sweep`, one run per LR and the best on validation kept as the run directory."""
    if resolution is not None:
        check_argument("resolution", resolution)
    for lr in lr_sweep or []:
        check_argument("lr", lr)
    source, card = load(src)  # to read its resolution, preprocessing and architecture, and to fail early on a bad file
    size = resolution or card.preprocess.image_size[0]
    normalize = card.preprocess.normalize
    cfg = _recipe(str(src), data, size, normalize, overrides or [])
    cfg.model.name = getattr(source.config, "name", None) or type(source).__name__  # what the file holds, not the recipe's placeholder
    if not lr_sweep:
        return train(cfg, out=out, overwrite=overwrite)
    run = RunDir.new(out, "finetune", replace=overwrite, keep=(src, data)).path
    results = {}
    for lr in lr_sweep:
        cfg.optim.lr = lr
        try:
            res = train(cfg, out=run / "sweep" / f"lr_{lr:g}")
        except Diverged as err:  # a sweep's high LRs may: recorded, left out of the choice
            print(f"LR sweep: lr {lr:g} diverged; left out ({err})")
            results[f"{lr:g}"] = {"diverged": str(err)}
            continue
        val = res.get("val", {})
        results[f"{lr:g}"] = {"val_top1": val.get("top1"), "val_loss": val.get("loss"), "test_top1": res["test"]["top1"]}
    ran = [k for k in results if "diverged" not in results[k]]
    if not ran:
        raise Diverged(f"LR sweep {', '.join(results)}: every learning rate diverged (see {run / 'sweep'}); sweep lower ones")
    # validation top-1, ties (common on small validation splits) broken by the lower validation loss; a missing
    # (null: not finite) number loses
    def rank(k: str) -> tuple[float, float]:
        top1, loss = results[k]["val_top1"], results[k]["val_loss"]
        return (top1 if top1 is not None else -1.0, -loss if loss is not None else float("-inf"))

    best = max(ran, key=rank)
    best_dir = run / "sweep" / f"lr_{best}"
    for item in best_dir.iterdir():  # the chosen run becomes the run directory's own
        os.replace(item, run / item.name)
    shutil.rmtree(best_dir)
    write_text(run / "sweep.json", to_json({"chosen_lr": float(best), "by": "val top-1, then val loss", "runs": results}, indent=2))
    final = json.loads(RunDir(run).metrics.read_text())
    print(f"LR sweep: chose {best} by validation top-1 ({rank(best)[0]:.4f}); run directory: {run}")
    return {**final, "lr_sweep": results, "chosen_lr": float(best), "run_dir": str(run)}
