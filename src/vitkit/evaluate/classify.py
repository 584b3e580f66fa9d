"""Top-1 / top-5 accuracy (and loss) of a classifier over a whole split."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.train.precision import autocast


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32",
             num_classes: int | None = None) -> dict:
    """{"top1", "top5", "loss", "n"} and a confusion matrix ("confusion": K x K counts, rows = truth)."""
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    confusion = None
    try:
        for x, y in batches:
            with autocast(precision, x.device.type):
                logits = model(x)
            logits = logits.float()
            k = logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(num_classes or k, num_classes or k, dtype=torch.long)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            top = logits.topk(min(5, k), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
            confusion.index_put_((y, top[:, 0]), torch.ones_like(y), accumulate=True)
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0, "confusion": []}
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "n": n, "confusion": confusion.tolist()}
