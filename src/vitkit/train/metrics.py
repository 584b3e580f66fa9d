"""Run-directory logging: metrics.jsonl (one line per log step and split), TensorBoard when installed, and the
loss / accuracy figure."""
from __future__ import annotations

import json
from pathlib import Path

from vitkit.rundir import RunDir, finite, to_json


class MetricsLogger:
    """metrics.jsonl holds at most one line per (step, split), in strict JSON (a non-finite number is null): a
    resumed run (`resume_step`, the step of its checkpoint; 0 for a run started again) first drops the lines a
    killed process wrote after that step, and a line already there (the final validation of a run killed while
    evaluating) is not written again."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None):
        self.path = run_dir / RunDir.METRICS_LOG
        self.enabled = enabled
        self.tb = None
        self.logged: set[tuple[int, str]] = set()
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [row for row in _rows(self.path) if row.get("step", 0) <= resume_step]
            from vitkit.atomic import write_text

            write_text(self.path, "".join(to_json(row) + "\n" for row in kept))
            self.logged = {(row.get("step", 0), row.get("split")) for row in kept}
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / RunDir.TENSORBOARD))
        except ImportError:
            self.tb = None

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled or (step, split) in self.logged:
            return
        self.logged.add((step, split))
        row = {"step": step, "split": split, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        with open(self.path, "a") as f:
            f.write(to_json(row) + "\n")
        if self.tb is not None:
            for k, v in finite(row).items():
                if k not in ("step", "split") and v is not None:
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _rows(path: Path) -> list[dict]:
    """The lines of a metrics.jsonl; a last line without its newline (a process killed while writing it) is left out."""
    text = path.read_text()
    lines = text.split("\n")[:-1]  # what follows the last newline is incomplete, or empty
    rows = []
    for i, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {i} is not JSON ({err}); remove or repair that line, then run again") from None
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / RunDir.METRICS_LOG
    return _rows(path) if path.exists() else []


def plot_curves(run_dir: Path, title: str = "") -> Path | None:
    """curves.png: training loss (a multitask run's per task too) and the validation score (top-1, mIoU, each task's)
    against steps."""
    try:
        from vitkit.figures import figure, save_png

        fig = figure(figsize=(10, 3.8))
    except ImportError:
        return None
    # a number the log holds as null (it was not finite) is a gap in the curve
    rows = [{k: float("nan") if v is None else v for k, v in r.items()} for r in read_metrics(run_dir)]
    train = [r for r in rows if r["split"] == "train" and "loss" in r]
    val = [r for r in rows if r["split"] == "val"]
    # the validation score: top-1, a segmentation's mIoU, or each task's of a multitask run (NAME/top1, NAME/miou)
    keys = next(([k] for k in ("top1", "miou") if val and k in val[0]), None)
    if keys is None:
        keys = [k for k in (val[0] if val else {}) if k.endswith(("/top1", "/miou"))]
    val = [r for r in val if all(k in r for k in keys)] if keys else []
    a, b = fig.subplots(1, 2)
    task_losses = [k for k in (train[0] if train else {}) if k.startswith("loss_")]  # multitask: each task's
    for k in ["loss", *task_losses]:
        if train:
            a.plot([r["step"] for r in train], [r.get(k, float("nan")) for r in train], lw=1.2 if k == "loss" else 0.9,
                   label="train loss" if k == "loss" else f"train loss ({k[5:]})")
    if val and "loss" in val[0]:
        a.plot([r["step"] for r in val], [r["loss"] for r in val], lw=1.2, marker=".", label="val loss")
    a.set_xlabel("step"), a.set_ylabel("loss"), a.grid(alpha=0.3)
    if train and "acc" in train[0]:
        b.plot([r["step"] for r in train], [r["acc"] for r in train], lw=1.0, alpha=0.6,
               label="train pixel accuracy (batch)" if keys == ["miou"] else "train top-1 (batch)")
    for k in keys:
        label = {"top1": "val top-1", "miou": "val mIoU"}.get(k, f"val {k.replace('/top1', ' top-1').replace('/miou', ' mIoU')}")
        b.plot([r["step"] for r in val], [r[k] for r in val], lw=1.5, marker=".", label=label)
    b.set_xlabel("step"), b.set_ylabel("accuracy" if keys in ([], ["top1"]) else "score"), b.grid(alpha=0.3)
    for ax in (a, b):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, run_dir / RunDir.CURVES, dpi=110)
