"""Masked patch prediction, as the paper defines it (section 4.6, appendix B.1.2).

Corrupt a fraction (50%) of the patch embeddings: of those, 80% become a learnable [mask] embedding,
10% the embedding of a random other patch (any image of the batch, any position), 10% stay as they
are. From each corrupted position's output token predict the patch's mean colour quantised to 3 bits
per channel: 8^3 = 512 classes for RGB, 8 for grayscale (the same rule on one channel). The loss
scores corrupted positions only. The paper's alternatives are options: "mean4x4" predicts the patch
downsized to 4 x 4, each cell a 3-bit colour (16 x 512 outputs); "l2" regresses the whole patch.

The encoder is the ordinary VisionTransformer; the [mask] embedding and the prediction head live
here, so a pre-trained run loads into `finetune` / `fewshot` like any checkpoint, without them.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.config import Config
from vitkit.data.transforms import norm_stats
from vitkit.train.precision import autocast

TARGETS = ("mean", "mean4x4", "l2")


def to_unit_range(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """Normalised images back to [0, 1]."""
    mean, std = norm_stats(normalize, x.shape[1])
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


def colour_classes(x01: torch.Tensor, patch: int, bits: int = 3, cells: int = 1) -> torch.Tensor:
    """Per patch (and per cell of a cells x cells downsizing), the mean colour quantised to `bits` per
    channel, as one class index: (B, N, cells^2) in [0, (2^bits)^C). Channel 0 is the most significant."""
    B, C, H, W = x01.shape
    if patch % cells:
        raise ValueError(f"patch size {patch} is not divisible into {cells} x {cells} cells")
    means = F.avg_pool2d(x01.float(), patch // cells)  # (B, C, h*cells, w*cells)
    levels = 2**bits
    q = (means * levels).floor().clamp(0, levels - 1).long()  # (B, C, h*cells, w*cells)
    idx = torch.zeros_like(q[:, 0])
    for c in range(C):
        idx = idx * levels + q[:, c]
    h, w = H // patch, W // patch
    idx = idx.reshape(B, h, cells, w, cells).permute(0, 1, 3, 2, 4).reshape(B, h * w, cells * cells)
    return idx


def corrupted_per_image(rate: float, n: int) -> int:
    """How many of an image's n patches `corrupt` picks: round(rate * n)."""
    return int(round(rate * n))


def corrupt(patches: torch.Tensor, mask_token: torch.Tensor, rate: float, mask_frac: float, random_frac: float,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT-style corruption of patch embeddings (B, N, D). Exactly round(rate * N) positions per image
    are corrupted; each becomes [mask] with probability mask_frac, the embedding of a random patch of the batch with
    probability random_frac, and stays otherwise. Returns (corrupted patches, corrupted (B, N) bool,
    kind (B, N): 0 untouched, 1 mask, 2 random, 3 kept)."""
    B, N, D = patches.shape
    k = corrupted_per_image(rate, N)
    draw = generator.device if generator is not None else patches.device  # a CPU generator draws on the CPU
    scores = torch.rand(B, N, generator=generator, device=draw).to(patches.device)
    chosen = torch.zeros(B, N, dtype=torch.bool, device=patches.device)
    if k > 0:
        chosen.scatter_(1, scores.topk(k, dim=1).indices, True)
    u = torch.rand(B, N, generator=generator, device=draw).to(patches.device)
    kind = torch.zeros(B, N, dtype=torch.long, device=patches.device)
    kind[chosen & (u < mask_frac)] = 1
    kind[chosen & (u >= mask_frac) & (u < mask_frac + random_frac)] = 2
    kind[chosen & (u >= mask_frac + random_frac)] = 3
    out = torch.where((kind == 1)[..., None], mask_token.to(patches.dtype).expand(B, N, D), patches)
    # a source for every position, used where kind == 2: no count read back from the device (no GPU sync)
    src = torch.randint(0, B * N, (B, N), generator=generator, device=draw).to(patches.device)
    out = torch.where((kind == 2)[..., None], patches.reshape(B * N, D)[src], out)
    return out, chosen, kind


class MaskedPatchPrediction(nn.Module):
    """The objective: `mpp(model, images, labels_ignored) -> (loss, {"mpp_acc"})`."""

    main_metric = "mpp_acc"

    def __init__(self, width: int, patch: int, channels: int, normalize: str = "google", rate: float = 0.5,
                 mask_frac: float = 0.8, random_frac: float = 0.1, bits: int = 3, target: str = "mean"):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"mpp.target={target!r} is not one of {TARGETS}")
        if not 0 < rate <= 1 or mask_frac + random_frac > 1:
            raise ValueError(f"corruption rates must satisfy 0 < rate <= 1 and mask + random <= 1; got {rate}, {mask_frac}, {random_frac}")
        self.patch, self.channels, self.normalize = patch, channels, normalize
        self.rate, self.mask_frac, self.random_frac, self.bits, self.target = rate, mask_frac, random_frac, bits, target
        self.cells = 4 if target == "mean4x4" else 1
        if target == "l2":
            self.main_metric = "mpp_mse"
        self.num_classes = (2**bits) ** channels
        out = patch * patch * channels if target == "l2" else self.cells**2 * self.num_classes
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(width, out)

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module) -> "MaskedPatchPrediction":
        m = cfg.mpp
        if getattr(model.config, "resnet", None) is not None:
            raise ValueError("masked patch prediction corrupts raw patch embeddings; it is defined for plain ViTs, not hybrids")
        if not hasattr(model.config, "patch_size"):
            raise ValueError(f"masked patch prediction corrupts patch embeddings; a {type(model).__name__} has no patches: "
                             f"choose a ViT (model.name, e.g. ViT-Ti/16) for --recipe mpp")
        return cls(model.config.width, model.config.patch_size, model.config.in_chans, cfg.data.normalize, m.rate,
                   m.mask_frac, m.random_frac, m.bits, m.target)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        x01 = to_unit_range(x, self.normalize)
        if self.target == "l2":
            B, C, H, W = x.shape
            p = self.patch
            return x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)
        return colour_classes(x01, self.patch, self.bits, self.cells)  # (B, N, cells^2)

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        patches = model.patch_embed(x)  # (B, N, D)
        corrupted, chosen, _ = corrupt(patches, self.mask_token, self.rate, self.mask_frac, self.random_frac, generator)
        z = model.norm(model.encode(model.add_tokens(corrupted)))[:, model.num_prefix_tokens:]  # (B, N, D)
        # the k chosen positions of every image in ascending order, as z[chosen] would give them, but with a
        # shape known in advance (a boolean index would read the count back from the device)
        k = corrupted_per_image(self.rate, chosen.shape[1])
        pos = chosen.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :k]  # (B, k)
        pick = lambda t: t.gather(1, pos.reshape(*pos.shape, *[1] * (t.ndim - 2)).expand(-1, -1, *t.shape[2:])).flatten(0, 1)  # noqa: E731
        pred = self.head(pick(z)).float()  # (B * k, out)
        target = pick(self.targets(x))  # (B * k, cells^2) or (B * k, p*p*C)
        if self.target == "l2":
            loss = F.mse_loss(pred, target.float())
            return loss, {"mpp_mse": loss.detach()}
        logits = pred.reshape(len(pred), self.cells**2, self.num_classes)
        loss = F.cross_entropy(logits.reshape(-1, self.num_classes), target.reshape(-1))
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"mpp_acc": acc.detach()}

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32") -> dict:
        """Masked-patch accuracy (or MSE) over a split, with a fixed corruption draw."""
        was = model.training
        model.eval()
        gen = torch.Generator().manual_seed(0)
        total, n, loss_sum = 0.0, 0, 0.0
        key = "mpp_mse" if self.target == "l2" else "mpp_acc"
        for x, _ in batches:
            with autocast(precision, x.device.type):
                loss, metrics = self(model, x, None, gen)
            total += float(metrics[key]) * len(x)
            loss_sum += float(loss) * len(x)
            n += len(x)
        model.train(was)
        return {key: total / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}
