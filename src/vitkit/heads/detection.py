"""Object detection on a plain ViT encoder, as ViTDet does it (Li et al. 2022, "Exploring Plain Vision Transformer
Backbones for Object Detection", section 3 and figure 2): a simple feature pyramid built from the last feature map
alone, handed to torchvision's detectors (FCOS or Faster R-CNN); no detector of vitkit's own.

The pyramid: the encoder's patch tokens on their grid (stride = the patch size P, after the final LayerNorm) become
maps at scales 4, 2, 1 and 1/2 of it (strides P/4, P/2, P, 2P) by two deconvolutions (x4: deconv, norm, GELU, deconv),
one deconvolution (x2), the map itself, and a 2 x 2 max-pool (x1/2); each then a 1x1 and a 3x3 convolution with a norm
after each (LayerNorm over the channels, ViTDet's choice, or GroupNorm), `out_channels` wide. ViTDet's extra p6 level
(a stride-2 subsample of the last one, for the RPN on 1024 px images) is not built: small images have no room for it.

Input conventions, chosen once, here (`DetectionTransform`): the detector takes images as torchvision's detectors do,
a list (or a batch) of (C, H, W) images of any size, uint8 0-255 or float in [0, 1], and normalises them itself with
the encoder's statistics (`data.normalize`: "google" maps [0, 1] to [-1, 1], as every vitkit model is trained); not
the already-normalised tensors a vitkit classifier takes. Grayscale images are repeated to the encoder's channels
(and RGB ones reduced by luminance for a one-channel encoder). Every image is resized to the encoder's own size (its
config's image_size: aspect ratio not kept; an image already that size is left as it is), since a ViT's position
embeddings are made for one patch grid; boxes are scaled with it and predictions come back in each input image's
own pixels. To detect at another resolution, build with `image_size=` (or call the encoder's `set_image_size`): the
position embeddings are resampled over the new grid, as for fine-tuning (paper section 3.2).

Labels: 0 is the background, objects are 1..K (the canvas task's classes, `coco_folder`'s), and `num_classes`
counts the background: K + 1, torchvision's convention for both detectors (Faster R-CNN's softmax has a background
column; FCOS's sigmoid channel 0 is never a target, so it learns to stay off, as torchvision's COCO FCOS with its 91).

The built detector is torchvision's FCOS or Faster R-CNN itself (subclassed only to answer what vitkit asks of every
model: `config`, `encoder`, `set_image_size`, `reset_head`, `set_grad_checkpointing`); its `config` is a
`DetectionModelConfig` (arch "detection": the encoder's config and the builder's arguments, `spec`), registered with
models/registry.py, so that vitkit's format saves and loads it as any model (weights under torchvision's own names).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.models.detection import FCOS, FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from vitkit.data.transforms import match_channels, norm_stats
from vitkit.heads.segmentation import EncoderRecord, SegmentationModel, encoder_stride, strip_classifier
from vitkit.models.registry import ARCHS, build_model, config_from_dict, config_to_dict

SCALES = (4.0, 2.0, 1.0, 0.5)  # ViTDet's: strides P/4 .. 2P (4, 8, 16, 32 for patch 16)
NORMS = ("layer", "group")
KINDS = ("fcos", "faster_rcnn")
# set by build_detector from the pyramid and the encoder: not options
BUILT = {"backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std", "fixed_size", "size_divisible",
         "anchor_generator", "rpn_anchor_generator", "head", "box_roi_pool", "box_head", "box_predictor", "kwargs"}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return LayerNorm2d(channels, eps=1e-6)  # over the channels at each position (ViTDet's)
    return nn.GroupNorm(min(32, channels), channels)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid on a ViT encoder: `pyramid(images) -> OrderedDict("0": finest map, ...)`, each
    (B, out_channels, H / stride, W / stride), a backbone as torchvision's detectors take one (`.out_channels`).

    `scales`: a subset of (4, 2, 1, 0.5), finest first; fewer levels for small images (a 64 px image with patch 8 has an
    8 x 8 grid: all four give 32, 16, 8 and 4 px maps). Each level's stride P / scale must be a whole number of pixels
    (torchvision places anchors at integer strides), and a 0.5 level needs an even patch grid."""

    patch_grid = SegmentationModel.patch_grid  # the patch tokens on their grid (B, D, H/P, W/P), one owner for it

    def __init__(self, encoder: nn.Module, out_channels: int = 256, scales: tuple[float, ...] = SCALES, norm: str = "layer"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"feature pyramid norm={norm!r} is not one of {NORMS}")
        scales = tuple(sorted({float(s) for s in scales}, reverse=True))
        bad = [s for s in scales if s not in SCALES]
        if not scales or bad:
            raise ValueError(f"feature pyramid scales={list(scales)}: each one of {list(SCALES)} (ViTDet's), one at least")
        if out_channels < 1:
            raise ValueError(f"feature pyramid out_channels={out_channels}: one channel at least")
        self.encoder = strip_classifier(encoder, "the feature pyramid")
        P, D, grid = encoder_stride(encoder), encoder.config.width, encoder.config.grid
        for s in scales:
            if (P / s) % 1 or any((g * s) % 1 for g in grid):
                raise ValueError(f"feature pyramid scale {s}: a {grid[0]}x{grid[1]} patch grid of stride {P} gives a stride of "
                                 f"{P / s:g} px and a {grid[0] * s:g}x{grid[1] * s:g} map; a level needs a whole stride and map "
                                 f"(an even grid for 0.5, a patch size divisible by 4 for 4.0): drop that scale or change the size")
        if 4.0 in scales and D % 4 or 2.0 in scales and D % 2:
            raise ValueError(f"feature pyramid: the encoder's width {D} does not halve twice for the x2 and x4 levels; drop them")
        self.scales, self.out_channels = scales, out_channels
        self.strides = [int(P / s) for s in scales]
        self.names = [str(i) for i in range(len(scales))]
        bias = False  # a norm follows every conv (ViTDet: bias only without a norm)
        levels = []
        for s in scales:
            if s == 4.0:
                up = [nn.ConvTranspose2d(D, D // 2, 2, 2), _norm(norm, D // 2), nn.GELU(), nn.ConvTranspose2d(D // 2, D // 4, 2, 2)]
                dim = D // 4
            elif s == 2.0:
                up, dim = [nn.ConvTranspose2d(D, D // 2, 2, 2)], D // 2
            elif s == 1.0:
                up, dim = [], D
            else:
                up, dim = [nn.MaxPool2d(2, 2)], D
            levels.append(nn.Sequential(*up, nn.Conv2d(dim, out_channels, 1, bias=bias), _norm(norm, out_channels),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias), _norm(norm, out_channels)))
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        grid = self.patch_grid(x)  # (B, D, h, w), stride P
        if 0.5 in self.scales and (grid.shape[-2] % 2 or grid.shape[-1] % 2):
            raise ValueError(f"feature pyramid: the 0.5 level needs an even patch grid, this input gives "
                             f"{grid.shape[-2]}x{grid.shape[-1]}; use another image size or drop scale 0.5")
        return OrderedDict((name, level(grid)) for name, level in zip(self.names, self.levels))  # each (B, C, h*s, w*s)


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with vitkit's conventions (module docstring): uint8 or [0, 1] images, channels
    matched to the encoder's, normalised by its statistics, resized to the encoder's current size (read from its
    config at every call, so `set_image_size` carries over), no padding."""

    def __init__(self, encoder_config, normalize: str = "google"):
        h, w = self._size(encoder_config)
        mean, std = norm_stats(normalize, encoder_config.in_chans)
        super().__init__(min(h, w), max(h, w), list(mean), list(std), size_divisible=1, fixed_size=(w, h))
        self.encoder_config, self.channels, self.normalization = encoder_config, encoder_config.in_chans, normalize

    @staticmethod
    def _size(cfg) -> tuple[int, int]:
        s = cfg.image_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype == torch.uint8:
            image = image.float() / 255
        return super().normalize(match_channels(image, self.channels))

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        h, w = self._size(self.encoder_config)
        self.fixed_size = (w, h)  # torchvision's order
        if tuple(image.shape[-2:]) == (h, w):
            return image, target
        return super().resize(image, target)


@dataclass
class DetectionModelConfig(EncoderRecord):
    """A detector's architecture (arch "detection"): the encoder's config (without a classifier) and `spec`, the
    arguments of `build_detector` (kind, num_classes, scales, out_channels, norm, normalize, anchor_sizes,
    representation_size and torchvision's options). The encoder's size, channels and name are the model's."""

    encoder: Any  # ViTConfig (a plain ViT or a hybrid) or AxialViTConfig: the encoder's own, shared with it
    spec: dict = field(default_factory=dict)
    arch = "detection"  # the record's kind (models/registry.py ARCHS), not a field

    @property
    def num_classes(self) -> int:
        return self.spec["num_classes"]

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    def at_size(self, image_size: int | tuple[int, int]) -> "DetectionModelConfig":
        """This architecture at another input size (its encoder's grid resized)."""
        return dataclasses.replace(self, encoder=dataclasses.replace(self.encoder, image_size=image_size), spec=dict(self.spec))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "encoder": config_to_dict(self.encoder), "spec": dict(self.spec)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectionModelConfig":
        """From `to_dict`'s record; the encoder's dropouts (`load`'s overrides: dropout, attn_dropout, drop_path) go to the
        encoder."""
        d = dict(d)
        encoder = d.pop("encoder", None)
        spec = d.pop("spec", None)
        d.pop("arch", None)
        moved = {k: d.pop(k) for k in ("dropout", "attn_dropout", "drop_path") if k in d}
        if d or not isinstance(encoder, dict) or not isinstance(spec, dict):
            raise ValueError(f"a detection model's record holds arch, encoder and spec (objects), not {sorted(d) or 'this'}")
        if spec.get("kind") not in KINDS or not isinstance(spec.get("num_classes"), int):
            raise ValueError(f"a detection model's spec needs kind (one of {KINDS}) and num_classes (an integer), not "
                             f"kind={spec.get('kind')!r}, num_classes={spec.get('num_classes')!r}")
        return cls(config_from_dict({**encoder, **moved}), spec)


class _OnViT:
    """What vitkit asks of every model, on torchvision's detectors (ViTFCOS, ViTFasterRCNN)."""

    config: DetectionModelConfig
    spec: dict

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.encoder

    @property
    def num_classes(self) -> int:
        return self.spec["num_classes"]

    @torch.no_grad()
    def set_image_size(self, image_size: int | tuple[int, int], mode: str = "bilinear") -> None:
        """Run at another resolution: the encoder's position embeddings resampled over the new grid (its own
        `set_image_size`); the pyramid, heads and anchors hold no grid-sized weight, and the transform resizes to the
        encoder's size at every call."""
        self.encoder.set_image_size(image_size, mode)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The encoder's blocks recomputed in backward (the pyramid and heads are small)."""
        if not hasattr(self.encoder, "set_grad_checkpointing"):
            raise ValueError(f"{type(self.encoder).__name__} has no checkpointed blocks; set train.activation_checkpointing=false")
        self.encoder.set_grad_checkpointing(enable)

    @torch.no_grad()
    def reset_head(self, num_classes: int, zero: bool = True) -> None:
        """A new last classification layer for `num_classes` (the background counts): FCOS's logits convolution at its
        prior (every location starts at p = 0.01, RetinaNet's initialisation), Faster R-CNN's box predictor; the rest
        kept. `zero` is accepted for the common signature: a detector's new layer is initialised as torchvision's."""
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"detector num_classes={num_classes!r}: the background (label 0) and one class at least")
        device = next(self.parameters()).device
        if isinstance(self, FCOS):
            head = self.head.classification_head
            old = head.cls_logits
            new = nn.Conv2d(old.in_channels, old.out_channels // head.num_classes * num_classes, 3, padding=1)
            nn.init.normal_(new.weight, std=0.01)
            nn.init.constant_(new.bias, -math.log((1 - 0.01) / 0.01))
            head.cls_logits, head.num_classes = new.to(device), num_classes
        else:
            rep = self.roi_heads.box_predictor.cls_score.in_features
            self.roi_heads.box_predictor = FastRCNNPredictor(rep, num_classes).to(device)
        self.spec["num_classes"] = num_classes


class ViTFCOS(_OnViT, FCOS):
    """torchvision's FCOS on a ViT's simple feature pyramid (`build_detector`)."""


class ViTFasterRCNN(_OnViT, FasterRCNN):
    """torchvision's Faster R-CNN on a ViT's simple feature pyramid (`build_detector`)."""


def _check_options(cls: type, options: dict) -> None:
    valid = sorted(set(inspect.signature(cls.__init__).parameters) - BUILT - {"self"})
    wrong = sorted(set(options) - set(valid))
    if wrong:
        raise ValueError(f"detector options {wrong}: not options of torchvision's {cls.__name__} here (the pyramid, anchors, "
                         f"RoI pooling, size and normalisation are set from the encoder); valid ones: {valid}")


def build_detector(encoder: nn.Module, num_classes: int, kind: str = "fcos", scales: tuple[float, ...] = SCALES,
                   out_channels: int = 256, norm: str = "layer", normalize: str = "google",
                   image_size: int | tuple[int, int] | None = None, anchor_sizes: tuple[float, ...] | None = None,
                   representation_size: int = 1024, **options) -> nn.Module:
    """torchvision's FCOS or Faster R-CNN on a SimpleFeaturePyramid of `encoder` (module docstring for inputs and
    labels). `model(images, targets) -> losses` in train mode, `model(images) -> [{"boxes", "labels", "scores"}]` in
    eval mode, as torchvision's detectors.

    Anchors per level: FCOS, one point per location of size = the level's stride (torchvision's FCOS: sizes = strides,
    each level answering for objects 4-8x its stride); Faster R-CNN, aspect ratios 0.5, 1, 2 of size 8x the stride
    (torchvision's FPN: 32 px at stride 4), RoIAlign 7 x 7 over every level and a two-layer MLP box head of
    `representation_size` (1024: torchvision's). `anchor_sizes` replaces the sizes, one per level. Other `options` go
    to torchvision's constructor (score_thresh, detections_per_img, box_batch_size_per_image, rpn_*...).

    The built model's `.spec` holds these arguments (JSON-safe when the options are): `build_detector(encoder,
    **model.spec)` on an encoder of the same config rebuilds it for a saved state dict."""
    if kind not in KINDS:
        raise ValueError(f"detector kind={kind!r} is not one of {KINDS}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"detector num_classes={num_classes!r}: the background (label 0) and the object classes 1..K, "
                         f"K + 1 >= 2 in all (the canvas task's and coco_folder's class lists count it)")
    _check_options(FCOS if kind == "fcos" else FasterRCNN, options)
    if image_size is not None:
        encoder.set_image_size(image_size)
    backbone = SimpleFeaturePyramid(encoder, out_channels, scales, norm)
    strides = backbone.strides
    if anchor_sizes is not None and len(anchor_sizes) != len(strides):
        raise ValueError(f"anchor_sizes={list(anchor_sizes)}: one size per pyramid level, {len(strides)} here (strides {strides})")
    if kind == "fcos":
        if out_channels % 32:
            raise ValueError(f"out_channels={out_channels}: FCOS's head normalises with GroupNorm(32, channels); a multiple of 32")
        sizes = tuple(anchor_sizes or strides)
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * len(sizes))
        model = ViTFCOS(backbone, num_classes, anchor_generator=anchors, **options)
    else:
        if any(s & (s - 1) for s in strides):
            raise ValueError(f"Faster R-CNN: pyramid strides {strides}; torchvision's RoI pooling infers each level's scale as a "
                             f"power of two, so the patch size must be one (8, 16, 32); use kind='fcos' for this encoder")
        sizes = tuple(anchor_sizes or (8 * s for s in strides))
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
        pool = MultiScaleRoIAlign(backbone.names, output_size=7, sampling_ratio=2)
        model = ViTFasterRCNN(backbone, None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                           box_head=TwoMLPHead(out_channels * 7 * 7, representation_size),
                           box_predictor=FastRCNNPredictor(representation_size, num_classes), **options)
    model.transform = DetectionTransform(encoder.config, normalize)
    model.spec = dict(kind=kind, num_classes=num_classes, scales=list(backbone.scales), out_channels=out_channels, norm=norm,
                      normalize=normalize, anchor_sizes=None if anchor_sizes is None else list(anchor_sizes),
                      representation_size=representation_size, **options)
    model.config = DetectionModelConfig(encoder.config, model.spec)  # one spec: reset_head updates both
    return model


def detector_from_config(cfg: DetectionModelConfig) -> nn.Module:
    """A detector from its record (weights freshly initialised): `build_detector(build_model(cfg.encoder), **cfg.spec)`."""
    return build_detector(build_model(cfg.encoder), **cfg.spec)


ARCHS["detection"] = (DetectionModelConfig, detector_from_config, "detection model")


def detection_loss(losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, metrics) of a torchvision detector's losses in train mode, as the training loop's objectives return
    them: the total is their plain sum (torchvision's reference scripts weight them so), each part a detached metric."""
    if not losses:
        raise ValueError("no detector losses: call the detector in train mode with targets")
    return sum(losses.values()), {k: v.detach() for k, v in losses.items()}
