"""Models: the ViT family, hybrids and BiT ResNets.

The names are imported on first use (PEP 562), so that `vitkit.models.catalog` (what `vitkit models` prints, cached)
can be read without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    **dict.fromkeys(["build_model", "config_from_dict", "config_to_dict", "count_params", "create_model", "describe",
                     "list_models", "model_config"], "vitkit.models.registry"),
    **dict.fromkeys(["BiTConfig", "BiTResNet", "ResNetConfig"], "vitkit.models.resnet"),
    **dict.fromkeys(["ViTConfig", "VisionTransformer"], "vitkit.models.vit"),
}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitkit.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
