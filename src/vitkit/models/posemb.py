"""Position embeddings (paper section 3.1 and appendix D.4): fixed 2-D sin-cos tables, learned 2-D tables (an X and a Y
table, concatenated per patch), 1-D relative attention logits, and resampling of learned tables to a new patch grid."""
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


def learned_2d(x_table: torch.Tensor, y_table: torch.Tensor) -> torch.Tensor:
    """Appendix D.4's 2-D embedding: patch (row y, column x) gets [X[x], Y[y]], each table D/2 wide.

    x_table (K, w, D/2), y_table (K, h, D/2) -> (K, h*w, D), rows in raster order (K tables side by side: one per layer
    where each layer has its own)."""
    K, w, c = x_table.shape
    h = y_table.shape[1]
    xs = x_table[:, None, :, :].expand(K, h, w, c)  # (K, h, w, D/2): the column's X embedding
    ys = y_table[:, :, None, :].expand(K, h, w, y_table.shape[2])  # (K, h, w, D/2): the row's Y embedding
    return torch.cat([xs, ys], dim=-1).reshape(K, h * w, -1)


def relative_logits(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Appendix D.4's 1-D relative attention: each query against the embedding of its offset to each key.

    q (B, h, N, d) queries; r (h, 2N-1, d) the offsets' embeddings as keys, r[:, o + N - 1] for the offset
    o = p_q - p_k in -(N-1)..N-1 of the 1-D token positions. Returns (B, h, N, N) with
    [b, h, i, j] = q[b, h, i] . r[h, i - j + N - 1], the bias added to the content logits before the softmax."""
    n = q.shape[-2]
    if r.shape[-2] != 2 * n - 1:
        raise ValueError(f"relative position embedding has {r.shape[-2]} offsets, a sequence of {n} tokens needs {2 * n - 1}")
    every = q @ r.transpose(-2, -1)  # (B, h, N, 2N-1): each query against every offset
    pos = torch.arange(n, device=q.device)
    offset = pos[:, None] - pos[None, :] + n - 1  # (N, N): the column of query i's offset to key j
    return every.gather(-1, offset.expand(*every.shape[:-1], n))


def _interpolate(grid: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(K, C, h, w) -> (K, C, *size) in one of RESAMPLE_MODES, in float32."""
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"unknown position-embedding resample mode {mode!r}; choose one of {RESAMPLE_MODES}")
    kwargs = {} if mode == "nearest" else {"align_corners": mode == "bilinear"}
    if mode == "bicubic-antialias":
        mode, kwargs["antialias"] = "bicubic", True
    return F.interpolate(grid.float(), size=size, mode=mode, **kwargs)


def resample_axis(table: torch.Tensor, n: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize a learned per-axis table (K, old_n, C) to (K, n, C) by interpolation along the axis (the 2-D embedding's
    X or Y table on a new grid; "bilinear" is linear with the end rows aligned, as the official code's zoom)."""
    if table.shape[1] == n:
        return table.clone()
    out = _interpolate(table.permute(0, 2, 1)[:, :, None, :], (1, n), mode)  # (K, C, 1, n)
    return out[:, :, 0, :].permute(0, 2, 1).to(table.dtype)


def resample_posemb(
    posemb: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize learned position embeddings (K, prefix + h*w, D) to a new patch grid by 2-D interpolation, each of the K
    tables (one, or one per layer) on its own.

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
    K, dim, dtype = grid.shape[0], grid.shape[-1], grid.dtype
    grid = grid.reshape(K, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (K, D, h, w)
    grid = _interpolate(grid, new_grid, mode)
    grid = grid.permute(0, 2, 3, 1).reshape(K, new_grid[0] * new_grid[1], dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
