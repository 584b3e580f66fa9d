"""The semantic-segmentation objective: pixel-wise cross-entropy of a SegmentationModel's logits against the masks
(heads/segmentation.py), pixels at the ignore index left out; scored by mIoU (evaluate/segmentation.py).

The batches are images and masks moved together (data/loader.py StepBatches); the model is an encoder with a
segmentation head (train/loop.py build_model). Validation and test scores come from one confusion matrix per split,
summed over the processes of a distributed run before the scores are computed (an mIoU is no mean of per-rank mIoUs).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from vitkit.heads.segmentation import segmentation_loss


def check_encoder(model_cfg: Any, what: str, objective: str = "segmentation") -> None:
    """ValueError naming the option (`what`, e.g. "model.name='R50x1'") for a model no segmentation head (nor
    detection's feature pyramid: `objective`) can read (called by config.validate, before anything is written, and by
    train/loop.py on a checkpoint's model): it needs patch tokens on a grid."""
    from vitkit.models.axial import AxialViTConfig
    from vitkit.models.vit import ViTConfig

    if not isinstance(model_cfg, (ViTConfig, AxialViTConfig)):
        kind = type(model_cfg).__name__.removesuffix("Config")
        reader = {"segmentation": "a segmentation head reads", "multitask": "a multitask model's heads read"}.get(
            objective, "the feature pyramid reads")
        raise ValueError(f"{what} with objective={objective}: {reader} the patch tokens on their grid, "
                         f"and a {kind} has none; choose a ViT, a hybrid or an Axial-ViT (e.g. model.name=ViT-Ti/16 or "
                         f"R50+ViT-B/16)")


class Segmentation:
    main_metric = "miou"
    flops_counted = "forward + backward of the encoder and the segmentation head per image (torch FlopCounterMode), x images seen"

    def __init__(self, num_classes: int, ignore_index: int, class_names: list[str] | None = None):
        self.num_classes, self.ignore_index, self.class_names = num_classes, ignore_index, class_names

    def __call__(self, model: nn.Module, x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(x)  # (B, K, H, W)
        # the mean over this micro-batch's valid pixels; train_step averages micro-batches equally, so with ignored
        # pixels unevenly spread a step's loss depends slightly on train.micro_batch_size (as DDP's per-rank means)
        loss = segmentation_loss(logits, masks, self.ignore_index)
        valid = masks != self.ignore_index
        acc = ((logits.detach().argmax(1) == masks) & valid).sum() / valid.sum().clamp(min=1)  # pixel accuracy
        return loss, {"acc": acc.float()}

    def evaluate(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32") -> dict:
        """evaluate_segmentation's scores (miou, pixel_acc, mean_acc, per-class iou / acc by class name, loss, n) and
        the confusion matrix ("confusion", rows = target), which `reduce_eval` sums over processes."""
        from vitkit.evaluate.segmentation import evaluate_segmentation

        return evaluate_segmentation(model, batches, self.num_classes, self.ignore_index, precision, self.class_names)

    def reduce_eval(self, res: dict, env: Any) -> dict:
        """One process: `res`. Several: the confusion matrices, loss sums and image counts summed over processes and
        the scores computed from the sum."""
        if not env.active:
            return res
        import torch.distributed as dist

        from vitkit.evaluate.segmentation import segmentation_scores
        from vitkit.train.distributed import comm_device

        k = self.num_classes
        cm = torch.tensor(res["confusion"], dtype=torch.float64).flatten()
        loss = res["loss"] * res["pixels"] if res["n"] and res["pixels"] else 0.0
        t = torch.cat([cm, torch.tensor([loss, float(res["n"])], dtype=torch.float64)]).to(comm_device())
        dist.all_reduce(t)
        t = t.cpu()
        confusion = t[:k * k].round().long().reshape(k, k)
        out = segmentation_scores(confusion, self.class_names)
        out["loss"] = float(t[-2]) / max(out["pixels"], 1)
        out["n"] = int(t[-1])
        out["confusion"] = confusion.tolist()
        return out

    def train_flops(self, model_cfg: Any, image_size: int) -> int:
        """Forward + backward FLOPs of one image through the encoder and the head at `image_size`."""
        from vitkit.models.registry import train_flops

        return train_flops(model_cfg.at_size(image_size))
