"""Models: the ViT family, hybrids and BiT ResNets.

The names are imported on first use (PEP 562), so that `vitkit.models.catalog` (what `vitkit models` prints, cached)
can be read without importing torch.
"""
from __future__ import annotations

from vitkit import lazy_names

_PUBLIC = {
    **dict.fromkeys(["build_model", "config_from_dict", "config_to_dict", "count_params", "create_model", "describe",
                     "list_models", "model_config"], "vitkit.models.registry"),
    **dict.fromkeys(["BiTConfig", "BiTResNet", "ResNetConfig"], "vitkit.models.resnet"),
    **dict.fromkeys(["ViTConfig", "VisionTransformer"], "vitkit.models.vit"),
}
__all__ = list(_PUBLIC)


__getattr__, __dir__ = lazy_names("vitkit.models", _PUBLIC, globals())
