"""BiT ResNets: weight-standardised convs + GroupNorm(32).

Two flavours live here, as in the official code:
- `ResNetStem`: the hybrid's CNN (vit_jax `models_resnet.py`): post-activation bottlenecks
  (conv-GN-ReLU), TF "SAME" padding, GN before the residual sum, ReLU after it.
- `BiTResNet`: the paper's CNN baseline (Big Transfer): pre-activation bottlenecks, a standalone
  classifier with a zero-initialised 1x1-conv head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.config import Range, check_number


def check_fields(cfg: object, numbers: dict[str, tuple[type, Range]], flags: tuple[str, ...] = ()) -> None:
    """A model config's numeric fields against their (type, Range) and its flags as booleans: ValueError naming the
    field, so that a config read from a file is refused as one built in code."""
    for name, (kind, rng) in numbers.items():
        check_number(name, getattr(cfg, name), kind, rng)
    for name in flags:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name}={getattr(cfg, name)!r}: must be true or false")


def check_layers(cfg: object, least: int) -> None:
    """`layers` (units per stage) as a tuple of integers >= 1, `least` stages at least (a list, as JSON has it, is
    made a tuple)."""
    layers = cfg.layers
    if not isinstance(layers, (tuple, list)) or len(layers) < least or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers):
        raise ValueError(f"layers={layers!r}: must be a list of units per stage, integers >= 1"
                         + (f", {least} stage(s) at least" if least else ""))
    cfg.layers = tuple(layers)


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TF/Flax "SAME" padding: output = ceil(input / stride), the extra pixel going right/bottom."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
    return x


@torch.no_grad()
def truncated_lecun_(w: torch.Tensor) -> torch.Tensor:
    """Flax's default kernel initialiser (lecun_normal: variance 1 / fan_in, a normal truncated at 2 std and rescaled
    so that the variance holds); fan_in is everything but the output axis (PyTorch's dimension 0)."""
    std = math.sqrt(1.0 / w[0].numel()) / 0.87962566103423978  # the std of a unit normal truncated at +-2
    return nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


class StdConv2d(nn.Conv2d):
    """Conv with weight standardisation: (w - mean) / (std + eps) over each filter's (I, H, W).

    Kernels are stored raw and standardised at run time, as in vit_jax `models_resnet.StdConv`.
    `same=True` pads like TF "SAME" (the official hybrid); otherwise the usual symmetric padding.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, eps: float = 1e-5, same: bool = False):
        super().__init__(cin, cout, kernel, stride, padding=0 if same else kernel // 2, bias=False)
        self.eps = eps
        self.same = same

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) / (var.sqrt() + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.standardized_weight()
        k = self.kernel_size[0]
        if self.same:
            x = pad_same(x, k, self.stride[0])
        elif k > 1 and x.shape[-2:] == (1, 1) and self.padding == (k // 2, k // 2):
            # a 1 x 1 map (a small image deep in the net): only the centre tap meets the input, the rest meets padding,
            # so this is the 1 x 1 convolution of the centre weights. Computed so, because oneDNN's bf16 weight gradient
            # of the padded, strided form is NaN for such an input in channels_last (torch 2.14: bf16 BiT training on
            # 16 px images diverged at its second step)
            c = k // 2
            return F.conv2d(x, w[:, :, c : c + 1, c : c + 1])
        return F.conv2d(x, w, None, self.stride, self.padding)


def group_norm(channels: int, eps: float, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=eps)


@dataclass
class ResNetConfig:
    """The CNN part of a hybrid (vit_jax `config.resnet`): units per stage and width factor."""

    layers: tuple[int, ...] = (3, 4, 9)
    width_factor: int = 1
    ws_eps: float = 1e-5  # official: (w - mean) / (std + 1e-5); timm's hybrids use 1e-8
    gn_eps: float = 1e-6  # Flax GroupNorm's default; timm's hybrids use 1e-5

    NUMBERS = {"width_factor": (int, Range(ge=1)), "ws_eps": (float, Range(gt=0)), "gn_eps": (float, Range(gt=0))}

    def __post_init__(self) -> None:
        check_layers(self, 0)  # no stage: the root conv and max-pool alone
        check_fields(self, self.NUMBERS)

    @property
    def stride(self) -> int:
        # root conv /2, max-pool /2, then /2 at the start of every stage after the first
        return 4 * 2 ** max(len(self.layers) - 1, 0)

    @property
    def out_channels(self) -> int:
        width = 64 * self.width_factor
        return width * 4 * 2 ** (len(self.layers) - 1) if self.layers else width


# --- the hybrid's ResNet (post-activation, SAME padding) -------------------------------------------


class Bottleneck(nn.Module):
    """conv1x1-GN-ReLU, conv3x3(stride)-GN-ReLU, conv1x1-GN, + projected residual, ReLU."""

    def __init__(self, cin: int, width: int, stride: int, eps: float, gn_eps: float):
        super().__init__()
        cout = 4 * width
        self.conv1 = StdConv2d(cin, width, 1, eps=eps, same=True)
        self.gn1 = group_norm(width, eps=gn_eps)
        self.conv2 = StdConv2d(width, width, 3, stride, eps=eps, same=True)
        self.gn2 = group_norm(width, eps=gn_eps)
        self.conv3 = StdConv2d(width, cout, 1, eps=eps, same=True)
        self.gn3 = group_norm(cout, eps=gn_eps)
        self.conv_proj = self.gn_proj = None
        if cin != cout or stride != 1:
            self.conv_proj = StdConv2d(cin, cout, 1, stride, eps=eps, same=True)
            self.gn_proj = group_norm(cout, eps=gn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.conv_proj is None else self.gn_proj(self.conv_proj(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(residual + y)


class ResNetStem(nn.Module):
    """The hybrid's CNN: root (StdConv 7x7/2, GN, ReLU, max-pool 3x3/2 SAME) then bottleneck stages."""

    def __init__(self, cfg: ResNetConfig, in_chans: int):
        super().__init__()
        width = 64 * cfg.width_factor
        self.conv_root = StdConv2d(in_chans, width, 7, 2, eps=cfg.ws_eps, same=True)
        self.gn_root = group_norm(width, eps=cfg.gn_eps)
        stages, cin = [], width
        for i, units in enumerate(cfg.layers):
            w = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = [Bottleneck(cin if u == 0 else 4 * w, w, stride if u == 0 else 1, cfg.ws_eps, cfg.gn_eps) for u in range(units)]
            stages.append(nn.Sequential(*blocks))
            cin = 4 * w
        self.stages = nn.Sequential(*stages)
        self.out_channels = cfg.out_channels
        for m in self.modules():
            if isinstance(m, StdConv2d):  # the official code's convolutions: Flax's default init, not PyTorch's uniform
                truncated_lecun_(m.weight)
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.gn3.weight)  # each unit starts as the identity (official scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        return self.stages(x)


# --- BiT: the standalone pre-activation ResNet-v2 classifier ---------------------------------------


@dataclass
class BiTConfig:
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: int = 1
    num_classes: int = 1000
    in_chans: int = 3
    image_size: int | tuple[int, int] = 224
    ws_eps: float = 1e-8
    zero_head: bool = True
    arch: str = "bit"

    NUMBERS = {"width_factor": (int, Range(ge=1)), "num_classes": (int, Range(ge=0, note="0: no head")),
               "in_chans": (int, Range(ge=1)), "ws_eps": (float, Range(gt=0))}

    def __post_init__(self) -> None:
        from vitkit.models.vit import check_image_size

        check_layers(self, 1)
        check_fields(self, self.NUMBERS, ("zero_head",))
        check_image_size(self.image_size)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)


class PreActBottleneck(nn.Module):
    """GN-ReLU-conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1, + residual (projected from the pre-activation)."""

    def __init__(self, cin: int, width: int, stride: int, eps: float):
        super().__init__()
        cout = 4 * width
        self.gn1 = group_norm(cin, eps=1e-5)
        self.conv1 = StdConv2d(cin, width, 1, eps=eps)
        self.gn2 = group_norm(width, eps=1e-5)
        self.conv2 = StdConv2d(width, width, 3, stride, eps=eps)
        self.gn3 = group_norm(width, eps=1e-5)
        self.conv3 = StdConv2d(width, cout, 1, eps=eps)
        self.downsample = StdConv2d(cin, cout, 1, stride, eps=eps) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(x))
        residual = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + residual


class BiTResNet(nn.Module):
    """BiT ResNet-v2 (Kolesnikov et al. 2020), the paper's CNN baseline: R50x1, R101x3, R152x4, ..."""

    def __init__(self, cfg: BiTConfig):
        super().__init__()
        self.config = cfg
        width = 64 * cfg.width_factor
        self.conv_root = StdConv2d(cfg.in_chans, width, 7, 2, eps=cfg.ws_eps)
        stages, cin = [], width
        for i, units in enumerate(cfg.layers):
            w = width * 2**i
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[PreActBottleneck(cin if u == 0 else 4 * w, w, stride if u == 0 else 1, cfg.ws_eps) for u in range(units)]))
            cin = 4 * w
        self.stages = nn.Sequential(*stages)
        self.norm = group_norm(cin, eps=1e-5)
        self.num_features = cin
        self.head = nn.Identity()
        self.reset_head(cfg.num_classes, zero=cfg.zero_head)

    @torch.no_grad()
    def reset_head(self, num_classes: int, zero: bool = True) -> None:
        """A new 1x1-conv classifier of `num_classes` (zero-initialised, as BiT's fine-tuning head)."""
        self.config.num_classes = num_classes
        self.head = nn.Conv2d(self.num_features, num_classes, 1) if num_classes else nn.Identity()
        if num_classes and zero:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_root(x)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # BiT pads with zeros after the ReLU-free root
        x = self.stages(x)
        return F.relu(self.norm(x))  # (B, C, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        if pre_logits:
            return x.flatten(1)
        return self.head(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
