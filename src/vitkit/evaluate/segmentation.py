"""Semantic-segmentation scores: mIoU, per-class IoU, pixel accuracy and mean class accuracy, from one confusion
matrix of pixel counts accumulated over a whole split.

The rules are mmseg's and torchmetrics' (MulticlassJaccardIndex, average="macro"): pixels whose target is the ignore
index count nowhere; a class's IoU is TP / (TP + FP + FN) over the whole split (not a mean of per-image IoUs); a class
with no pixel in the targets nor in the predictions (union 0) has no IoU (None) and is left out of the mean. Mean class
accuracy is the mean over the classes present in the targets of TP / (their pixels).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.data.masks import IGNORE_INDEX
from vitkit.runtime import model_device
from vitkit.train.precision import autocast


class ConfusionMatrix:
    """Pixel counts (K, K), rows the target class, columns the predicted one, kept on the device the batches come on
    (no synchronisation until `compute`)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: one class at least")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix: torch.Tensor | None = None
        self._bad: torch.Tensor | None = None  # (target, prediction) pixels outside 0..K-1, the ignored ones aside

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """`pred`: class indices (B, H, W), or logits (B, K, H', W'), resized bilinearly to the target's size when it
        differs (as mmseg scores a prediction at the annotation's size); `target`: class indices (B, H, W)."""
        K = self.num_classes
        if pred.ndim == target.ndim + 1:
            if pred.shape[1] != K:
                raise ValueError(f"logits have {pred.shape[1]} classes, the confusion matrix {K}")
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        t, p = target.long().flatten(), pred.long().flatten().to(target.device)
        valid = t != self.ignore_index
        in_range = (t >= 0) & (t < K)
        if self.matrix is None:
            self.matrix = torch.zeros(K, K, dtype=torch.long, device=t.device)
            self._bad = torch.zeros(2, dtype=torch.long, device=t.device)
        p_in_range = (p >= 0) & (p < K)
        self._bad += torch.stack([(valid & ~in_range).sum(), (valid & in_range & ~p_in_range).sum()])
        keep = valid & in_range & p_in_range
        self.matrix += torch.bincount(t[keep] * K + p[keep], minlength=K * K).reshape(K, K)

    def compute(self, class_names: list[str] | None = None) -> dict:
        if self.matrix is None:
            self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        else:
            bad_target, bad_pred = self._bad.tolist()
            if bad_target:
                raise ValueError(f"{bad_target} target pixels hold a class outside 0-{self.num_classes - 1} and are not the "
                                 f"ignore index {self.ignore_index}; check the masks' classes and the ignore index")
            if bad_pred:
                raise ValueError(f"{bad_pred} predicted pixels hold a class outside 0-{self.num_classes - 1}; the model "
                                 f"predicts more classes than the confusion matrix counts")
        return segmentation_scores(self.matrix, class_names)


def _nanmean(v: torch.Tensor) -> float:
    v = v[~v.isnan()]
    return float(v.mean()) if v.numel() else float("nan")


def segmentation_scores(confusion: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """{"miou", "pixel_acc", "mean_acc", "iou" and "acc" per class (None where the class has none), "pixels"} of a
    confusion matrix (K, K), rows = target (module docstring). With `class_names`, the per-class values are keyed
    by name."""
    cm = confusion.detach().double().cpu()
    tp = cm.diagonal()
    target, predicted = cm.sum(1), cm.sum(0)
    union = target + predicted - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(target > 0, tp / target.clamp(min=1), nan)
    total = float(cm.sum())
    per = lambda v: [None if x != x else float(x) for x in v.tolist()]  # noqa: E731 - NaN -> None (JSON has no NaN)
    out = {"miou": _nanmean(iou), "pixel_acc": float(tp.sum()) / total if total else float("nan"), "mean_acc": _nanmean(acc),
           "iou": per(iou), "acc": per(acc), "pixels": int(total)}
    if class_names is not None:
        if len(class_names) != cm.shape[0]:
            raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
        out["iou"] = dict(zip(class_names, out["iou"]))
        out["acc"] = dict(zip(class_names, out["acc"]))
    return out


@torch.inference_mode()
def evaluate_segmentation(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                          ignore_index: int = IGNORE_INDEX, precision: str = "fp32",
                          class_names: list[str] | None = None) -> dict:
    """`segmentation_scores` of a model (images -> logits (B, K, H, W)) over (images, masks) batches, plus "loss" (the
    mean cross-entropy over the scored pixels), "n" (images) and "confusion" (the K x K pixel counts, rows = target),
    on the model's device."""
    from vitkit.data.loader import to_device
    from vitkit.heads.segmentation import segmentation_loss

    dev = model_device(model)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    pixels = torch.zeros((), dtype=torch.float64, device=dev)
    n = 0
    try:
        for x, masks in batches:
            x, masks = to_device(x, dev), to_device(masks, dev)
            with autocast(precision, dev.type):
                logits = model(x)
            logits = logits.float()
            if logits.shape[-2:] != masks.shape[-2:]:
                logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
            counted = (masks != ignore_index).sum()
            loss_sum += segmentation_loss(logits, masks, ignore_index) * counted
            pixels += counted
            cm.update(logits, masks)
            n += len(x)
    finally:
        model.train(was_training)
    out = cm.compute(class_names)
    out["confusion"] = cm.matrix.cpu().tolist()
    out["loss"] = float(loss_sum / pixels.clamp(min=1)) if n else float("nan")
    out["n"] = n
    return out
