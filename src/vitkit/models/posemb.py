"""Position embeddings: fixed 2-D sin-cos tables and resampling of learned ones to a new patch grid."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RESAMPLE_MODES = ("bilinear", "bicubic", "bicubic-antialias", "nearest")


def sincos_2d(grid: tuple[int, int], width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of shape (h*w, width), rows in raster order.

    A quarter of the channels each for sin(y), cos(y), sin(x), cos(x), as in "Better plain ViT
    baselines" (big_vision `posemb_sincos_2d`).
    """
    h, w = grid
    if width % 4:
        raise ValueError(f"sin-cos 2-D position embedding needs a width divisible by 4, got {width}")
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    omega = torch.arange(width // 4, dtype=torch.float64) / (width // 4 - 1 if width > 4 else 1)
    omega = 1.0 / temperature**omega  # (width/4,)
    y = y.flatten()[:, None] * omega[None, :]  # (h*w, width/4)
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()  # (h*w, width)


def resample_posemb(
    posemb: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize a learned position embedding (1, prefix + h*w, D) to a new patch grid by 2-D interpolation.

    The prefix (class token) rows are kept as they are (paper section 3.2). The default, bilinear with
    corner pixels aligned, is what the official code does (scipy.ndimage.zoom, order 1); "bicubic" is
    transformers' `interpolate_pos_encoding`; "bicubic-antialias" is timm's default (torch's antialiased
    bicubic uses another kernel, so the two differ even when upsampling). `old_grid` defaults to the square grid the token count implies.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"unknown position-embedding resample mode {mode!r}; choose one of {RESAMPLE_MODES}")
    if posemb.ndim == 2:
        posemb = posemb[None]
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"position embedding has {n} patch rows, not a square grid; pass old_grid=(h, w) explicitly"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"position embedding has {n} patch rows but old_grid {old_grid} holds {old_grid[0] * old_grid[1]}")
    new_grid = tuple(new_grid)
    if tuple(old_grid) == new_grid:
        return posemb.clone()
    dim = grid.shape[-1]
    dtype = grid.dtype
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, D, h, w)
    kwargs = {} if mode == "nearest" else {"align_corners": mode == "bilinear"}
    if mode == "bicubic-antialias":
        mode, kwargs["antialias"] = "bicubic", True
    grid = F.interpolate(grid, size=new_grid, mode=mode, **kwargs)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
