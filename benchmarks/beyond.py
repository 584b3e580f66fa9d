"""Beyond the paper (issue 26): semantic segmentation and object detection on the canvas task in a stated CPU budget,
and multitask learning against each task alone at the same total compute.

Runs (each a `vitkit train` run directory under OUT/runs/, reused when finished, so rerunning resumes):
- seg: `--recipe seg-canvas` (SETR's progressive head on a small ViT, 64 px canvases), --seg-steps steps of 64;
- det: `--recipe det-canvas` (ViTDet's simple feature pyramid into torchvision's FCOS), --det-steps steps of 64;
- multitask: `--recipe multitask` (Fashion-MNIST classes, digits classes, canvas segmentation on one ViT at 64 px),
  --mt-steps steps of 96 images, 32 of each task;
- single-TASK: the same recipe with that task alone (multitask.tasks=TASK), --mt-steps steps of 32 images: the three
  together see the joint run's images and spend its compute (the encoder runs once per image either way).
Every run has the same seed per repeat; --seeds repeats the multitask comparison.

Writes OUT/beyond.json (each run's test scores, training time, images/s, counted training FLOPs) and OUT/beyond.png
(the scores of joint vs single-task training per task; segmentation and detection examples on test canvases).

    python benchmarks/beyond.py --out benchmarks/runs/beyond    # the README's figures: see its "Beyond the paper"
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
TASKS = ("fashion-mnist", "digits", "canvas")
MAIN = {"fashion-mnist": "top1", "digits": "top1", "canvas": "miou"}


def run(name: str, recipe: str, sets: list[str], out: Path) -> dict:
    """The run `name` (reused when it finished), its metrics.json."""
    from vitkit.recipes import build
    from vitkit.train.loop import train

    d = out / "runs" / name
    if (d / "metrics.json").exists():
        print(f"{name}: finished already ({d})")
    else:
        cfg = build(recipe, [*sets, "train.progress=true"])
        t0 = time.perf_counter()
        train(cfg, d, resume=d if (d / "config.json").exists() else None, overwrite=False)
        print(f"{name}: {time.perf_counter() - t0:.0f} s")
    return json.loads((d / "metrics.json").read_text())


def summary(m: dict) -> dict:
    keep = {k: m[k] for k in ("steps", "train_wall_s", "train_img_per_s") if k in m}
    keep["exaflops"] = m.get("compute", {}).get("exaflops")
    keep["test"] = {k: v for k, v in m["test"].items() if not isinstance(v, list)}
    return keep


def examples(seg_run: Path, det_run: Path, n: int = 6) -> dict:
    """n test canvases: their true masks, the segmentation model's and the detector's boxes (for the figure)."""
    from vitkit.config import load_config
    from vitkit.convert.load import load
    from vitkit.data.dense import load_dense
    from vitkit.data.transforms import eval_batch, resize_batch

    cfg = load_config(seg_run / "config.json")
    ds = load_dense(cfg.data, "segmentation", only="test")
    images, masks = ds.test.images[:n], ds.test.masks[:n].long()
    seg, _ = load(seg_run)
    det, _ = load(det_run)
    with torch.no_grad():
        x = eval_batch(resize_batch(images, cfg.data.image_size), cfg.data)
        pred = seg.eval()(x).argmax(1)
        boxes = det.eval()(list(images))  # uint8 images: the detector normalises and resizes them itself
    return {"images": images, "masks": masks, "pred": pred, "boxes": boxes, "classes": ds.classes,
            "truth": [ds.test.targets(i) for i in range(n)]}


def figure(res: dict, ex: dict | None, path: Path) -> None:
    import matplotlib.patches as patches
    from torchvision.ops import nms

    from vitkit.evaluate.predict import palette
    from vitkit.figures import figure as new_figure
    from vitkit.figures import save_png

    rows = 3 if ex is not None else 1
    fig = new_figure(figsize=(12, 3.4 * rows))
    grid = fig.add_gridspec(rows, 6)
    ax = fig.add_subplot(grid[0, :])
    names = [t for t in TASKS if t in res["multitask"]["joint"]]
    width = 0.38
    for j, (label, key) in enumerate((("joint (one encoder, three heads)", "joint"), ("each task alone", "single"))):
        means = [100 * statistics.fmean(res["multitask"][key][t]) for t in names]
        spread = [100 * statistics.stdev(res["multitask"][key][t]) if len(res["multitask"][key][t]) > 1 else 0 for t in names]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(names))], means, width, yerr=spread, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(names)), [f"{t} ({'top-1' if MAIN[t] == 'top1' else 'mIoU'})" for t in names])
    ax.set(ylabel="test score [%]", title="Multitask vs single-task training at the same total compute", ylim=(0, 100))
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    if ex is not None:
        colours = palette(len(ex["classes"])) / 255.0
        n = len(ex["images"])
        for i in range(n):
            a = fig.add_subplot(grid[1, i])
            img = ex["images"][i].float().mean(0).numpy() / 255.0
            pred = colours[ex["pred"][i].numpy()]
            a.imshow(0.5 * img[..., None] + 0.5 * pred)
            a.set_axis_off()
            a.set_title("segmentation" if i == 0 else "", fontsize=9, loc="left")
            b = fig.add_subplot(grid[2, i])
            b.imshow(img, cmap="gray")
            for box in ex["truth"][i]["boxes"]:
                x0, y0, x1, y1 = box.tolist()
                b.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=0.8))
            found = ex["boxes"][i]
            keep = found["scores"] >= 0.5  # shown: the confident boxes, overlaps of other classes suppressed
            keep = keep.nonzero().flatten()[nms(found["boxes"][keep], found["scores"][keep], 0.5)]
            for box, label in zip(found["boxes"][keep], found["labels"][keep]):
                x0, y0, x1, y1 = box.tolist()
                b.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2))
                b.text(x0, y0 - 1, ex["classes"][int(label)], color="yellow", fontsize=5)
            b.set_axis_off()
            b.set_title("detection, score 0.5 and up (dashed: truth)" if i == 0 else "", fontsize=9, loc="left")
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "runs" / "beyond")
    p.add_argument("--seg-steps", type=int, default=800)
    p.add_argument("--det-steps", type=int, default=300)
    p.add_argument("--mt-steps", type=int, default=800)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--only", default="seg,det,multitask")
    p.add_argument("--results", type=Path, default=HERE / "results" / "beyond.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run (e.g. a smoke test: --set data.canvas.train=64)")
    args = p.parse_args()
    only = set(args.only.split(","))
    from vitkit import runtime

    res: dict = {"machine": runtime.summary(runtime.describe()), "runs": {}}
    log = lambda s: [f"train.steps={s}", f"train.log_every={max(1, s // 20)}", f"train.eval_every={s}",  # noqa: E731
                     f"train.ckpt_every={max(1, s // 4)}", *args.set]
    if "seg" in only:
        res["runs"]["seg"] = summary(run("seg", "seg-canvas", log(args.seg_steps), args.out))
    if "det" in only:
        res["runs"]["det"] = summary(run("det", "det-canvas", log(args.det_steps), args.out))
    if "multitask" in only:
        res["multitask"] = {"joint": {t: [] for t in TASKS}, "single": {t: [] for t in TASKS}}
        for s in range(args.seeds):
            seed = [f"train.seed={s}"]
            joint = run(f"multitask-s{s}", "multitask", log(args.mt_steps) + seed, args.out)
            res["runs"][f"multitask-s{s}"] = summary(joint)
            for t in TASKS:
                res["multitask"]["joint"][t].append(joint["test"][t][MAIN[t]])
                single = run(f"single-{t}-s{s}", "multitask", log(args.mt_steps) + seed + [f"multitask.tasks={t}",
                                                                                          "train.batch_size=32"], args.out)
                res["runs"][f"single-{t}-s{s}"] = summary(single)
                res["multitask"]["single"][t].append(single["test"][t][MAIN[t]])
        joint_s = sum(res["runs"][f"multitask-s{s}"]["train_wall_s"] for s in range(args.seeds))
        single_s = sum(res["runs"][f"single-{t}-s{s}"]["train_wall_s"] for t in TASKS for s in range(args.seeds))
        res["multitask"]["train_s"] = {"joint": joint_s, "single (all three)": single_s}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    from vitkit.atomic import write_text

    write_text(args.results, json.dumps(res, indent=2) + "\n")
    ex = examples(args.out / "runs" / "seg", args.out / "runs" / "det") if {"seg", "det"} <= only else None
    if "multitask" in only:
        figure(res, ex, args.results.with_suffix(".png"))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    for name, r in res["runs"].items():
        print(name, {k: r["test"].get(k) for k in ("miou", "map", "map_50", "score")}, f"{r['train_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
