"""Figures for the analyses (matplotlib, written atomically as PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitkit.figures import figure, save_png


def _save(fig, path: Path) -> Path:
    return save_png(fig, path, dpi=110, bbox_inches="tight")


def _unit(img: np.ndarray) -> np.ndarray:
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def plot_filters(filters: torch.Tensor, variance: torch.Tensor, path: Path, cols: int = 7) -> Path:
    """Principal components of the patch-projection filters as tiles (grayscale for 1-channel models)."""
    n = len(filters)
    rows = (n + cols - 1) // cols
    fig = figure(figsize=(cols * 1.2, rows * 1.3))
    axes = fig.subplots(rows, cols)
    for i, ax in enumerate(np.atleast_1d(axes).flat):
        ax.axis("off")
        if i >= n:
            continue
        f = filters[i].numpy()
        if f.shape[0] == 1:
            ax.imshow(_unit(f[0]), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(_unit(f[:3].transpose(1, 2, 0)))
        ax.set_title(f"{100 * variance[i]:.1f}%", fontsize=6)
    fig.suptitle(f"Embedding filters: first {n} principal components (% variance)", fontsize=9)
    return _save(fig, path)


def plot_posemb_similarity(sim: torch.Tensor, kind: str, path: Path, note: str = "") -> Path:
    """A grid of grids: tile (r, c) is the cosine similarity of position (r, c) with every position."""
    gh, gw = sim.shape[:2]
    fig = figure(figsize=(min(12, 0.9 * gw + 1), min(12, 0.9 * gh + 1)))
    axes = fig.subplots(gh, gw, squeeze=False)
    lo = float(sim.min())  # the colour range spans the values present, so structure shows even when all are high
    for r in range(gh):
        for c in range(gw):
            ax = axes[r][c]
            im = ax.imshow(sim[r, c].numpy(), cmap="viridis", vmin=lo, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(r + 1), fontsize=7)
            if r == gh - 1:
                ax.set_xlabel(str(c + 1), fontsize=7)
    title = f"Position embedding similarity ({kind}{', fixed sin-cos: not learned' if kind == 'sincos2d' else ''})"
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.02, label="cosine similarity")
    return _save(fig, path)


def plot_attention_distance(dist: torch.Tensor, path: Path, image_size: int) -> Path:
    """One dot per head per layer: mean attention distance in pixels against network depth."""
    L, H = dist.shape
    from matplotlib import colormaps

    fig = figure(figsize=(5, 4))
    ax = fig.subplots()
    cmap = colormaps["tab20"]
    for h in range(H):
        ax.scatter(np.arange(1, L + 1), dist[:, h].numpy(), s=14, color=cmap(h % 20), label=f"head {h}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, max(float(dist.max()) * 1.1, 1.0))
    ax.set_xticks(range(1, L + 1))
    ax.set_title(f"Mean attention distance ({image_size} px images)", fontsize=9)
    if H <= 16:
        ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _overlay(ax, img: np.ndarray, heat: np.ndarray | None) -> None:
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.transpose(1, 2, 0))
    if heat is not None:
        ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(-0.5, img.shape[2] - 0.5, img.shape[1] - 0.5, -0.5),
                  interpolation="bilinear")
    ax.axis("off")


def plot_rollout(images01: torch.Tensor, maps: torch.Tensor, path: Path, cols: int = 8) -> Path:
    """Each image beside its attention-rollout map overlaid."""
    n = len(images01)
    rows = (n + cols // 2 - 1) // (cols // 2)
    fig = figure(figsize=(cols * 1.3, rows * 1.35))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        k, overlay = divmod(i, 2)
        if k >= n:
            continue
        _overlay(ax, images01[k].numpy(), maps[k].numpy() if overlay else None)
    fig.suptitle("Attention rollout (heads averaged, identity added, rows renormalised, layers multiplied)", fontsize=9)
    return _save(fig, path)


def plot_class_attention(images01: torch.Tensor, per_layer: torch.Tensor, title: str, path: Path, max_images: int = 6) -> Path:
    """Rows: images; columns: layers; one head's attention over the patches (the class token's, or the patches'
    mean in a model without one), under `title`."""
    L = per_layer.shape[0]
    n = min(max_images, images01.shape[0])
    fig = figure(figsize=((L + 1) * 1.1, n * 1.15))
    axes = fig.subplots(n, L + 1, squeeze=False)
    for r in range(n):
        _overlay(axes[r][0], images01[r].numpy(), None)
        for l in range(L):
            m = per_layer[l, r].numpy()
            axes[r][l + 1].imshow(m / max(m.max(), 1e-12), cmap="magma", vmin=0, vmax=1)
            axes[r][l + 1].axis("off")
            if r == 0:
                axes[r][l + 1].set_title(f"L{l + 1}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
