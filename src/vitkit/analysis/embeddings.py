"""What a ViT's embeddings learn (paper section 4.5, figure 7 left and centre): principal components of
the patch-projection filters, and the cosine similarity of position embeddings."""
from __future__ import annotations

import torch
import torch.nn as nn


def embedding_filters(model: nn.Module, n: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` principal components of the patch-projection filters, as (n, C, P, P) images,
    and the fraction of variance each explains. Each of the D filters is a point in C*P*P space."""
    if getattr(model.config, "resnet", None) is not None:
        raise ValueError("a hybrid projects ResNet features, not pixels: its embedding filters are not images")
    w = model.patch_embed.proj.weight.detach().double()  # (D, C, P, P)
    D, C, P, _ = w.shape
    flat = w.reshape(D, -1)
    flat = flat - flat.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    n = min(n, vh.shape[0])
    var = s**2 / (s**2).sum()
    return vh[:n].reshape(n, C, P, P).float(), var[:n].float()


def position_embeddings(model: nn.Module) -> tuple[torch.Tensor, str]:
    """The patch rows of the position embedding (N, D) and its kind ("learned", "learned2d" or "sincos2d"; with an
    embedding of its own at every layer, the first layer's: "learned, layer 1 of 12")."""
    cfg = model.config
    p = model.num_prefix_tokens
    if cfg.posemb in ("none", "relative"):
        why = ("has no position embedding (posemb='none')" if cfg.posemb == "none" else
               "embeds relative offsets, not positions (posemb='relative')")
        raise ValueError(f"the model {why}: there is no per-patch embedding to compare")
    kind = cfg.posemb
    if cfg.posemb_placement == "every_layer":
        kind += f", layer 1 of {cfg.depth}"
    return model.position_table(0).detach()[0, p:].float(), kind


def posemb_similarity(model: nn.Module) -> tuple[torch.Tensor, str]:
    """(gh, gw, gh, gw): cosine similarity of each patch position's embedding with every other's."""
    pe, kind = position_embeddings(model)
    return cosine_grid(pe, model.config.grid), kind


def cosine_grid(pe: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    pe = torch.nn.functional.normalize(pe.double(), dim=-1)
    sim = pe @ pe.T  # (N, N)
    gh, gw = grid
    return sim.reshape(gh, gw, gh, gw).float()
