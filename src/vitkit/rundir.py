"""The run directory: its layout and its rules, in one place.

    RUN/
      config.json     the resolved config, written before the first step (a resumed run reads it back)
      metrics.jsonl   one line per logged step (train and val)
      metrics.json    the final results
      curves.png      loss and accuracy against steps
      checkpoint/     model.safetensors + config.json (what `load_model(RUN)` reads) and the state to resume from
      tensorboard/    when TensorBoard is installed

Rules: a new run never reuses a non-empty directory; a resumed run keeps its configuration except RESUME_KEYS
(how it runs, not what it computes); every file is written atomically (vitkit.atomic).
"""
from __future__ import annotations

from dataclasses import dataclass
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

# What a resumed run may change: how it runs, not what it computes.
RESUME_KEYS = ("train.parallel", "train.threads", "train.progress", "train.stop_at_step", "train.activation_checkpointing",
               "train.micro_batch_size", "train.eval_batch_size", "train.compile", "data.workers", "train.device", "train.tf32")


@dataclass(frozen=True)
class RunDir:
    path: Path

    CONFIG: ClassVar[str] = "config.json"
    METRICS_LOG: ClassVar[str] = "metrics.jsonl"
    METRICS: ClassVar[str] = "metrics.json"
    CURVES: ClassVar[str] = "curves.png"
    CHECKPOINT: ClassVar[str] = "checkpoint"
    TENSORBOARD: ClassVar[str] = "tensorboard"

    @classmethod
    def new(cls, out: str | Path | None, recipe: str, replace: bool = False) -> "RunDir":
        """A fresh run directory (default runs/RECIPE-TIME); an existing non-empty one is never reused silently:
        `replace` (--force) removes it first, and only if it is a vitkit run directory (it has a config.json)."""
        run = Path(out) if out else Path("runs") / f"{recipe}-{datetime.now():%Y%m%d-%H%M%S}"
        if run.exists() and any(run.iterdir()):
            if not replace:
                raise FileExistsError(f"{run} already exists and is not empty; continue it with `vitkit train --resume {run}`, "
                                      f"choose another --out, or pass --force to replace it")
            if not (run / cls.CONFIG).is_file():
                raise FileExistsError(f"{run} is not a vitkit run directory (no {cls.CONFIG}); --force replaces run "
                                      f"directories only: choose another --out")
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        return cls(run)

    @classmethod
    def resume(cls, path: str | Path, overrides: list[str] | None = None):
        """The run at `path` and its configuration, with `overrides` of RESUME_KEYS only applied."""
        from vitkit.config import apply_overrides, load_config

        run = cls(Path(path))
        if not run.config.exists():
            raise FileNotFoundError(f"{run.path}: not a run directory (no {cls.CONFIG}); start one with `vitkit train --out {run.path}`")
        cfg = load_config(run.config)
        for o in overrides or []:
            if o.split("=", 1)[0].strip() not in RESUME_KEYS:
                raise ValueError(f"--set {o}: a resumed run keeps its configuration; only {', '.join(RESUME_KEYS)} may change")
        return run, apply_overrides(cfg, overrides or [])

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_log(self) -> Path:
        return self.path / self.METRICS_LOG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    def write_config(self, cfg: Any) -> None:
        from vitkit.atomic import write_json

        write_json(self.config, cfg.to_dict())

    def write_metrics(self, results: dict) -> None:
        from vitkit.atomic import write_json

        write_json(self.metrics, results)
