"""The Vision Transformer, as equations 1-4 of Dosovitskiy et al. (2020) and vit_jax `models_vit.py`.

Read top to bottom: config, patch embedding (raw patches or a ResNet feature map), attention, MLP,
block, the model, then the variant table.
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
from vitkit.models.posemb import learned_2d, relative_logits, resample_axis, resample_posemb, sincos_2d
from vitkit.models.resnet import ResNetConfig, ResNetStem, check_fields, truncated_lecun_

POOLS = ("token", "gap")
# Position embeddings (appendix D.4): a learned 1-D table (the paper's default), a learned 2-D one (X and Y tables of
# D/2, concatenated per patch), the fixed 2-D sin-cos table (later big_vision recipes), 1-D relative attention, none
POSEMBS = ("learned", "learned2d", "sincos2d", "relative", "none")
# Where an absolute embedding goes (appendix D.4): once after the stem (the default), a table of its own added at the
# start of every layer, or one table added at the start of every layer. Relative embeddings act in every layer's
# attention: a table per layer ("every_layer", their default) or one for all ("shared").
PLACEMENTS = ("stem", "every_layer", "shared")
# GELU: "exact" (erf: timm, transformers, PyTorch) or "tanh" (its tanh approximation: Flax's nn.gelu default, the official code)
GELUS = ("exact", "tanh")


# The numeric fields' types and ranges: a config read from a file (config.json, a Hugging Face config) is checked as
# one built in code, each wrong value named
NUMBERS = {
    "patch_size": (int, Range(ge=1)), "in_chans": (int, Range(ge=1)), "num_classes": (int, Range(ge=0, note="0: no head")),
    "width": (int, Range(ge=1)), "depth": (int, Range(ge=1)), "heads": (int, Range(ge=1)), "mlp_dim": (int, Range(ge=1)),
    "ln_eps": (float, Range(gt=0)), "dropout": (float, Range()), "attn_dropout": (float, Range()),
    "drop_path": (float, Range()), "head_bias_init": (float, Range()),  # the dropouts' range: __post_init__, as probabilities
}
FLAGS = ("fc_norm", "qkv_bias", "zero_head")


def check_image_size(image_size: object) -> None:
    """One integer >= 1 or a pair (H, W) of them, else ValueError naming image_size."""
    sizes = image_size if isinstance(image_size, (tuple, list)) and len(image_size) == 2 else (image_size,)
    try:
        for v in sizes:
            check_number("image_size", v, int, Range(ge=1))
    except ValueError:
        raise ValueError(f"image_size={image_size!r}: must be an integer >= 1, or a pair (H, W) of them") from None


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


@dataclass
class ViTConfig:
    """Everything that defines a ViT's architecture; saved as JSON beside every checkpoint."""

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    pool: str = "token"  # "token": class token's output (eq. 4); "gap": mean of the patch tokens
    class_token: bool | None = None  # None: present iff pool == "token" (official code)
    fc_norm: bool = False  # final LayerNorm after pooling instead of on every token (timm's GAP, MAE)
    posemb: str = "learned"  # POSEMBS: "learned" 1-D | "learned2d" | "sincos2d" fixed | "relative" | "none"
    posemb_placement: str | None = None  # PLACEMENTS; None: "stem" ("every_layer" for relative)
    representation_size: int | None = None  # pre-logits Dense + tanh (pre-training head)
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    zero_head: bool = True  # official: head kernel and bias start at zero
    head_bias_init: float = 0.0
    resnet: ResNetConfig | None = None  # hybrid: a ResNet feature map replaces the raw patches
    gelu: str = "exact"  # GELUS: "tanh" for the official code's weights (Google's .npz files)
    name: str | None = None
    arch: str = "vit"

    def __post_init__(self) -> None:
        if isinstance(self.resnet, dict):
            unknown = sorted(set(self.resnet) - {f.name for f in fields(ResNetConfig)})
            if unknown:
                raise ValueError(f"unknown resnet config keys {unknown}; valid keys: {[f.name for f in fields(ResNetConfig)]}")
            self.resnet = ResNetConfig(**self.resnet)
        if self.resnet is not None and not isinstance(self.resnet, ResNetConfig):
            raise ValueError(f"resnet={self.resnet!r}: must be a ResNetConfig (its fields, for a hybrid) or None")
        check_image_size(self.image_size)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        check_fields(self, NUMBERS, FLAGS)
        if self.class_token is None:
            self.class_token = self.pool == "token"
        if not isinstance(self.class_token, bool):
            raise ValueError(f"class_token={self.class_token!r}: must be true, false or null (null: as pool says)")
        if self.representation_size is not None:
            check_number("representation_size", self.representation_size, int, Range(ge=0, note="0 or null: none"))
        for name in ("name", "pool", "posemb", "posemb_placement", "gelu"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a string")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} is not one of {POOLS}")
        if self.posemb not in POSEMBS:
            raise ValueError(f"posemb={self.posemb!r} is not one of {POSEMBS}")
        self._check_placement()
        if self.gelu not in GELUS:
            raise ValueError(f"gelu={self.gelu!r} is not one of {GELUS}")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool='token' needs class_token=True; use pool='gap' for a model without one")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is a probability in [0, 1)")
        h, w = _pair(self.image_size)
        stride = self.patch_size * (self.resnet.stride if self.resnet else 1)
        if h % stride or w % stride:
            what = (f"the hybrid's total stride {stride} (ResNet /{self.resnet.stride} x patch {self.patch_size})" if self.resnet
                    else f"the patch size {self.patch_size}")
            ok = ", ".join(str(stride * k) for k in range(max(1, h // stride - 1), h // stride + 3))
            raise ValueError(f"image size {self.image_size} is not divisible by {what}; valid sizes near it: {ok}")

    def _check_placement(self) -> None:
        if self.posemb_placement is None:
            self.posemb_placement = "every_layer" if self.posemb == "relative" else "stem"
        kind, where = self.posemb, self.posemb_placement
        if where not in PLACEMENTS:
            raise ValueError(f"posemb_placement={where!r} is not one of {PLACEMENTS}")
        if kind == "none" and where != "stem":
            raise ValueError(f"posemb_placement={where!r} with posemb='none': there is no embedding to place; drop the option")
        if kind == "relative" and where == "stem":
            raise ValueError("posemb='relative' acts inside every layer's attention, not after the stem: "
                             "posemb_placement='every_layer' (a table per layer) or 'shared' (one table for all layers)")
        if kind == "sincos2d" and where == "every_layer":
            raise ValueError("posemb='sincos2d' is a fixed table, the same at every layer: use posemb_placement='shared' "
                             "(added at the start of every layer) or 'stem'")
        if kind == "learned2d" and self.width % 2:
            raise ValueError(f"posemb='learned2d' concatenates an X and a Y table of width/2 each: width {self.width} is odd")

    @property
    def grid(self) -> tuple[int, int]:
        stride = self.patch_size * (self.resnet.stride if self.resnet else 1)
        h, w = _pair(self.image_size)
        return (h // stride, w // stride)

    @property
    def num_prefix_tokens(self) -> int:
        return int(bool(self.class_token))

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["image_size"], tuple):
            d["image_size"] = list(d["image_size"])
        if d["resnet"] is not None:
            d["resnet"]["layers"] = list(d["resnet"]["layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        return config_from_known(cls, d, "ViT")


def config_from_known(cls: type, d: dict, what: str):
    """`cls(**d)` for a config dataclass, an unknown key a ValueError listing the valid ones (ViT's, Axial-ViT's)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; valid keys: {sorted(known)}")
    return cls(**d)


class PatchEmbed(nn.Module):
    """Eq. 1: cut the image into P x P patches and project each linearly (a conv with kernel = stride = P).

    For a hybrid, a ResNet feature map is cut instead ("patch size 1" on the map for R50+ViT-B/16).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.image_size = _pair(cfg.image_size)
        self.backbone = ResNetStem(cfg.resnet, cfg.in_chans) if cfg.resnet is not None else None
        cin = self.backbone.out_channels if self.backbone is not None else cfg.in_chans
        self.proj = nn.Conv2d(cin, cfg.width, cfg.patch_size, cfg.patch_size)
        self.grid = cfg.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.image_size:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} pixels but the model was built for {self.image_size}; "
                f"resize the input or call model.set_image_size({tuple(x.shape[-2:])})"
            )
        if self.backbone is not None:
            x = self.backbone(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention through torch's fused SDPA; explicit softmax(q k^T / sqrt(d)) v when the
    weights are asked for (analysis)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        weights = None
        if need_weights:
            weights = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)  # (B, h, N, N)
            x = F.dropout(weights, self.attn_drop, self.training) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)  # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x)), weights


class RelativeAttention(Attention):
    """Self-attention with 1-D relative position embeddings (appendix D.4): an extra attention of each query against
    the embeddings of its offsets to the keys, whose logits are added to the content logits before the softmax (both
    scaled by 1/sqrt(d)). The offsets' table (2N-1, D) is given per call: the model holds it (one per layer, or one)."""

    def forward(self, x: torch.Tensor, need_weights: bool, rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        r = rel.reshape(rel.shape[0], self.heads, self.head_dim).transpose(0, 1)  # (h, 2N-1, d): the offsets as keys
        scale = self.head_dim**-0.5
        bias = relative_logits(q, r) * scale  # (B, h, N, N)
        weights = None
        if need_weights:
            weights = (q @ k.transpose(-2, -1) * scale + bias).softmax(dim=-1)  # (B, h, N, N)
            x = F.dropout(weights, self.attn_drop, self.training) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                               dropout_p=self.attn_drop if self.training else 0.0)  # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x)), weights


@torch.no_grad()
def official_init_(attn: Attention, mlp: "Mlp") -> None:
    """The official (Flax) initialisers of one attention and one MLP: Xavier-uniform kernels (q, k and v each on its
    own), zero attention biases, MLP biases N(0, 1e-6)."""
    for part in attn.qkv.weight.split(attn.heads * attn.head_dim, dim=0):
        nn.init.xavier_uniform_(part)
    if attn.qkv.bias is not None:
        nn.init.zeros_(attn.qkv.bias)
    nn.init.xavier_uniform_(attn.proj.weight)
    nn.init.zeros_(attn.proj.bias)
    for fc in (mlp.fc1, mlp.fc2):
        nn.init.xavier_uniform_(fc.weight)
        nn.init.normal_(fc.bias, std=1e-6)


class Mlp(nn.Module):
    """Dense(mlp_dim) - GELU - Dense(D), dropout after each dense as in the official MlpBlock; `gelu` "exact" (erf) or
    "tanh" (the approximation the official code's nn.gelu computes)."""

    def __init__(self, dim: int, hidden: int, drop: float, gelu: str = "exact"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.approximate = "tanh" if gelu == "tanh" else "none"  # F.gelu's name for it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.gelu(self.fc1(x), approximate=self.approximate))  # (B, N, mlp_dim)
        return self.drop(self.fc2(h))


class Block(nn.Module):
    """Eqs. 2-3, pre-norm: z' = MSA(LN(z)) + z ; z = MLP(LN(z')) + z'."""

    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = Attention(cfg.width, cfg.heads, cfg.qkv_bias, cfg.attn_dropout, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.dropout, cfg.gelu)
        # stochastic depth: a sample's whole residual branch dropped with probability p, the rest rescaled
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, weights = self.attn(self.norm1(x), need_weights)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


class RelativeBlock(Block):
    """A block whose attention adds 1-D relative position logits (RelativeAttention); `rel` is its offsets' table."""

    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__(cfg, drop_path)
        self.attn = RelativeAttention(cfg.width, cfg.heads, cfg.qkv_bias, cfg.attn_dropout, cfg.dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False,
                rel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, weights = self.attn(self.norm1(x), need_weights, rel)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


class VisionTransformer(nn.Module):
    """ViT: patch embedding + [class] token + position embedding, L blocks, LayerNorm, head (eqs. 1-4).

    `forward(images) -> logits`; `forward_features` gives the token states after the final LayerNorm,
    `forward_head(..., pre_logits=True)` the image representation, and `forward_intermediates`
    every layer's token states and attention weights for analysis.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        D = cfg.width
        self.patch_embed = PatchEmbed(cfg)
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        n_pos = cfg.grid[0] * cfg.grid[1] + self.num_prefix_tokens
        tables = cfg.depth if cfg.posemb_placement == "every_layer" else 1  # learned tables: one per layer, or one
        for name in ("pos_embed", "pos_embed_x", "pos_embed_y", "rel_pos_embed"):
            self.register_parameter(name, None)
        if cfg.posemb == "learned":
            self.pos_embed = nn.Parameter(torch.empty(tables, n_pos, D))  # (K, prefix + N, D)
        elif cfg.posemb == "learned2d":
            self.pos_embed_x = nn.Parameter(torch.empty(tables, cfg.grid[1], D // 2))  # (K, w, D/2): per column
            self.pos_embed_y = nn.Parameter(torch.empty(tables, cfg.grid[0], D // 2))  # (K, h, D/2): per row
        elif cfg.posemb == "relative":
            self.rel_pos_embed = nn.Parameter(torch.empty(tables, 2 * n_pos - 1, D))  # (K, 2T-1, D): per 1-D offset
        if cfg.posemb == "sincos2d":
            self.register_buffer("pos_embed_fixed", self._sincos(cfg.grid), persistent=False)
        self.pos_drop = nn.Dropout(cfg.dropout)
        dpr = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth grows with depth
        block = RelativeBlock if cfg.posemb == "relative" else Block
        self.blocks = nn.ModuleList([block(cfg, dpr[i]) for i in range(cfg.depth)])
        self.build_classifier(cfg)
        self.grad_checkpointing = False
        self.init_weights()

    def build_classifier(self, cfg: ViTConfig) -> None:
        """The final LayerNorm, the optional pre-logits Dense + tanh, and the head (eq. 4; appendix B.1)."""
        D = cfg.width
        self.norm = nn.LayerNorm(D, eps=cfg.ln_eps)
        self.num_features = cfg.representation_size or D
        if cfg.representation_size:
            self.pre_logits = nn.Sequential(nn.Linear(D, cfg.representation_size), nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()

    def _sincos(self, grid: tuple[int, int]) -> torch.Tensor:
        pe = sincos_2d(grid, self.config.width)
        if self.num_prefix_tokens:
            pe = torch.cat([pe.new_zeros(self.num_prefix_tokens, pe.shape[1]), pe])  # the class token gets none
        return pe[None]  # (1, prefix + h*w, D)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official (Flax) initialisers: LeCun-normal patch and pre-logits kernels, Xavier-uniform
        attention and MLP kernels (q, k, v each on its own), MLP biases N(0, 1e-6), position embedding
        N(0, 0.02), class token zero, head zero (or LeCun-normal when zero_head=False)."""
        cfg = self.config

        truncated_lecun_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for table in (self.pos_embed, self.pos_embed_x, self.pos_embed_y, self.rel_pos_embed):
            if table is not None:
                nn.init.normal_(table, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        for blk in self.blocks:
            official_init_(blk.attn, blk.mlp)
        if cfg.representation_size:
            truncated_lecun_(self.pre_logits[0].weight)
            nn.init.zeros_(self.pre_logits[0].bias)
        if isinstance(self.head, nn.Linear):
            self.reset_head(zero=cfg.zero_head)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing: in training, each block's activations are recomputed in the backward
        pass instead of kept (one block's worth of memory instead of `depth`, about a third more compute)."""
        self.grad_checkpointing = enable

    @torch.no_grad()
    def reset_head(self, num_classes: int | None = None, zero: bool = True) -> None:
        """Replace or re-initialise the classifier: zero-initialised D x K for fine-tuning (paper section 3.2)."""
        cfg = self.config
        cfg.num_classes = cfg.num_classes if num_classes is None else num_classes
        head = self.head
        if not isinstance(head, nn.Linear) or (head.in_features, head.out_features) != (self.num_features, cfg.num_classes):
            p = self.norm.weight
            self.head = nn.Linear(self.num_features, cfg.num_classes, device=p.device, dtype=p.dtype) if cfg.num_classes else nn.Identity()
        if isinstance(self.head, nn.Linear):
            if zero:
                nn.init.zeros_(self.head.weight)
            else:
                nn.init.trunc_normal_(self.head.weight, std=math.sqrt(1.0 / self.num_features))
            nn.init.constant_(self.head.bias, cfg.head_bias_init)

    @torch.no_grad()
    def drop_pre_logits(self) -> None:
        """Remove the pre-logits layer and put a zero-initialised D x K head on the pooled features,
        as the paper does for fine-tuning."""
        self.pre_logits = nn.Identity()
        self.config.representation_size = None
        self.num_features = self.config.width
        self.reset_head()

    @torch.no_grad()
    def set_image_size(self, image_size: int | tuple[int, int], mode: str = "bilinear") -> None:
        """Rebuild for another resolution: same patch size, learned position embeddings resampled over
        the patch grid by 2-D interpolation, the class token's untouched (paper section 3.2); a 2-D embedding's X and Y
        tables each along its axis. Relative embeddings are tied to the 1-D offsets of one sequence length (a raster
        offset means another 2-D displacement on another grid), so a model with them keeps its patch grid."""
        cfg = self.config
        old_grid = cfg.grid
        new_cfg = ViTConfig.from_dict({**cfg.to_dict(), "image_size": image_size})  # validates the size
        if cfg.posemb == "relative" and new_cfg.grid != old_grid:
            raise ValueError(f"posemb='relative' embeds the 1-D offsets of a {old_grid[0]}x{old_grid[1]} patch grid, which mean "
                             f"other displacements on a {new_cfg.grid[0]}x{new_cfg.grid[1]} one: use the model at "
                             f"{cfg.image_size} px, or train one with posemb='learned', 'learned2d' or 'sincos2d' to change size")
        cfg.image_size = new_cfg.image_size
        self.patch_embed.image_size = _pair(cfg.image_size)
        self.patch_embed.grid = cfg.grid
        if self.pos_embed is not None:
            self.pos_embed = nn.Parameter(resample_posemb(self.pos_embed.data, cfg.grid, old_grid, self.num_prefix_tokens, mode))
        if self.pos_embed_x is not None:
            self.pos_embed_x = nn.Parameter(resample_axis(self.pos_embed_x.data, cfg.grid[1], mode))
            self.pos_embed_y = nn.Parameter(resample_axis(self.pos_embed_y.data, cfg.grid[0], mode))
        if cfg.posemb == "sincos2d":
            self.pos_embed_fixed = self._sincos(cfg.grid).to(self.pos_embed_fixed.device)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: patch embeddings, class token prepended, position embeddings added. (B, prefix + N, D)."""
        x = self.patch_embed(x)
        return self.add_tokens(x)

    def position_table(self, layer: int = 0) -> torch.Tensor | None:
        """The absolute position embedding (1, prefix + N, D) added after the stem, or at the start of block `layer`
        (placement "every_layer": that layer's own); None for relative embeddings and none. A 2-D embedding's class
        token row is zero: the learned class token itself already is a position-free learned vector."""
        cfg = self.config
        k = layer if cfg.posemb_placement == "every_layer" else 0
        if cfg.posemb == "learned":
            return self.pos_embed[k : k + 1]
        if cfg.posemb == "learned2d":
            pe = learned_2d(self.pos_embed_x[k : k + 1], self.pos_embed_y[k : k + 1])  # (1, N, D)
            return torch.cat([pe.new_zeros(1, self.num_prefix_tokens, pe.shape[2]), pe], dim=1)
        if cfg.posemb == "sincos2d":
            return self.pos_embed_fixed
        return None

    def _add_position(self, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
        pe = self.position_table(layer)
        if pe is None:
            return x
        return x + (pe.to(x.dtype) if self.config.posemb == "sincos2d" else pe)

    def add_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class token and add the position embeddings placed after the stem to patch embeddings (B, N, D)."""
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.config.posemb_placement == "stem":
            x = self._add_position(x)
        return self.pos_drop(x)

    def run_block(self, i: int, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block `i` with its position information: the absolute embedding placed at every layer's start added first,
        relative embeddings handed to its attention; with activation checkpointing on (training), recomputed in the
        backward pass."""
        cfg = self.config
        args: tuple = (x, need_weights)
        if cfg.posemb == "relative":
            args = (x, need_weights, self.rel_pos_embed[i if cfg.posemb_placement == "every_layer" else 0])
        elif cfg.posemb_placement != "stem":
            args = (self._add_position(x, i), need_weights)
        blk = self.blocks[i]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled() and not need_weights:
            return checkpoint(blk, *args, use_reentrant=False)
        return blk(*args)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token states (B, T, D) through the transformer blocks, before the final LayerNorm (every objective runs
        through here)."""
        for i in range(len(self.blocks)):
            x, _ = self.run_block(i, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Token states after the final LayerNorm (before it when fc_norm), (B, prefix + N, D)."""
        x = self.encode(self.embed(x))
        return x if self.config.fc_norm else self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "token":
            return x[:, 0]  # eq. 4: y = LN(z_L^0)
        return x[:, self.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """From token states to the image representation (pre_logits=True) or the logits."""
        x = self.pool(x)
        if self.config.fc_norm:
            x = self.norm(x)
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The analysis path: {"logits", "tokens": [embedding, block 1, ..., block L] each (B, T, D),
        "attn": [block 1, ..., block L] each (B, heads, T, T)}, T = prefix + N."""
        x = self.embed(x)
        tokens, attn = [x], []
        for i in range(len(self.blocks)):
            x, w = self.run_block(i, x, need_weights=True)
            tokens.append(x)
            attn.append(w)
        logits = self.forward_head(x if self.config.fc_norm else self.norm(x))
        return {"logits": logits, "tokens": tokens, "attn": attn}


# The variant table: paper table 1, plus Ti and S from DeiT / AugReg (official configs/models.py).
VARIANTS = {
    "Ti": dict(width=192, depth=12, heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, heads=16, mlp_dim=4096),
    "H": dict(width=1280, depth=32, heads=16, mlp_dim=5120),
}
PATCH_SIZES = (8, 14, 16, 32)

# Hybrids as vit_jax configs/models.py defines them: (ViT size, patch on the feature map, ResNet units per stage).
HYBRIDS = {
    "R50+ViT-B/16": ("B", 1, (3, 4, 9)),
    "R26+ViT-S/32": ("S", 1, (2, 2, 2, 2)),
    "R26+ViT-B/32": ("B", 1, (2, 2, 2, 2)),
    "R50+ViT-L/32": ("L", 1, (3, 4, 6, 3)),
    "R+ViT-Ti/16": ("Ti", 8, ()),  # the ResNet root alone (/4), then 8 x 8 patches: 7 x 7 tokens at 224
}
