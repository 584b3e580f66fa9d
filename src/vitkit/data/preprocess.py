"""How a model's inputs are prepared for inference: one owner, `Preprocess`.

Recorded with the weights (vitkit checkpoints' config.json / safetensors metadata, ONNX metadata, OpenVINO
rt_info) and read by every verb that runs a model (predict, eval, fewshot, analyze, finetune, export, the
engines). Evaluation resizes the whole image to the model's size (no crop, as the official code), scales to
[0, 1] and normalises ("google": (x - 0.5) / 0.5; "imagenet": ImageNet's mean / std).

The image size and channels are the model's, always: `Preprocess.of(model)` takes them from the model's
config at the moment of asking, so a model resized after loading (`set_image_size`, convert --resolution,
export --resolution, finetune --resolution) writes and serves its new size; only the normalisation is recorded
separately (it cannot be read off the weights).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch


INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    image_size: tuple[int, int]  # (H, W)
    in_chans: int = 3
    normalize: str = "google"
    crop_pct: float = 1.0  # 1: the whole image resized (vitkit, the official code, transformers); < 1: timm's centre crop
    interpolation: str = "bilinear"  # of the resize (antialiased); timm's models record "bicubic"

    def __post_init__(self) -> None:
        from vitkit.data.transforms import NORMALIZATIONS

        size = self.image_size
        object.__setattr__(self, "image_size", (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1])))
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"preprocess normalize={self.normalize!r} is not one of {NORMALIZATIONS}")
        if self.in_chans < 1 or min(self.image_size) < 1:
            raise ValueError(f"preprocess image_size={self.image_size}, in_chans={self.in_chans}: both must be positive")
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            raise ValueError(f"preprocess crop_pct={self.crop_pct!r}: a fraction in (0, 1] (1: no crop)")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocess interpolation={self.interpolation!r} is not one of {INTERPOLATIONS}")

    @classmethod
    def of(cls, model: Any, recorded: "Preprocess | dict | None" = None) -> "Preprocess":
        """The preprocessing of `model` now: its config's image size and channels, the normalisation recorded
        (`recorded`: a Preprocess, its dict, or None for "google")."""
        rec = recorded.to_dict() if isinstance(recorded, Preprocess) else (recorded or {})
        return cls(model.config.image_size, model.config.in_chans, rec.get("normalize") or "google",
                   float(rec.get("crop_pct", 1.0)), rec.get("interpolation") or "bilinear")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """From what `to_dict` wrote (an export's metadata); a missing normalisation is Google's."""
        return cls(d["image_size"], int(d.get("in_chans", 3)), d.get("normalize") or "google", float(d.get("crop_pct", 1.0)),
                   d.get("interpolation") or "bilinear")

    def to_dict(self) -> dict[str, Any]:
        h, w = self.image_size
        out = {"image_size": h if h == w else [h, w], "normalize": self.normalize, "in_chans": self.in_chans}
        if self.crop_pct != 1.0 or self.interpolation != "bilinear":  # timm's way; vitkit's own records stay as they were
            out.update(crop_pct=self.crop_pct, interpolation=self.interpolation)
        return out

    def replace(self, **changes: Any) -> "Preprocess":
        return dataclasses.replace(self, **changes)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        from vitkit.data.transforms import norm_stats

        return norm_stats(self.normalize, self.in_chans)

    def eval_transform(self):
        """Per image (PIL image or uint8 tensor) -> the model's input (C, H, W) float32."""
        from torchvision.transforms import v2

        from vitkit.data.transforms import match_channels

        mean, std = self.mean_std()
        mode = v2.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
        h, w = self.image_size
        if self.crop_pct < 1:  # timm's eval: the shorter side to size / crop_pct, then the centre crop of the size
            scale = math.floor(h / self.crop_pct) if h == w else (math.floor(h / self.crop_pct), math.floor(w / self.crop_pct))
            resize = [v2.Resize(scale, interpolation=mode, antialias=True), v2.CenterCrop(self.image_size)]
        else:
            resize = [v2.Resize(self.image_size, interpolation=mode, antialias=True)]
        return v2.Compose([
            v2.ToImage(),
            v2.Lambda(lambda x: match_channels(x, self.in_chans)),
            *resize,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    def data_config(self, data: str, data_dir: str | None = None, **kw: Any):
        """The evaluation DataConfig of dataset `data` prepared this way (square sizes: DataConfig's)."""
        from vitkit.config import DataConfig

        h, w = self.image_size
        if h != w:
            raise ValueError(f"this model takes {h}x{w} images; dataset evaluation (eval, fewshot, analyze) resizes to squares: "
                             f"use `vitkit predict` for its images, or resample it to a square size (--resolution)")
        return DataConfig(name=data, data_dir=data_dir, image_size=h, normalize=self.normalize, **kw)
