"""The classification objective: softmax cross-entropy (fine-tuning, small data) or sigmoid
cross-entropy (the paper's ImageNet-21k / JFT pre-training), label smoothing, soft (mixed) targets."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("softmax", "sigmoid")


def soft_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Hard labels (B,) or soft labels (B, K) -> smoothed soft labels (B, K)."""
    t = F.one_hot(y, num_classes).float() if y.ndim == 1 else y.float()
    if smoothing > 0:
        t = t * (1 - smoothing) + smoothing / num_classes
    return t


def classification_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "softmax", smoothing: float = 0.0) -> torch.Tensor:
    if loss not in LOSSES:
        raise ValueError(f"optim.loss={loss!r} is not one of {LOSSES}")
    logits = logits.float()
    if loss == "softmax":
        if y.ndim == 1:
            return F.cross_entropy(logits, y, label_smoothing=smoothing)
        return torch.sum(-soft_targets(y, logits.shape[1], smoothing) * F.log_softmax(logits, dim=-1), dim=-1).mean()
    # sigmoid: independent binary cross-entropy per class, summed over classes (big_vision's sigmoid_xent)
    t = soft_targets(y, logits.shape[1], smoothing)
    return F.binary_cross_entropy_with_logits(logits, t, reduction="none").sum(-1).mean()


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    return y if y.ndim == 1 else y.argmax(dim=-1)
