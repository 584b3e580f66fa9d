"""Run-directory logging: metrics.jsonl (one line per log step), TensorBoard when installed, and the
loss / accuracy figure."""
from __future__ import annotations

import json
from pathlib import Path

from vitkit.rundir import RunDir


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int = 0):
        self.path = run_dir / RunDir.METRICS_LOG
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step and self.path.exists():  # drop lines a killed run wrote after its last checkpoint (those up to it were written before it)
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / RunDir.TENSORBOARD))
        except ImportError:
            self.tb = None

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "split"):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / RunDir.METRICS_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_curves(run_dir: Path, title: str = "") -> Path | None:
    """curves.png: training loss and validation top-1 against steps."""
    try:
        from vitkit.figures import figure, save_png

        fig = figure(figsize=(10, 3.8))
    except ImportError:
        return None
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["split"] == "train" and "loss" in r]
    val = [r for r in rows if r["split"] == "val" and "top1" in r]
    a, b = fig.subplots(1, 2)
    if train:
        a.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1.2, label="train loss")
    if val and "loss" in val[0]:
        a.plot([r["step"] for r in val], [r["loss"] for r in val], lw=1.2, marker=".", label="val loss")
    a.set_xlabel("step"), a.set_ylabel("loss"), a.grid(alpha=0.3)
    if train and "acc" in train[0]:
        b.plot([r["step"] for r in train], [r["acc"] for r in train], lw=1.0, alpha=0.6, label="train top-1 (batch)")
    if val:
        b.plot([r["step"] for r in val], [r["top1"] for r in val], lw=1.5, marker=".", label="val top-1")
    b.set_xlabel("step"), b.set_ylabel("accuracy"), b.grid(alpha=0.3)
    for ax in (a, b):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, run_dir / RunDir.CURVES, dpi=110)
