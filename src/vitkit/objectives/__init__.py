"""Training objectives: what the one training loop minimises. Each is a callable
`objective(model, x, y) -> (loss, metrics)`."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from vitkit.config import Config
from vitkit.objectives.classification import classification_loss, hard_labels

OBJECTIVES = ("classification", "mpp", "mae", "segmentation", "detection", "multitask")
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class Classification:
    main_metric = "top1"

    def __init__(self, loss: str = "softmax", smoothing: float = 0.0):
        self.loss, self.smoothing = loss, smoothing

    def evaluate(self, model: nn.Module, batches, precision: str = "fp32") -> dict:
        from vitkit.evaluate.classify import evaluate

        return evaluate(model, batches, precision)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(x)
        loss = classification_loss(logits, y, self.loss, self.smoothing)
        acc = (logits.detach().argmax(-1) == hard_labels(y)).float().mean()
        return loss, {"acc": acc}


def build_objective(cfg: Config, model: nn.Module, classes: list[str] | dict[str, list[str]] | None = None) -> Objective:
    """The objective of `cfg` for `model`; `classes`: the data's class names (segmentation and detection score each
    by name; multitask: each task's, by task name)."""
    if cfg.objective == "classification":
        return Classification(cfg.optim.loss, cfg.optim.label_smoothing)
    if cfg.objective == "mpp":
        from vitkit.objectives.mpp import MaskedPatchPrediction

        return MaskedPatchPrediction.from_config(cfg, model)
    if cfg.objective == "mae":
        from vitkit.objectives.mae import MaskedAutoencoder

        return MaskedAutoencoder.from_config(cfg, model)
    if cfg.objective == "segmentation":
        from vitkit.objectives.segmentation import Segmentation

        return Segmentation(model.num_classes, cfg.data.ignore_index, classes)
    if cfg.objective == "detection":
        from vitkit.objectives.detection import Detection

        return Detection(classes)
    if cfg.objective == "multitask":
        from vitkit.objectives.multitask import Multitask, parse_tasks, quotas

        plans = parse_tasks(cfg.multitask)
        return Multitask(plans, quotas(plans, cfg.train.batch_size), cfg.data.ignore_index, cfg.optim.loss,
                         cfg.optim.label_smoothing, classes if isinstance(classes, dict) else None)
    raise ValueError(f"objective={cfg.objective!r} is not one of {OBJECTIVES}")
