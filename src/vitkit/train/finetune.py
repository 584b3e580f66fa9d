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
from vitkit.recipes.finetune import DERIVED, dataset_key, finetune as finetune_recipe
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


# The paper's evaluation protocols (appendix B.1.1 and section 4.1):
# - "sweep": each LR of the sweep trained on the training split minus validation; the best on validation is the run.
# - "paper": the LR grid of the paper's table 4 (ImageNet {0.003, 0.01, 0.03, 0.06}, else {0.001, 0.003, 0.01, 0.03})
#   unless one is given, chosen on a dev split of the paper's size (2% of ImageNet's training set, 10% of the
#   others'), then the chosen LR trained on the whole training set: that run is the result; a model pre-trained at
#   224 px or more is fine-tuned at 384 px unless a resolution is given.
# - "vtab1k": VTAB-1k, 1,000 training images per task (data.train_subset); with an LR sweep, chosen on 800 / 200 of
#   them and retrained on all 1,000; without one, the paper's fixed LR 0.01; 2,500 steps (table 4) unless set.
PROTOCOLS = ("sweep", "paper", "vtab1k")
PAPER_GRID = {"imagenet": [0.003, 0.01, 0.03, 0.06]}
DEFAULT_GRID = [0.001, 0.003, 0.01, 0.03]
DEV_FRACTION = {"imagenet": 0.02}  # the paper's dev split; 10% for the others
VTAB_TRAIN, VTAB_VAL, VTAB_LR, VTAB_STEPS = 1000, 200, 0.01, 2500
PAPER_RESOLUTION = 384  # "paper": the default fine-tuning resolution of a model pre-trained at 224 px or more (section 3.2)


def finetune(src: str, data: str, resolution: int | None = None, overrides: list[str] | None = None,
             out: str | Path | None = None, lr_sweep: list[float] | None = None, overwrite: bool = False,
             protocol: str | None = None) -> dict[str, Any]:
    """Fine-tune `src` on `data` with the paper's recipe (`overrides` as --set; `overwrite`: an existing run directory
    at `out` is replaced); with `lr_sweep`, one run per LR and the best on validation kept as the run directory;
    `protocol` "paper" or "vtab1k" (PROTOCOLS): choose the LR on a dev split, then train on the whole training set."""
    if resolution is not None:
        check_argument("resolution", resolution)
    for lr in lr_sweep or []:
        check_argument("lr", lr)
    if protocol not in (None, *PROTOCOLS):
        raise ValueError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    source, card = load(src)  # to read its resolution, preprocessing and architecture, and to fail early on a bad file
    size = resolution or card.preprocess.image_size[0]
    if protocol == "paper" and resolution is None and size >= 224:  # the paper fine-tunes ImageNet-scale models at 384 px
        size = PAPER_RESOLUTION
    normalize = card.preprocess.normalize
    overrides = list(overrides or [])
    given = {o.split("=", 1)[0].strip() for o in overrides}
    key = dataset_key(data)
    select, final = [], None  # extra overrides of the selection runs; of the final run (None: the best selection run)
    if protocol == "paper":
        lr_sweep = lr_sweep or PAPER_GRID.get(key, DEFAULT_GRID)
        select, final = [f"data.val_fraction={DEV_FRACTION.get(key, 0.1)}"], ["data.val_fraction=0"]
    elif protocol == "vtab1k":
        base = [f"data.train_subset={VTAB_TRAIN}", "data.val_fraction=0"] + ([] if "train.steps" in given else [f"train.steps={VTAB_STEPS}"])
        if not lr_sweep:  # the paper's: no selection, the fixed LR on all 1,000
            overrides = base + ([] if "optim.lr" in given else [f"optim.lr={VTAB_LR}"]) + overrides
        else:
            select, final, overrides = [f"data.val_size={VTAB_VAL}"], [], base + overrides
    cfg = _recipe(str(src), data, size, normalize, overrides + select)
    name = getattr(source.config, "name", None) or type(source).__name__  # what the file holds, not the recipe's placeholder
    cfg.model.name = name
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
        results[f"{lr:g}"] = {"val_top1": val.get("top1"), "val_loss": val.get("loss"), "test_top1": res["test"]["top1"],
                              "val_images": val.get("n")}
    ran = [k for k in results if "diverged" not in results[k]]
    if not ran:
        raise Diverged(f"LR sweep {', '.join(results)}: every learning rate diverged (see {run / 'sweep'}); sweep lower ones")
    # validation top-1, ties (common on small validation splits) broken by the lower validation loss; a missing
    # (null: not finite) number loses
    def rank(k: str) -> tuple[float, float]:
        top1, loss = results[k]["val_top1"], results[k]["val_loss"]
        return (top1 if top1 is not None else -1.0, -loss if loss is not None else float("-inf"))

    best = max(ran, key=rank)
    chosen = run / "sweep" / f"lr_{best}"
    if final is not None:  # the protocol's last step: the chosen LR on the whole training set
        cfg = _recipe(str(src), data, size, normalize, overrides + final + [f"optim.lr={best}"])
        cfg.model.name = name
        print(f"LR sweep: chose {best} by validation top-1 ({rank(best)[0]:.4f}); training on the whole training set")
        train(cfg, out=run / "final")
        chosen = run / "final"
    for item in chosen.iterdir():  # the chosen (or final) run becomes the run directory's own
        os.replace(item, run / item.name)
    shutil.rmtree(chosen)
    how = {"chosen_lr": float(best), "by": "val top-1, then val loss", "runs": results, "protocol": protocol or "sweep",
           "final": "the chosen LR retrained on the whole training set" if final is not None else "the best sweep run"}
    write_text(run / "sweep.json", to_json(how, indent=2))
    result = json.loads(RunDir(run).metrics.read_text())
    print(f"LR sweep: chose {best} by validation top-1 ({rank(best)[0]:.4f}); run directory: {run}")
    return {**result, "lr_sweep": results, "chosen_lr": float(best), "protocol": protocol or "sweep", "run_dir": str(run)}
