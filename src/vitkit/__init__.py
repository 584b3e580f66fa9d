"""vitkit: Vision Transformers as in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2020)."""
from vitkit.models import (
    BiTConfig, BiTResNet, ViTConfig, VisionTransformer, count_params, create_model, describe, list_models,
)
from vitkit.convert import CheckpointError, LoadReport, load_model, save_model

__version__ = "0.1.0"
__all__ = [
    "BiTConfig", "BiTResNet", "ViTConfig", "VisionTransformer",
    "CheckpointError", "LoadReport", "count_params", "create_model", "load_model", "save_model", "describe", "list_models", "__version__",
]
