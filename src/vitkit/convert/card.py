"""`ModelCard`: what a checkpoint says about its model beyond the weights; `vitkit.load` returns it beside the model.

A model is an nn.Module and nothing more; what it was trained on and how its inputs are prepared travel in
the card: the class names, the preprocessing (`Preprocess`), where the weights came from and, for a loaded
checkpoint, the loading report. Writers (`save_model`, `vitkit export`, training checkpoints) record the
card with the weights; readers give it back. A model resized after loading takes its new size into the
card with `card.for_model(model)` (the preprocessing's size and channels are always the model's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch.nn as nn

from vitkit.convert.common import LoadReport
from vitkit.data.preprocess import Preprocess


@dataclass(frozen=True)
class ModelCard:
    preprocess: Preprocess
    class_names: list[str] | None = None  # index -> name, or None (numbered classes)
    source: str = ""  # the file or directory the weights came from ("" for a model made in code)
    report: LoadReport | None = None  # what loading did (missing, unexpected, resampled tensors); None if not loaded

    @classmethod
    def of(cls, model: nn.Module, class_names: list[str] | None = None, normalize: str = "google",
           source: str = "") -> "ModelCard":
        """The card of a model made in code: its own size and channels, `normalize` ("google" or "imagenet")."""
        return cls(Preprocess.of(model, {"normalize": normalize}), class_names, source)

    def for_model(self, model: nn.Module) -> "ModelCard":
        """This card with `model`'s size and channels now (after `set_image_size`, a resampled load, ...)."""
        return dataclasses.replace(self, preprocess=Preprocess.of(model, self.preprocess))

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)


class Loaded(NamedTuple):
    """What `vitkit.load` returns: `model, card = vitkit.load(path)`."""

    model: nn.Module
    card: ModelCard
