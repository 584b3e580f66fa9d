"""Recipes: Python functions returning a typed `Config`, selected by name (`vitkit train --recipe NAME`)."""
from __future__ import annotations

from collections.abc import Callable

from vitkit.config import Config
from vitkit.recipes.detection import det_canvas
from vitkit.recipes.mae import mae
from vitkit.recipes.mpp import mpp_fashion_mnist, mpp_paper
from vitkit.recipes.multitask import multitask
from vitkit.recipes.paper import imagenet1k, imagenet21k, jft
from vitkit.recipes.segmentation import seg_canvas
from vitkit.recipes.small import cifar10, fashion_mnist, quickstart

RECIPES: dict[str, Callable[[], Config]] = {
    "quickstart": quickstart,
    "fashion-mnist": fashion_mnist,
    "cifar10": cifar10,
    "imagenet21k": imagenet21k,
    "jft": jft,
    "imagenet1k": imagenet1k,
    "mpp-fashion-mnist": mpp_fashion_mnist,
    "mpp-paper": mpp_paper,
    "mae": mae,
    "seg-canvas": seg_canvas,
    "det-canvas": det_canvas,
    "multitask": multitask,
}


# Recipes whose settings depend on the model (the paper's table 3): built for a model, `recipe(model)`.
BY_MODEL = ("imagenet21k", "jft", "imagenet1k")


def get_recipe(name: str, model: str | None = None) -> Config:
    """The recipe `name`; for the paper's pre-training recipes (BY_MODEL), built for `model` (default: their ViT-B/16)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if model is not None and name in BY_MODEL:
        return RECIPES[name](model)
    return RECIPES[name]()


def build(name: str, overrides: list[str]) -> Config:
    """The recipe `name` with `overrides` (--set key=value) applied; a recipe of BY_MODEL is built for the model.name the
    overrides choose (its table-3 row, pre-logits width, ViT-only options), and the overrides then win over it. The
    architecture fields a recipe sets for its own ViT (a small recipe's patch size, width, depth, ...) are defaults for
    a ViT: a model with patches (a ViT, hybrid or Axial-ViT) takes those it has, a ResNet (R50x1, AxialResNet50) none
    (its `heads` are not a ViT's); given as overrides they remain the user's, and errors where the model has no such
    option."""
    from vitkit.config import apply_overrides
    from vitkit.models.registry import model_config

    cfg = apply_overrides(get_recipe(name), overrides)
    if cfg.model.name != get_recipe(name).model.name and not cfg.model.init:
        try:
            chosen = model_config(cfg.model.name)
        except ValueError as err:
            raise ValueError(f"model.name={cfg.model.name!r}: {str(err).strip(chr(39))}") from None
        if name in BY_MODEL:
            cfg = apply_overrides(get_recipe(name, cfg.model.name), overrides)
        given = {o.split("=", 1)[0].strip() for o in overrides}
        patches = hasattr(chosen, "patch_size")
        for key in cfg.model.overrides():
            if not (patches and hasattr(chosen, key)) and f"model.{key}" not in given:
                setattr(cfg.model, key, None)
        if cfg.objective == "mpp" and not patches:
            raise ValueError(f"model.name={cfg.model.name!r} with recipe {name!r}: masked patch prediction corrupts patch "
                             f"embeddings; it trains a ViT or an Axial-ViT, and {cfg.model.name} has no patches")
    return cfg
