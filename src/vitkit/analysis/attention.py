"""What a ViT attends to (paper section 4.5, figures 6 and 7 right, appendix D.8): mean attention
distance per head and layer, attention rollout (Abnar and Zuidema 2020), per-layer class-token attention.
Everything returns arrays; `plots.py` draws them."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn


def token_stride(model: nn.Module) -> int:
    """Input pixels per token side: the patch size, times the ResNet's stride for a hybrid."""
    cfg = model.config
    return cfg.patch_size * (cfg.resnet.stride if cfg.resnet is not None else 1)


@torch.inference_mode()
def collect_attention(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Every layer's attention weights over all images: a list of L tensors (B, heads, T, T)."""
    model.eval()
    per_layer: list[list[torch.Tensor]] = []
    for x in batches:
        w = model.norm.weight  # the model's device and dtype (analyze's device and precision)
        attn = model.forward_intermediates(x.to(w.device, w.dtype))["attn"]
        if not per_layer:
            per_layer = [[] for _ in attn]
        for i, a in enumerate(attn):
            per_layer[i].append(a.float().cpu())  # the analyses and figures work on the CPU
    return [torch.cat(a) for a in per_layer]


def patch_distances(grid: tuple[int, int], pixels_per_token: float) -> torch.Tensor:
    """(N, N) Euclidean distances in pixels between the centres of the grid's patches (raster order)."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1) * pixels_per_token
    return torch.cdist(pos, pos)


def mean_attention_distance(attn: list[torch.Tensor], grid: tuple[int, int], pixels_per_token: float,
                            num_prefix_tokens: int = 1) -> torch.Tensor:
    """(L, heads): for each head, the attention-weighted distance between query and key patches in
    pixels, averaged over query patches and images. Class-token rows and columns are dropped and the
    rows are not renormalised (the standard recipe)."""
    d = patch_distances(grid, pixels_per_token)  # (N, N)
    p = num_prefix_tokens
    out = []
    for a in attn:  # (B, h, T, T)
        a = a[:, :, p:, p:].double()  # patch queries x patch keys
        out.append((a * d).sum(-1).mean(dim=(0, 2)))  # (h,)
    return torch.stack(out).float()


def attention_rollout(attn: list[torch.Tensor], num_prefix_tokens: int = 1, add_residual: bool = True) -> torch.Tensor:
    """(B, T, T) rollout: per layer, heads averaged, the identity added for the residual path, rows
    renormalised; layers multiplied from the input up."""
    rollout = None
    for a in attn:  # (B, h, T, T)
        a = a.double().mean(1)
        if add_residual:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype)
            a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout.float()


def rollout_maps(rollout: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """(B, gh, gw) maps over the patches: the class token's row of the rollout (for a model without one,
    the mean over the patch tokens' rows), each normalised to a maximum of 1."""
    p = num_prefix_tokens
    rows = rollout[:, 0, p:] if p else rollout[:, p:, p:].mean(1)
    maps = rows.reshape(-1, *grid)
    return maps / maps.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]


def class_token_attention(attn: list[torch.Tensor], grid: tuple[int, int], head: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(L, B, gh, gw): per layer, how `head` of the class token (or, without one, the mean patch query)
    attends over the patches."""
    p = num_prefix_tokens
    out = []
    for a in attn:
        if head >= a.shape[1]:
            raise ValueError(f"head {head} does not exist; the model has {a.shape[1]} heads per layer (0..{a.shape[1] - 1})")
        rows = a[:, head, 0, p:] if p else a[:, head, p:, p:].mean(1)
        out.append(rows.reshape(-1, *grid))
    return torch.stack(out)
