"""Recipes: Python functions returning a typed `Config`, selected by name (`vitkit train --recipe NAME`)."""
from __future__ import annotations

from collections.abc import Callable

from vitkit.config import Config
from vitkit.recipes.mpp import mpp_fashion_mnist, mpp_paper
from vitkit.recipes.paper import imagenet1k, imagenet21k, jft
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
    overrides choose (its table-3 row, pre-logits width, ViT-only options), and the overrides then win over it."""
    from vitkit.config import apply_overrides
    from vitkit.models.registry import model_config

    cfg = apply_overrides(get_recipe(name), overrides)
    if name in BY_MODEL and cfg.model.name != get_recipe(name).model.name:
        try:
            model_config(cfg.model.name)
        except ValueError as err:
            raise ValueError(f"model.name={cfg.model.name!r}: {str(err).strip(chr(39))}") from None
        cfg = apply_overrides(get_recipe(name, cfg.model.name), overrides)
    return cfg
