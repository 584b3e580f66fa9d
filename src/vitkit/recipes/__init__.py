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


def get_recipe(name: str) -> Config:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]()
