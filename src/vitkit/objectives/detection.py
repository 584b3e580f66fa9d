"""The object-detection objective: torchvision's own losses of a detector built on a ViT (heads/detection.py: FCOS's
focal, GIoU and centre-ness losses, or Faster R-CNN's RPN and box losses), summed as torchvision's reference scripts
sum them; scored by COCO's box mAP (evaluate/detection.py).

The batches are images and their boxes moved together (data/loader.py StepBatches: y is a list of per-image targets
{"boxes" (n, 4) x0, y0, x1, y1 in the batch's pixels, "labels" (n,) in 1..K}); the images come as floats in [0, 1]
at data.image_size, and the detector normalises them itself (its transform: data.normalize's statistics), as it does
uint8 images at evaluation and in `vitkit predict`: one input convention for every way in.

A distributed run's validation and test scores come from every process's detections gathered on each (an mAP is no
mean of per-rank mAPs): `reduce_eval`.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from vitkit.heads.detection import KINDS, SCALES, build_detector, detection_loss

# torchvision's constructor argument of each option of the detection section, per kind
OPTION_NAMES = {"score_thresh": {"fcos": "score_thresh", "faster_rcnn": "box_score_thresh"},
                "detections_per_img": {"fcos": "detections_per_img", "faster_rcnn": "box_detections_per_img"}}


def _numbers(key: str, text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise ValueError(f"{key}={text!r}: {what}, comma-separated positive numbers")
    return values


def parse_scales(text: str) -> tuple[float, ...]:
    """detection.scales as a tuple, finest first; ValueError naming the key."""
    scales = _numbers("detection.scales", text, f"the pyramid's levels, each one of {', '.join(f'{s:g}' for s in SCALES)}")
    if any(s not in SCALES for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"detection.scales={text!r}: each one of {', '.join(f'{s:g}' for s in SCALES)} (ViTDet's four), once")
    return tuple(sorted(scales, reverse=True))


def check_options(det: Any) -> None:
    """The detection section's values that need no encoder (config.validate, before anything is written; with
    model.init too): the scales, the anchor sizes (one per level), FCOS's channels."""
    scales = parse_scales(det.scales)
    if det.anchor_sizes is not None:
        sizes = _numbers("detection.anchor_sizes", det.anchor_sizes, "anchor sizes in pixels, one per level")
        if len(sizes) != len(scales):
            raise ValueError(f"detection.anchor_sizes={det.anchor_sizes!r}: one size per pyramid level, {len(scales)} for "
                             f"detection.scales={det.scales!r}")
    if det.kind == "fcos" and det.out_channels % 32:
        raise ValueError(f"detection.out_channels={det.out_channels}: FCOS's head normalises with GroupNorm(32, channels); "
                         f"choose a multiple of 32")


def detector_kwargs(cfg: Any) -> dict[str, Any]:
    """build_detector's arguments (but the encoder and num_classes) from a Config's detection section and its
    data.normalize."""
    det = cfg.detection
    if det.kind not in KINDS:
        raise ValueError(f"detection.kind={det.kind!r}: choose one of {', '.join(KINDS)}")
    options = {OPTION_NAMES[k][det.kind]: getattr(det, k) for k in OPTION_NAMES if getattr(det, k) is not None}
    sizes = None if det.anchor_sizes is None else tuple(float(v) for v in det.anchor_sizes.split(","))
    return dict(kind=det.kind, scales=parse_scales(det.scales), out_channels=det.out_channels, norm=det.norm,
                normalize=cfg.data.normalize, anchor_sizes=sizes, representation_size=det.representation_size, **options)


def check_setup(model_cfg: Any, cfg: Any, what: str) -> None:
    """The detector of `model_cfg` (the encoder, at data.image_size) and cfg's detection section, built on the meta
    device (no weights allocated): whatever torchvision or the pyramid refuses is refused before anything is written,
    naming the section's keys (called by config.validate; with model.init, by train/loop.py once it is read)."""
    from vitkit.models.registry import build_model
    from vitkit.objectives.segmentation import check_encoder

    check_encoder(model_cfg, what, "detection")
    check_options(cfg.detection)
    det = cfg.detection
    try:
        with torch.device("meta"):
            build_detector(build_model(model_cfg), 2, **detector_kwargs(cfg))
    except ValueError as err:
        raise ValueError(f"detection.kind={det.kind!r}, detection.scales={det.scales!r} on {what} at "
                         f"{model_cfg.image_size} px (patch grid {model_cfg.grid[0]}x{model_cfg.grid[1]}): {err}") from None


class Detection:
    main_metric = "map"
    flops_counted = ("forward + backward per image of the encoder, the feature pyramid and the dense head (FCOS's, or "
                     "Faster R-CNN's RPN head; torch FlopCounterMode), x images seen; box matching, losses, NMS and "
                     "Faster R-CNN's RoI heads not counted")

    def __init__(self, class_names: list[str] | None = None):
        self.class_names = class_names

    def __call__(self, model: nn.Module, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: float images (B, C, H, W) in [0, 1]; targets: per image {"boxes", "labels"} (module docstring)."""
        return detection_loss(model(x, targets))  # torchvision's losses in train mode; their sum, each part a metric

    def evaluate(self, model: nn.Module, batches: Iterable[tuple], precision: str = "fp32") -> dict:
        """COCO box mAP (evaluate_detection: map, map_50, map_75, by area, recall, per class by name, n). Under
        torch.distributed, this process's detections instead, for `reduce_eval` to gather and score."""
        import torch.distributed as dist

        from vitkit.evaluate.detection import detections, evaluate_detection

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return {"detections": list(detections(model, batches, precision))}
        return evaluate_detection(model, batches, self.class_names, precision)

    def reduce_eval(self, res: dict, env: Any) -> dict:
        """One process: `res`. Several: every process's (predictions, targets) gathered on each (plain tensors
        between vitkit's own processes) and scored together, in rank order."""
        if not env.active:
            return res
        import torch.distributed as dist

        from vitkit.evaluate.detection import DetectionScores

        gathered: list = [None] * env.world
        dist.all_gather_object(gathered, res["detections"])
        scores = DetectionScores()
        for pairs in gathered:
            for predictions, targets in pairs:
                scores.update(predictions, targets)
        return scores.compute(self.class_names)

    def train_flops(self, model_cfg: Any, image_size: int) -> int:
        """Forward + backward FLOPs of one image at `image_size` through what `flops_counted` says, counted on the meta
        device (nothing computed)."""
        from torch.utils.flop_counter import FlopCounterMode

        from vitkit.heads.detection import detector_from_config

        cfg = model_cfg.at_size(image_size)
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        counter = FlopCounterMode(display=False)
        with torch.device("meta"):
            model = detector_from_config(cfg).train()
            with counter:
                features = list(model.backbone(torch.empty(1, cfg.in_chans, h, w)).values())
                if cfg.kind == "fcos":
                    outs = list(model.head(features).values())
                else:
                    objectness, deltas = model.rpn.head(features)
                    outs = [*objectness, *deltas]
                sum(o.sum() for o in outs).backward()
        return counter.get_total_flops()
