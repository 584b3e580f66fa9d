"""Augmentation and preprocessing (torchvision transforms v2).

Two paths give the same augmentations:
- per image, for data read from disk: `train_transform` / `eval_transform` (PIL-free on uint8 tensors);
- per batch, for small in-memory data: `BatchAugment` crops, flips and erases a whole uint8 batch with
  one affine `grid_sample`, no per-image Python work (RandAugment, when on, still runs per image).
Mixup / CutMix act on batches in both paths (`mix_batch`). Evaluation resizes without cropping, as
the official code does, and pixels go to [-1, 1] ("google") or ImageNet statistics.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vitkit.config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("google", "imagenet")
CROPS = ("pad", "inception", "none")
MIN_BOX_SIDE = 1.0  # px: a box cut narrower or shorter than this by a crop is dropped (torchvision's SanitizeBoundingBoxes)


def norm_stats(kind: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if kind == "google":
        return (0.5,) * channels, (0.5,) * channels
    if kind == "imagenet":
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels
    raise ValueError(f"data.normalize={kind!r} is not one of {NORMALIZATIONS}")


def normalize(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Float images in [0, 1], (B, C, H, W) -> normalised."""
    mean, std = norm_stats(kind, x.shape[1])
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale -> RGB by repetition, RGB -> grayscale by luminance; (…, C, H, W) uint8 or float."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1:
        return x.expand(*x.shape[:-3], channels, *x.shape[-2:]).contiguous() if channels > 1 else x
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
        y = (x.float() * w).sum(dim=-3, keepdim=True)
        return y.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else y
    raise ValueError(f"cannot turn {c}-channel images into {channels}-channel ones")


def eval_transform(cfg: DataConfig, channels: int) -> v2.Compose:
    """Per image: to tensor, channels, resize (no crop), [0, 1], normalise (`Preprocess.eval_transform`)."""
    from vitkit.data.preprocess import Preprocess

    return Preprocess(cfg.image_size, channels, cfg.normalize).eval_transform()


def train_transform(cfg: DataConfig, channels: int) -> v2.Compose:
    """Per image: the configured crop (inception random-resized or pad-and-crop), flip, RandAugment,
    normalise, random erasing."""
    if cfg.crop not in CROPS:
        raise ValueError(f"data.crop={cfg.crop!r} is not one of {CROPS}")
    mean, std = norm_stats(cfg.normalize, channels)
    size = cfg.image_size
    steps: list = [v2.ToImage(), v2.Lambda(lambda x: match_channels(x, channels))]
    if cfg.crop == "inception":
        steps.append(v2.RandomResizedCrop(size, scale=(cfg.crop_scale_min, 1.0), antialias=True))
    else:
        steps.append(v2.Resize((size, size), antialias=True))
        if cfg.crop == "pad" and cfg.crop_padding > 0:
            steps.append(v2.RandomCrop(size, padding=cfg.crop_padding))
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.randaugment > 0:
        steps.append(v2.RandAugment(num_ops=cfg.randaugment, magnitude=cfg.randaugment_magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if cfg.random_erasing > 0:
        steps.append(v2.RandomErasing(p=cfg.random_erasing))
    return v2.Compose(steps)


class BatchAugment:
    """Augment a uint8 batch (B, C, H, W) already at the model's size, all images at once.

    Crops and flips become one affine sampling grid per image: pad-and-crop is an integer shift with
    zero fill; the inception crop samples area in [crop_scale_min, 1] and aspect ratio in [3/4, 4/3]
    (as torchvision's RandomResizedCrop) and resamples bilinearly.
    """

    def __init__(self, cfg: DataConfig):
        if cfg.crop not in CROPS:
            raise ValueError(f"data.crop={cfg.crop!r} is not one of {CROPS}")
        self.cfg = cfg
        self.randaugment = v2.RandAugment(num_ops=cfg.randaugment, magnitude=cfg.randaugment_magnitude) if cfg.randaugment > 0 else None
        self.erase = v2.RandomErasing(p=cfg.random_erasing) if cfg.random_erasing > 0 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.randaugment is not None:
            x = torch.stack([self.randaugment(img) for img in x])
        xf = x.float() / 255.0
        theta = self._theta(*x.shape[-4:])
        if theta is not None:
            xf = self._warp(xf, theta, "nearest" if self.cfg.crop != "inception" else "bilinear")
        return self._finish(xf)

    def dense(self, x: torch.Tensor, masks: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 batch (B, C, H, W) and its class-index masks (B, H, W), moved by the same crop and flip: the mask
        sampled nearest (an index is never blended), pixels from outside the image `ignore_index` (the image's are
        black). Returns (normalised float images, int64 masks). RandAugment is refused for dense tasks
        (data/dense.py): its geometric ops would move the image alone."""
        if self.randaugment is not None:
            raise ValueError("data.randaugment with a dense task: its rotations and shears would move the image and not its mask")
        xf = x.float() / 255.0
        m = masks.long()
        theta = self._theta(*x.shape[-4:])
        if theta is not None:
            xf = self._warp(xf, theta, "nearest" if self.cfg.crop != "inception" else "bilinear")
            shifted = self._warp((m + 1).float()[:, None], theta, "nearest")[:, 0].round().long()  # 0: outside the image
            m = torch.where(shifted > 0, shifted - 1, ignore_index)
        return self._finish(xf), m

    def detection(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, list[dict]]:
        """A uint8 batch (B, C, H, W) and its per-image targets ({"boxes" (n, 4) x0, y0, x1, y1 on pixel edges,
        "labels" (n,)}), moved by the same crop and flip (`move_boxes`): a box is clipped to the image, and dropped
        with its label when less than MIN_BOX_SIDE px of it is left on either axis. Returns float images in [0, 1]
        (not normalised: a detector normalises its input itself, heads/detection.py) and the moved targets.
        RandAugment and random erasing are refused for detection (data/dense.py): the first would move the image
        alone, the second erase objects and keep their boxes."""
        if self.randaugment is not None or self.erase is not None:
            raise ValueError("data.randaugment and data.random_erasing with detection: they would move or hide objects and "
                             "not their boxes")
        xf = x.float() / 255.0
        theta = self._theta(*x.shape[-4:])
        if theta is None:
            return xf, [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets]
        xf = self._warp(xf, theta, "nearest" if self.cfg.crop != "inception" else "bilinear")
        return xf, [move_boxes(t, a, x.shape[-2:]) for t, a in zip(targets, theta)]

    def _theta(self, B: int, C: int, H: int, W: int) -> torch.Tensor | None:
        """The affine sampling grid's parameters (B, 2, 3) of this batch's random crops and flips, drawn on the CPU
        generator (the same on any device); None when nothing moves."""
        cfg = self.cfg
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        moved = False
        if cfg.crop == "pad" and cfg.crop_padding > 0:
            p = cfg.crop_padding
            shift = torch.randint(-p, p + 1, (B, 2)).float()
            theta[:, 0, 2] = shift[:, 0] * 2 / W  # normalised coordinates: 2 / W per pixel
            theta[:, 1, 2] = shift[:, 1] * 2 / H
            moved = True
        elif cfg.crop == "inception":
            area = torch.empty(B).uniform_(cfg.crop_scale_min, 1.0)
            log_ratio = torch.empty(B).uniform_(math.log(3 / 4), math.log(4 / 3))
            ratio = log_ratio.exp()
            w = (area * ratio).sqrt().clamp(max=1.0)
            h = (area / ratio).sqrt().clamp(max=1.0)
            theta[:, 0, 0], theta[:, 1, 1] = w, h
            theta[:, 0, 2] = (torch.rand(B) * 2 - 1) * (1 - w)
            theta[:, 1, 2] = (torch.rand(B) * 2 - 1) * (1 - h)
            moved = True
        if cfg.flip:
            flip = torch.rand(B) < 0.5
            theta[flip, 0, 0] *= -1
            moved = moved or bool(flip.any())
        return theta if moved else None

    @staticmethod
    def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
        """Float images (B, C, H, W) resampled by `theta`, zeros outside."""
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

    def _finish(self, xf: torch.Tensor) -> torch.Tensor:
        """Normalised, then randomly erased (when on)."""
        xf = normalize(xf, self.cfg.normalize)
        if self.erase is not None:
            xf = torch.stack([self.erase(img) for img in xf])
        return xf


def move_boxes(target: dict[str, torch.Tensor], theta: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """An image's {"boxes", "labels"} after `BatchAugment._warp` by `theta` (2, 3): the warp samples output point u
    from input point theta @ (u, 1) in normalised coordinates (-1 and 1 the image's outer pixel edges,
    align_corners=False), so a box's corners go the inverse way, u = (v - t) / a per axis (a < 0: a flip, the corners
    swapped); then clipped to the image, and boxes left under MIN_BOX_SIDE px on an axis dropped."""
    H, W = size
    boxes = target["boxes"].double().reshape(-1, 4)
    scale = torch.tensor([W, H, W, H], dtype=torch.float64) / 2
    v = boxes / scale - 1  # (n, 4) normalised x0, y0, x1, y1
    theta = theta.double().cpu()
    a = torch.stack([theta[0, 0], theta[1, 1]]).repeat(2)  # (4,) ax, ay, ax, ay
    t = torch.stack([theta[0, 2], theta[1, 2]]).repeat(2)
    u = (v - t) / a
    x0, x1 = torch.minimum(u[:, 0], u[:, 2]), torch.maximum(u[:, 0], u[:, 2])
    y0, y1 = torch.minimum(u[:, 1], u[:, 3]), torch.maximum(u[:, 1], u[:, 3])
    moved = (torch.stack([x0, y0, x1, y1], 1) + 1) * scale  # back to pixels
    # on a 1/1024 px grid: theta's float32 rounding (~1e-7 px) gone, a whole-pixel shift whole again
    moved = (torch.minimum(moved.clamp(min=0), 2 * scale) * 1024).round().float() / 1024
    keep = ((moved[:, 2] - moved[:, 0]) >= MIN_BOX_SIDE) & ((moved[:, 3] - moved[:, 1]) >= MIN_BOX_SIDE)
    return {"boxes": moved[keep], "labels": target["labels"][keep]}


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, C, size, size), antialiased bilinear (done once for in-memory data)."""
    if x.shape[-2:] == (size, size):
        return x
    out = []
    for chunk in x.split(4096):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def eval_batch(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 batch at the model's size -> normalised float."""
    return normalize(x.float() / 255.0, cfg.normalize)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup and/or CutMix (one of them per batch when both are on); labels become soft (B, K)."""
    ops = []
    if cfg.mixup > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
    if cfg.cutmix > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
    if not ops:
        return x, y
    op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
    return op(x, y)
