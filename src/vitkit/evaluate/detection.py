"""Detection scores: COCO's box mAP through torchmetrics' MeanAveragePrecision (its backend faster-coco-eval when
installed, else pycocotools: both compute COCO's own evaluation).

COCO's rules, as both backends follow them: AP is the area under the 101-point interpolated precision-recall curve
of each class, a detection matching the highest-scoring unmatched target of its class at IoU >= the threshold;
"map" is the mean over the IoU thresholds 0.50, 0.55, ..., 0.95 and over the classes that have targets; "map_50" and
"map_75" at one threshold; "map_small" / "medium" / "large" over the targets of area < 32^2, 32^2-96^2, > 96^2 px
(the targets' "area" when given, else their boxes'); "mar_1" / "mar_10" / "mar_100" the recall with at most that
many detections per image. Crowd targets ("crowd_boxes", as `coco_folder` gives them) are COCO's iscrowd regions: a
detection inside one counts neither right nor wrong. Detections of label 0 (the background, which FCOS's sigmoid
channel 0 may still score) are dropped before scoring.

A value COCO cannot compute (no target in that area range, a class only predicted) is -1 in COCO's and torchmetrics'
output; here it is None (JSON has no NaN, and a -1 averaged in elsewhere would be a silent error).
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from vitkit.runtime import model_device
from vitkit.train.precision import autocast

SUMMARY = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
           "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
INSTALL = "pip install torchmetrics faster-coco-eval (or torchmetrics pycocotools)"


def coco_backend() -> str:
    """The COCO evaluation torchmetrics runs: "faster_coco_eval" when installed (the same numbers, faster), else
    "pycocotools"; an ImportError naming the pip command when neither (or torchmetrics) is installed."""
    if importlib.util.find_spec("torchmetrics") is None:
        raise ImportError(f"detection scores need torchmetrics and a COCO evaluation backend: {INSTALL}")
    for module, name in (("faster_coco_eval", "faster_coco_eval"), ("pycocotools", "pycocotools")):
        if importlib.util.find_spec(module) is not None:
            return name
    raise ImportError(f"torchmetrics' mAP needs a COCO evaluation backend, faster-coco-eval or pycocotools: {INSTALL}")


def _value(v: float) -> float | None:
    return None if v < 0 or math.isnan(v) else float(v)  # COCO's -1: nothing to score


class DetectionScores:
    """COCO box mAP accumulated over batches: `update(predictions, targets)`, then `compute(class_names)`."""

    def __init__(self, per_class: bool = True, backend: str | None = None):
        """`backend`: "faster_coco_eval" or "pycocotools"; None: `coco_backend()`."""
        backend = backend or coco_backend()
        from torchmetrics.detection import MeanAveragePrecision

        self.per_class = per_class
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=per_class, backend=backend)
        self.backend, self.n = backend, 0

    def update(self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        """`predictions`: per image {"boxes" (n, 4) x0, y0, x1, y1, "scores" (n,), "labels" (n,)}, a torchvision
        detector's eval output; `targets`: per image {"boxes", "labels"} and optionally "area", "crowd_boxes",
        "crowd_labels", "crowd_area" (module docstring), in the predictions' pixels."""
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets; one of each per image")
        preds, gts = [], []
        for p, t in zip(predictions, targets):
            keep = p["labels"] > 0  # label 0: the background
            preds.append({"boxes": p["boxes"][keep].detach().float().cpu(), "scores": p["scores"][keep].detach().float().cpu(),
                          "labels": p["labels"][keep].long().cpu()})
            boxes, labels = t["boxes"].float().cpu(), t["labels"].long().cpu()
            n, m = len(labels), len(t.get("crowd_labels", ()))
            gt = {"boxes": boxes, "labels": labels, "iscrowd": torch.zeros(n + m, dtype=torch.int64)}
            if m:
                gt["boxes"] = torch.cat([boxes, t["crowd_boxes"].float().cpu()])
                gt["labels"] = torch.cat([labels, t["crowd_labels"].long().cpu()])
                gt["iscrowd"][n:] = 1
            if "area" in t:
                gt["area"] = torch.cat([t["area"].float().cpu(), t["crowd_area"].float().cpu()]) if m else t["area"].float().cpu()
            gts.append(gt)
        self.metric.update(preds, gts)
        self.n += len(targets)

    def compute(self, class_names: list[str] | None = None) -> dict:
        """{"map", "map_50", "map_75", "map_small", ..., "mar_100", ..., "per_class": {name or label: {"map", "mar_100"}},
        "n", "backend"}: floats or None (module docstring). `class_names[label]` names the classes (index 0 the
        background); per_class holds the classes seen in the targets or the predictions."""
        if self.n == 0:
            raise ValueError("no images scored: the batches were empty")
        r = self.metric.compute()
        out: dict = {k: _value(float(r[k])) for k in SUMMARY}
        if self.per_class:
            classes = r["classes"].reshape(-1).tolist()
            aps, ars = r["map_per_class"].reshape(-1).tolist(), r["mar_100_per_class"].reshape(-1).tolist()
            name = (lambda c: class_names[c]) if class_names is not None else str  # noqa: E731
            out["per_class"] = {name(c): {"map": _value(ap), "mar_100": _value(ar)} for c, ap, ar in zip(classes, aps, ars)}
        out["n"], out["backend"] = self.n, self.backend
        return out


def score_detections(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                     class_names: list[str] | None = None, per_class: bool = True, backend: str | None = None) -> dict:
    """DetectionScores of one list of per-image predictions against their targets."""
    scores = DetectionScores(per_class, backend)
    scores.update(predictions, targets)
    return scores.compute(class_names)


@torch.inference_mode()
def detections(model: nn.Module, batches: Iterable[tuple], precision: str = "fp32") -> Iterator[tuple[list[dict], list[dict]]]:
    """(predictions, targets) per batch of (images, targets), or dense_collate's (images, masks, targets): the targets
    come last; images a batch (B, C, H, W) or a list, moved to the model's device; the predictions on the CPU. The
    model runs in eval mode, its own mode restored after the last batch (or an error)."""
    from vitkit.data.loader import to_device

    dev = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            images, targets = batch[0], batch[-1]
            images = list(to_device(images, dev)) if torch.is_tensor(images) else [to_device(x, dev) for x in images]
            with autocast(precision, dev.type):
                predictions = model(images)
            yield [{k: v.detach().cpu() for k, v in p.items()} for p in predictions], targets
    finally:
        model.train(was_training)


def evaluate_detection(model: nn.Module, batches: Iterable[tuple], class_names: list[str] | None = None,
                       precision: str = "fp32", per_class: bool = True, backend: str | None = None) -> dict:
    """DetectionScores of a detector (torchvision's eval contract: images -> [{"boxes", "labels", "scores"}]) over
    batches of (images, targets) (`detections`)."""
    scores = DetectionScores(per_class, backend)  # the backend checked before any image is run
    for predictions, targets in detections(model, batches, precision):
        scores.update(predictions, targets)
    return scores.compute(class_names)
