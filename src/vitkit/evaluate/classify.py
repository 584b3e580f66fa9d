"""Top-1 / top-5 accuracy (and loss) of a classifier over a whole split."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.runtime import model_device
from vitkit.train.precision import autocast


@torch.inference_mode()
def evaluate_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32",
                  num_classes: int | None = None, keep_top1: bool = False) -> dict[str, torch.Tensor] | None:
    """The device side of `evaluate`: batches moved to the model's device, every count and the confusion
    matrix accumulated there, nothing synchronised; None for no batches. `keep_top1`: also every image's top-1
    class, in order ("top1_pred", a list of tensors)."""
    from vitkit.data.loader import to_device

    dev = model_device(model)
    was_training = model.training
    model.eval()
    sums = None
    try:
        for x, y in batches:
            x, y = to_device(x, dev), to_device(y, dev)
            with autocast(precision, dev.type):
                logits = model(x)
            logits = logits.float()
            k = logits.shape[1]
            if sums is None:
                kk = num_classes or k
                zero = torch.zeros((), dtype=torch.float64, device=logits.device)
                sums = {"loss": zero, "correct1": zero.clone(), "correct5": zero.clone(), "n": zero.clone(),
                        "confusion": torch.zeros(kk, kk, dtype=torch.long, device=logits.device)}
                if keep_top1:  # only then: every other value is a tensor on the model's device
                    sums["top1_pred"] = []
            sums["loss"] += F.cross_entropy(logits, y, reduction="sum")
            top = logits.topk(min(5, k), dim=1).indices
            sums["correct1"] += (top[:, 0] == y).sum()
            sums["correct5"] += (top == y[:, None]).any(dim=1).sum()
            sums["confusion"].index_put_((y, top[:, 0]), torch.ones_like(y), accumulate=True)
            if keep_top1:
                sums["top1_pred"].append(top[:, 0])
            sums["n"] += len(y)
    finally:
        model.train(was_training)
    return sums


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32",
             num_classes: int | None = None, keep_top1: bool = False) -> dict:
    """{"top1", "top5", "loss", "n"} and a confusion matrix ("confusion": K x K counts, rows = truth), on
    the model's device (GPU or CPU) with one synchronisation at the end; `keep_top1`: also "top1_pred", every image's
    top-1 class in order."""
    sums = evaluate_sums(model, batches, precision, num_classes, keep_top1)
    if sums is None:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0, "confusion": []}
    n = int(sums["n"].item())
    res = {"top1": sums["correct1"].item() / n, "top5": sums["correct5"].item() / n, "loss": sums["loss"].item() / n,
           "n": n, "confusion": sums["confusion"].cpu().tolist()}
    if keep_top1:
        res["top1_pred"] = torch.cat(sums["top1_pred"]).cpu().tolist()
    return res
