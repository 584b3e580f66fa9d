"""Semantic segmentation on a ViT encoder, as SETR (Zheng et al. 2021, "Rethinking Semantic Segmentation from a
Sequence-to-Sequence Perspective with Transformers", section 3.3) compares its decoders.

The encoder's patch tokens (after its final LayerNorm, prefix tokens dropped) are laid back on their grid,
(B, D, H/P, W/P), and a head turns them into per-pixel class logits (B, K, H, W) at the input's size:
- "linear": one linear map per token to K logits, bilinearly upsampled to the pixels (Segmenter's linear decoder; SETR's
  naive decoder is this with a 1x1 conv + BN + ReLU before it);
- "progressive": SETR-PUP, conv 3x3 + norm + ReLU then x2 bilinear upsampling, repeated until the encoder's stride is
  undone (4 times for patch 16), then a 1x1 conv to the K classes. A stride that is no power of two is finished by
  one last bilinear resize.

Resolution: the encoder runs at the size its config holds (PatchEmbed refuses others); `set_image_size` moves it to
another, the position embeddings resampled over the new grid as for fine-tuning (paper section 3.2). The heads hold no
grid-sized weight, so one trained head serves any size.

A SegmentationModel's `config` is a `SegmentationModelConfig` (arch "segmentation": the encoder's own config, its head),
registered with models/registry.py, so that vitkit's format saves and loads it as any model: the record holds both,
the weights keep the module's names (encoder.*, head.*).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.data.masks import IGNORE_INDEX
from vitkit.models.registry import ARCHS, build_model, config_from_dict, config_to_dict

HEADS = ("linear", "progressive")
NORMS = ("batch", "group")


class EncoderRecord:
    """What a model with a head on an encoder answers from its encoder's config (`self.encoder`): the size, the
    channels and the name are the encoder's (SegmentationModelConfig, detection's DetectionModelConfig)."""

    encoder: Any

    @property
    def image_size(self) -> int | tuple[int, int]:
        return self.encoder.image_size

    @property
    def in_chans(self) -> int:
        return self.encoder.in_chans

    @property
    def name(self) -> str | None:
        return getattr(self.encoder, "name", None)


@dataclass
class SegmentationModelConfig(EncoderRecord):
    """A SegmentationModel's architecture (arch "segmentation"): the encoder's config (without a classifier) and the
    head's. The encoder's size, channels and name are the model's."""

    encoder: Any  # ViTConfig (a plain ViT or a hybrid) or AxialViTConfig
    num_classes: int
    head: str = "linear"
    channels: int = 256  # progressive: the convolutions' channels
    norm: str = "batch"  # progressive: the convolutions' norm
    arch = "segmentation"  # the record's kind (models/registry.py ARCHS), not a field

    def at_size(self, image_size: int | tuple[int, int]) -> "SegmentationModelConfig":
        """This architecture at another input size (its encoder's grid resized)."""
        return dataclasses.replace(self, encoder=dataclasses.replace(self.encoder, image_size=image_size))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "encoder": config_to_dict(self.encoder), "num_classes": self.num_classes,
                "head": self.head, "channels": self.channels, "norm": self.norm}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegmentationModelConfig":
        valid = {f.name for f in dataclasses.fields(cls)} | {"arch"}
        bad = sorted(set(d) - valid)
        if bad or "encoder" not in d or "num_classes" not in d:
            raise ValueError(f"a segmentation model's record holds {sorted(valid)} (encoder and num_classes at least), "
                             f"not {sorted(d)}")
        if d.get("head", "linear") not in HEADS or d.get("norm", "batch") not in NORMS:
            raise ValueError(f"segmentation head={d.get('head')!r}, norm={d.get('norm')!r}: heads are {HEADS}, norms {NORMS}")
        return cls(config_from_dict(d["encoder"]), int(d["num_classes"]), d.get("head", "linear"),
                   int(d.get("channels", 256)), d.get("norm", "batch"))


def encoder_stride(encoder: nn.Module) -> int:
    """Input pixels per patch token along a side: the patch size, times a hybrid's ResNet stride."""
    cfg = encoder.config
    resnet = getattr(cfg, "resnet", None)
    return cfg.patch_size * (resnet.stride if resnet is not None else 1)


def strip_classifier(encoder: nn.Module, reader: str = "a dense head") -> nn.Module:
    """The encoder, in place, without its classifier and pre-logits layer (dense tasks do not use them, and parameters
    without gradients break DistributedDataParallel); TypeError for a module that is no token encoder."""
    if not all(hasattr(encoder, a) for a in ("forward_features", "num_prefix_tokens", "config", "set_image_size")):
        raise TypeError(f"{type(encoder).__name__} is not a token encoder: {reader} reads the patch tokens of a "
                        f"ViT (VisionTransformer, a hybrid, Axial-ViT)")
    if getattr(encoder.config, "representation_size", None):
        encoder.drop_pre_logits()
    if getattr(encoder.config, "num_classes", 0):
        encoder.reset_head(0)
    return encoder


def token_grid(encoder: nn.Module, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An encoder's token states (B, prefix + N, D) of images of `size` (H, W) as its patch tokens on their grid,
    after the final LayerNorm: (B, D, H/S, W/S), S the encoder's stride (the one owner of this layout: the segmentation
    heads, detection's pyramid and multitask's heads read it)."""
    if getattr(encoder.config, "fc_norm", False):  # the final LayerNorm comes after pooling there: apply it per token
        tokens = encoder.norm(tokens)
    tokens = tokens[:, encoder.num_prefix_tokens:]  # (B, N, D)
    stride = encoder_stride(encoder)
    h, w = size[0] // stride, size[1] // stride
    if tokens.shape[1] != h * w:
        raise ValueError(f"the encoder gave {tokens.shape[1]} patch tokens for a {size[0]}x{size[1]} input, "
                         f"not the {h}x{w} grid of stride {stride}")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # (B, D, h, w)


class LinearHead(nn.Module):
    """K logits per patch token, upsampled bilinearly to the pixels."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.proj = nn.Conv2d(width, num_classes, 1)  # a Linear per token, on the grid

    def forward(self, grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.proj(grid)  # (B, K, h, w)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, K, H, W)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)  # SETR's (synchronised across GPUs there)
    return nn.GroupNorm(math.gcd(32, channels), channels)  # independent of the batch; 32 groups where they divide


class ProgressiveHead(nn.Module):
    """SETR-PUP: (conv 3x3 + norm + ReLU, x2 bilinear) per halving of the stride, then a 1x1 conv to the classes."""

    sync_batchnorm = True  # with norm="batch", statistics of the global batch under DDP on GPUs (train/distributed.wrap)

    def __init__(self, width: int, num_classes: int, stride: int, channels: int = 256, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"segmentation head norm={norm!r} is not one of {NORMS}")
        self.ups = max(stride.bit_length() - 1, 0)  # floor(log2(stride)) x2 steps
        stages = []
        for i in range(max(self.ups, 1)):
            stages.append(nn.Sequential(nn.Conv2d(width if i == 0 else channels, channels, 3, padding=1, bias=False),
                                        _norm(norm, channels), nn.ReLU(inplace=True)))
        self.stages = nn.ModuleList(stages)
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = grid  # (B, D, h, w)
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (B, C, h * 2^i, w * 2^i)
            if i < self.ups:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        logits = self.classify(x)  # (B, K, h * 2^ups, w * 2^ups)
        if logits.shape[-2:] != size:  # a stride that is no power of two
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


@torch.no_grad()
def make_head(encoder: nn.Module, num_classes: int, head: str = "linear", channels: int = 256, norm: str = "batch",
              zero: bool = True) -> nn.Module:
    """A segmentation head of `head`'s kind for `encoder`'s tokens, on the encoder's device, its last layer
    zero-initialised (`zero`; else PyTorch's default initialisation)."""
    if head not in HEADS:
        raise ValueError(f"segmentation head={head!r} is not one of {HEADS}")
    width = encoder.config.width
    if head == "linear":
        module: nn.Module = LinearHead(width, num_classes)
        last = module.proj
    else:
        module = ProgressiveHead(width, num_classes, encoder_stride(encoder), channels, norm)
        last = module.classify
    module.to(next(encoder.parameters()).device)
    if zero:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return module


class OnEncoder:
    """What a model of heads on a ViT encoder (`self.encoder`) answers from the encoder: activation checkpointing of
    its blocks (the heads are small), its input size, and running at another (its position embeddings resampled over
    the new grid, as for fine-tuning; the heads hold no grid-sized weight). SegmentationModel's, MultitaskModel's."""

    encoder: nn.Module

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if not hasattr(self.encoder, "set_grad_checkpointing"):
            raise ValueError(f"{type(self.encoder).__name__} has no checkpointed blocks; set train.activation_checkpointing=false")
        self.encoder.set_grad_checkpointing(enable)

    @property
    def image_size(self) -> int | tuple[int, int]:
        return self.encoder.config.image_size

    @torch.no_grad()
    def set_image_size(self, image_size: int | tuple[int, int], mode: str = "bilinear") -> None:
        self.encoder.set_image_size(image_size, mode)


class SegmentationModel(OnEncoder, nn.Module):
    """A ViT encoder (VisionTransformer, a hybrid, Axial-ViT: anything with forward_features, num_prefix_tokens and a
    config with patch_size and grid) and a segmentation head: `model(images) -> logits (B, K, H, W)`.

    The encoder's classifier (and pre-logits layer) is removed: it takes no part in dense prediction, and parameters
    without gradients break DistributedDataParallel. The head's last layer starts at zero, as a fine-tuning head does
    (paper section 3.2): every pixel starts at the uniform prediction."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "linear", channels: int = 256, norm: str = "batch"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"segmentation head={head!r} is not one of {HEADS}")
        if num_classes < 1:
            raise ValueError(f"segmentation num_classes={num_classes}: one class at least (the background counts)")
        strip_classifier(encoder, "a segmentation head")
        self.encoder, self.num_classes, self.head_kind = encoder, num_classes, head
        self.config = SegmentationModelConfig(encoder.config, num_classes, head, channels, norm)
        self.reset_head(num_classes)

    @classmethod
    def from_config(cls, cfg: SegmentationModelConfig) -> "SegmentationModel":
        return cls(build_model(cfg.encoder), cfg.num_classes, cfg.head, cfg.channels, cfg.norm)

    @torch.no_grad()
    def reset_head(self, num_classes: int | None = None, zero: bool = True) -> None:
        """A new head of `num_classes` (the same kind, channels and norm), its last layer zero-initialised (`zero`;
        else PyTorch's default initialisation)."""
        cfg = self.config
        cfg.num_classes = self.num_classes = cfg.num_classes if num_classes is None else num_classes
        if cfg.num_classes < 1:
            raise ValueError(f"segmentation num_classes={cfg.num_classes}: one class at least (the background counts)")
        self.head = make_head(self.encoder, cfg.num_classes, cfg.head, cfg.channels, cfg.norm, zero)

    def patch_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens of images (B, C, H, W), after the final LayerNorm, on their grid: (B, D, H/P, W/P)."""
        return token_grid(self.encoder, self.encoder.forward_features(x), tuple(x.shape[-2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.patch_grid(x), tuple(x.shape[-2:]))  # (B, K, H, W)


ARCHS["segmentation"] = (SegmentationModelConfig, SegmentationModel.from_config, "segmentation model")


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy (B, K, H, W) vs (B, H, W), the mean over the pixels that are not
    `ignore_index` (0, not NaN, for a batch with none). Logits at another size than the masks are resized to them
    bilinearly first."""
    logits = logits.float()
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    masks = masks.long()
    total = F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="sum")
    return total / (masks != ignore_index).sum().clamp(min=1)
