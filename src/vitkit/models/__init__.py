"""Models: the ViT family, hybrids and BiT ResNets."""
from vitkit.models.registry import build_model, config_from_dict, config_to_dict, count_params, create_model, describe, list_models, model_config
from vitkit.models.resnet import BiTConfig, BiTResNet, ResNetConfig
from vitkit.models.vit import ViTConfig, VisionTransformer

__all__ = [
    "BiTConfig", "BiTResNet", "ResNetConfig", "ViTConfig", "VisionTransformer",
    "build_model", "config_from_dict", "config_to_dict", "count_params", "create_model", "describe", "list_models", "model_config",
]
