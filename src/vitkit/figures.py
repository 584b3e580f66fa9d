"""Figures: matplotlib Figure objects of their own (no pyplot state and no global backend switch, so vitkit's
figures are safe inside any program, a notebook or a GUI), written as PNG atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def figure(**kw: Any):
    """A new `matplotlib.figure.Figure` (kw: figsize, ...)."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def save_png(fig, path: str | os.PathLike, **kw: Any) -> Path:
    """Write `fig` to `path` as PNG: a temporary file beside it, then one rename (never a half-written figure)."""
    from vitkit.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", **kw)
    return path
