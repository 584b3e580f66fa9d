"""Axial attention models (paper appendix D.7): Axial-ViT, whose blocks attend along the rows and then the columns of
the patch grid instead of over all of it, and AxialResNet, a ResNet-50 whose bottlenecks' 3 x 3 convolutions are
axial attention (Wang et al. 2020, "Axial-DeepLab", section 3 and its ImageNet classifier). The paper's point: more
accurate than ViT at the same size, slower in practice (benchmarks/speed.py --models Axial-ViT-B/16,ViT-B/16).

Read top to bottom: Axial-ViT's config, block and model; AxialResNet's config, axial-attention layer, bottleneck and
model; then the variant table.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from vitkit.config import Range, check_number
from vitkit.models import vit
from vitkit.models.posemb import resample_posemb, sincos_2d
from vitkit.models.resnet import check_fields, check_layers, truncated_lecun_
from vitkit.models.vit import (Attention, Mlp, PatchEmbed, VisionTransformer, check_image_size, config_from_known,
                               official_init_)

AXIAL_POSEMBS = ("learned", "sincos2d", "none")


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


# --- Axial-ViT -------------------------------------------------------------------------------------------------


@dataclass
class AxialViTConfig:
    """Axial-ViT's architecture: ViT's options (vit.ViTConfig), less those a class token would need. Saved as JSON
    beside every checkpoint (arch "axial_vit")."""

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    width: int = 768
    depth: int = 12  # axial blocks, each a row and a column attention with an MLP after each
    heads: int = 12
    mlp_dim: int = 3072
    pool: str = "gap"  # the only pooling: a class token cannot take part in row or column attention
    class_token: bool | None = False  # None or False (a ModelConfig's null); True is refused
    fc_norm: bool = False
    posemb: str = "learned"  # AXIAL_POSEMBS, added to the patch embeddings after the stem, as ViT's
    representation_size: int | None = None
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    zero_head: bool = True
    head_bias_init: float = 0.0
    gelu: str = "exact"
    name: str | None = None
    arch: str = "axial_vit"

    def __post_init__(self) -> None:
        check_image_size(self.image_size)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        own = {f.name for f in fields(self)}
        check_fields(self, {k: v for k, v in vit.NUMBERS.items() if k in own}, tuple(f for f in vit.FLAGS if f in own))
        if self.representation_size is not None:
            check_number("representation_size", self.representation_size, int, Range(ge=0, note="0 or null: none"))
        for name in ("name", "pool", "posemb", "gelu"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a string")
        if self.class_token is None:
            self.class_token = False
        if self.pool != "gap" or self.class_token is not False:
            raise ValueError(f"pool={self.pool!r}, class_token={self.class_token!r}: Axial-ViT pools by the mean of its "
                             f"patch tokens (a class token is in no row or column of the grid); use pool='gap', class_token=False")
        if self.posemb not in AXIAL_POSEMBS:
            raise ValueError(f"posemb={self.posemb!r}: Axial-ViT takes one of {AXIAL_POSEMBS}")
        if self.gelu not in vit.GELUS:
            raise ValueError(f"gelu={self.gelu!r} is not one of {vit.GELUS}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is a probability in [0, 1)")
        h, w = _pair(self.image_size)
        if h % self.patch_size or w % self.patch_size:
            p = self.patch_size
            ok = ", ".join(str(p * k) for k in range(max(1, h // p - 1), h // p + 3))
            raise ValueError(f"image size {self.image_size} is not divisible by the patch size {p}; valid sizes near it: {ok}")

    @property
    def grid(self) -> tuple[int, int]:
        h, w = _pair(self.image_size)
        return (h // self.patch_size, w // self.patch_size)

    num_prefix_tokens = 0  # no class token
    resnet = None  # no hybrid stem: PatchEmbed cuts raw patches

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["image_size"], tuple):
            d["image_size"] = list(d["image_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AxialViTConfig":
        return config_from_known(cls, d, "Axial-ViT")


def rows_of(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, h*w, D) in raster order -> one sequence per row of the grid (B*h, w, D)."""
    B, N, D = x.shape
    return x.reshape(B * grid[0], grid[1], D)


def columns_of(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, h*w, D) in raster order -> one sequence per column of the grid (B*w, h, D)."""
    B, N, D = x.shape
    return x.reshape(B, grid[0], grid[1], D).transpose(1, 2).reshape(B * grid[1], grid[0], D)


def from_columns(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of `columns_of`: (B*w, h, D) -> (B, h*w, D) in raster order."""
    h, w = grid
    D = x.shape[-1]
    return x.reshape(-1, w, h, D).transpose(1, 2).reshape(-1, h * w, D)


class AxialBlock(nn.Module):
    """Two pre-norm transformer blocks in one, the first attending within each row of the patch grid, the second
    within each column (appendix D.7: "each followed by its MLP"):
    z = RowMSA(LN(z)) + z ; z = MLP(LN(z)) + z ; z = ColMSA(LN(z)) + z ; z = MLP(LN(z)) + z."""

    def __init__(self, cfg: AxialViTConfig, drop_path: float):
        super().__init__()
        D = cfg.width

        def attention() -> Attention:
            return Attention(D, cfg.heads, cfg.qkv_bias, cfg.attn_dropout, cfg.dropout)

        self.norm1, self.row_attn = nn.LayerNorm(D, eps=cfg.ln_eps), attention()
        self.norm2, self.row_mlp = nn.LayerNorm(D, eps=cfg.ln_eps), Mlp(D, cfg.mlp_dim, cfg.dropout, cfg.gelu)
        self.norm3, self.col_attn = nn.LayerNorm(D, eps=cfg.ln_eps), attention()
        self.norm4, self.col_mlp = nn.LayerNorm(D, eps=cfg.ln_eps), Mlp(D, cfg.mlp_dim, cfg.dropout, cfg.gelu)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.grid = cfg.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, h*w, D), raster order
        B, N, D = x.shape
        rows, _ = self.row_attn(rows_of(self.norm1(x), self.grid), False)  # (B*h, w, D)
        x = x + self.drop_path(rows.reshape(B, N, D))
        x = x + self.drop_path(self.row_mlp(self.norm2(x)))
        cols, _ = self.col_attn(columns_of(self.norm3(x), self.grid), False)  # (B*w, h, D)
        x = x + self.drop_path(from_columns(cols, self.grid))
        return x + self.drop_path(self.col_mlp(self.norm4(x)))


class AxialVisionTransformer(nn.Module):
    """Axial-ViT: ViT's patch embedding and position embedding (learned, added after the stem), `depth` axial blocks,
    LayerNorm, global average pooling over the patch tokens, head. No class token: it belongs to no row or column, so
    it could see the image only through a pooling of its own; the mean of the patch tokens (ViT's pool="gap", which
    the paper finds as good given its learning rate, appendix D.3) is that pooling.

    The same interface as VisionTransformer (forward_features / forward_head / reset_head / drop_pre_logits /
    set_image_size, and patch_embed / add_tokens / encode / norm for masked patch prediction)."""

    def __init__(self, cfg: AxialViTConfig):
        super().__init__()
        self.config = cfg
        D = cfg.width
        self.patch_embed = PatchEmbed(cfg)
        self.num_prefix_tokens = 0
        self.cls_token = None
        n_pos = cfg.grid[0] * cfg.grid[1]
        if cfg.posemb == "learned":
            self.pos_embed = nn.Parameter(torch.empty(1, n_pos, D))
        else:
            self.register_parameter("pos_embed", None)
        if cfg.posemb == "sincos2d":
            self.register_buffer("pos_embed_fixed", sincos_2d(cfg.grid, D)[None], persistent=False)
        self.pos_drop = nn.Dropout(cfg.dropout)
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([AxialBlock(cfg, dpr[i]) for i in range(cfg.depth)])
        VisionTransformer.build_classifier(self, cfg)
        self.grad_checkpointing = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """VisionTransformer.init_weights' official (Flax) initialisers, on both attentions and MLPs of a block."""
        truncated_lecun_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)
        for blk in self.blocks:
            official_init_(blk.row_attn, blk.row_mlp)
            official_init_(blk.col_attn, blk.col_mlp)
        if self.config.representation_size:
            truncated_lecun_(self.pre_logits[0].weight)
            nn.init.zeros_(self.pre_logits[0].bias)
        if isinstance(self.head, nn.Linear):
            self.reset_head(zero=self.config.zero_head)

    # the classifier's handling is ViT's own
    set_grad_checkpointing = VisionTransformer.set_grad_checkpointing
    reset_head = VisionTransformer.reset_head
    drop_pre_logits = VisionTransformer.drop_pre_logits
    forward_head = VisionTransformer.forward_head
    forward = VisionTransformer.forward

    @torch.no_grad()
    def set_image_size(self, image_size: int | tuple[int, int], mode: str = "bilinear") -> None:
        """Rebuild for another resolution: same patch size, a learned position embedding resampled over the grid."""
        cfg = self.config
        old_grid = cfg.grid
        cfg.image_size = AxialViTConfig.from_dict({**cfg.to_dict(), "image_size": image_size}).image_size  # validated
        self.patch_embed.image_size = _pair(cfg.image_size)
        self.patch_embed.grid = cfg.grid
        for blk in self.blocks:
            blk.grid = cfg.grid
        if self.pos_embed is not None:
            self.pos_embed = nn.Parameter(resample_posemb(self.pos_embed.data, cfg.grid, old_grid, 0, mode))
        if cfg.posemb == "sincos2d":
            self.pos_embed_fixed = sincos_2d(cfg.grid, cfg.width)[None].to(self.pos_embed_fixed.device)

    def add_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Add the position embedding to patch embeddings (B, N, D)."""
        if self.pos_embed is not None:
            x = x + self.pos_embed
        elif self.config.posemb == "sincos2d":
            x = x + self.pos_embed_fixed.to(x.dtype)
        return self.pos_drop(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_tokens(self.patch_embed(x))  # (B, N, D)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token states (B, N, D) through the axial blocks, before the final LayerNorm."""
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encode(self.embed(x))
        return x if self.config.fc_norm else self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)  # (B, D)


# --- AxialResNet -----------------------------------------------------------------------------------------------


@dataclass
class AxialResNetConfig:
    """AxialResNet's architecture (arch "axial_resnet"): units per stage as ResNet-50 and BiT (BiTConfig), the width
    factor, and the attention heads of every axial layer (Axial-DeepLab's "groups": 8)."""

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: int = 1
    heads: int = 8
    num_classes: int = 1000
    in_chans: int = 3
    image_size: int | tuple[int, int] = 224
    zero_head: bool = True
    arch: str = "axial_resnet"

    NUMBERS = {"width_factor": (int, Range(ge=1)), "heads": (int, Range(ge=1)),
               "num_classes": (int, Range(ge=0, note="0: no head")), "in_chans": (int, Range(ge=1))}

    def __post_init__(self) -> None:
        check_layers(self, 1)
        check_fields(self, self.NUMBERS, ("zero_head",))
        check_image_size(self.image_size)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        if (64 * self.width_factor) % (2 * self.heads):
            raise ValueError(f"heads={self.heads}: the first stage's width {64 * self.width_factor} must divide into "
                             f"heads of an even size (queries and keys take half of each head's channels)")

    def spans(self) -> list[tuple[int, int]]:
        """The feature map (h, w) each stage's first unit attends over at the config's size (every halving rounds up:
        the stem's 7x7/2 conv and 3x3/2 max-pool, the stride-2 shortcut convs and average pools)."""
        h, w = (math.ceil(math.ceil(s / 2) / 2) for s in _pair(self.image_size))
        out = []
        for i in range(len(self.layers)):
            out.append((h, w))
            stride = 1 if i == 0 else 2
            h, w = -(-h // stride), -(-w // stride)
        return out


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis ("height" or "width") of a (B, C, H, W) map, with learned relative
    position terms for queries, keys and values (Axial-DeepLab eq. 4):
    y_i = sum_j softmax_j(q_i.k_j + q_i.r^q_{i-j} + k_j.r^k_{j-i}) (v_j + r^v_{i-j}).

    As Axial-DeepLab: queries and keys take half of each head's channels, values all of them; no output projection
    (the bottleneck's 1x1 conv follows); the relative tables are shared by the heads; a BatchNorm on the output.
    Unlike it: logits scaled by 1/sqrt(d) instead of a BatchNorm on each of the three logit terms; relative distances
    beyond the span it was built for clipped to it (Shaw et al. 2018), so that any input size runs."""

    def __init__(self, dim: int, heads: int, span: int, axis: str):
        super().__init__()
        if axis not in ("height", "width"):
            raise ValueError(f"axis={axis!r}: 'height' or 'width'")
        self.heads, self.span, self.axis = heads, span, axis
        self.dv = dim // heads
        self.dq = self.dv // 2
        self.qkv = nn.Conv2d(dim, 2 * dim, 1, bias=False)  # per head: q (dq), k (dq), v (dv)
        self.rel_pos_embed = nn.Parameter(torch.empty(2 * self.dq + self.dv, 2 * span - 1))  # r^q, r^k, r^v by distance
        self.norm = nn.BatchNorm2d(dim)
        nn.init.normal_(self.qkv.weight, std=dim**-0.5)  # Axial-DeepLab's initialisers
        nn.init.normal_(self.rel_pos_embed, std=self.dv**-0.5)

    def relative(self, n: int) -> torch.Tensor:
        """The relative tables for a sequence of `n`: (2 dq + dv, n, n), [:, i, j] the entry for distance i - j."""
        pos = torch.arange(n, device=self.rel_pos_embed.device)
        dist = (pos[:, None] - pos[None, :]).clamp(-(self.span - 1), self.span - 1) + self.span - 1  # (n, n)
        return self.rel_pos_embed[:, dist]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(x)  # (B, 2C, H, W)
        # one sequence per column (height axis) or per row (width axis): (S, 2C, n)
        seq = qkv.permute(0, 3, 1, 2) if self.axis == "height" else qkv.permute(0, 2, 1, 3)  # (B, W|H, 2C, n)
        n = seq.shape[-1]
        q, k, v = seq.reshape(-1, self.heads, 2 * self.dq + self.dv, n).split([self.dq, self.dq, self.dv], dim=2)  # (S, h, d, n)
        rq, rk, rv = self.relative(n).split([self.dq, self.dq, self.dv], dim=0)  # (d, n, n)
        logits = (torch.einsum("shci,shcj->shij", q, k) + torch.einsum("shci,cij->shij", q, rq)
                  + torch.einsum("shcj,cji->shij", k, rk)) * self.dq**-0.5  # (S, h, n, n)
        attn = logits.softmax(dim=-1)
        y = torch.einsum("shij,shcj->shci", attn, v) + torch.einsum("shij,cij->shci", attn, rv)  # (S, h, dv, n)
        y = y.reshape(B, -1, C, n)  # (B, W|H, C, n)
        y = y.permute(0, 2, 3, 1) if self.axis == "height" else y.permute(0, 2, 1, 3)  # (B, C, H, W)
        return self.norm(y)


class AxialBottleneck(nn.Module):
    """ResNet-50's bottleneck with its 3x3 conv replaced by height- then width-axis attention (Axial-DeepLab's
    AxialBlock): conv1x1-BN-ReLU, attention(H), attention(W), 2x2 average pool on a stride-2 unit, ReLU,
    conv1x1-BN, + (projected) residual, ReLU."""

    def __init__(self, cin: int, width: int, stride: int, heads: int, span: tuple[int, int]):
        super().__init__()
        cout = 4 * width
        self.conv_down = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.height_attn = AxialAttention(width, heads, span[0], "height")
        self.width_attn = AxialAttention(width, heads, span[1], "width")
        # ceil_mode: an odd map's last row / column pooled alone, as the stride-2 shortcut conv keeps it
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.conv_up = nn.Conv2d(width, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # each unit starts as the identity (Axial-DeepLab's zero_init_residual)
        self.shortcut = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.bn1(self.conv_down(x)))  # (B, width, H, W)
        y = F.relu(self.pool(self.width_attn(self.height_attn(y))))  # (B, width, H/stride, W/stride)
        y = self.bn2(self.conv_up(y))
        return F.relu(residual + y)


class AxialResNet(nn.Module):
    """AxialResNet (Wang et al. 2020, the ImageNet classifier of Axial-DeepLab): stem conv 7x7/2-BN-ReLU, max-pool
    3x3/2, stages of axial bottlenecks (stride 2 at the start of every stage after the first), global average pool,
    linear head. Here in ResNet-50's layout (widths 64-512, outputs 4x: 256-2048), as appendix D.7 describes it;
    Axial-DeepLab's own classifiers use bottlenecks of twice the width and an expansion of 2."""

    def __init__(self, cfg: AxialResNetConfig):
        super().__init__()
        self.config = cfg
        width = 64 * cfg.width_factor
        self.conv_root = nn.Conv2d(cfg.in_chans, width, 7, 2, 3, bias=False)
        self.bn_root = nn.BatchNorm2d(width)
        nn.init.kaiming_normal_(self.conv_root.weight, mode="fan_out", nonlinearity="relu")
        stages, cin = [], width
        for i, (units, span) in enumerate(zip(cfg.layers, cfg.spans())):
            w = width * 2**i
            stride = 1 if i == 0 else 2
            half = (-(-span[0] // stride), -(-span[1] // stride))  # the map after the first unit's pooling
            stages.append(nn.Sequential(*[AxialBottleneck(cin if u == 0 else 4 * w, w, stride if u == 0 else 1, cfg.heads,
                                                          span if u == 0 else half) for u in range(units)]))
            cin = 4 * w
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.head = nn.Identity()
        self.reset_head(cfg.num_classes, zero=cfg.zero_head)

    @torch.no_grad()
    def reset_head(self, num_classes: int | None = None, zero: bool = True) -> None:
        """A new linear classifier of `num_classes` (zero-initialised for fine-tuning, as the paper's heads)."""
        num_classes = self.config.num_classes if num_classes is None else num_classes
        self.config.num_classes = num_classes
        p = self.bn_root.weight
        self.head = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype) if num_classes else nn.Identity()
        if num_classes and zero:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_root(self.conv_root(x)))
        x = F.max_pool2d(x, 3, 2, 1)  # (B, 64, H/4, W/4)
        return self.stages(x)  # (B, C, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- the variant table: ViT-B's sizes (vit.VARIANTS), ResNet-50's units -------------------------------------------

AXIAL_VARIANTS = {
    "Axial-ViT-B/16": (AxialViTConfig, dict(vit.VARIANTS["B"], patch_size=16)),
    "Axial-ViT-B/32": (AxialViTConfig, dict(vit.VARIANTS["B"], patch_size=32)),
    "AxialResNet50": (AxialResNetConfig, dict(layers=(3, 4, 6, 3))),
}
