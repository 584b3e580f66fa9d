"""The paper's pre-training recipes (appendix B.1, table 3), runnable on users' own copies of the data
(`--set data.name=folder:/path/to/imagenet` with train/ and val/ class folders). Batch 4096 is reached
by gradient accumulation (`train.micro_batch_size`) on machines that cannot hold it.

Every setting that depends on the model is resolved from the model the recipe is built for (`jft("ViT-L/16")`;
on the command line `--set model.name=...`, which `recipes.build` resolves before the other overrides apply): the
epochs and base learning rate of table 3's row for the model, a pre-logits layer as wide as the model (the paper's
pre-training head: Dense + tanh), dropout for ViTs only. The BiT ResNets take their own rows and none of the ViT-only
options (dropout, pre-logits layer, head bias); AxialResNet50 (appendix D.7) is trained as they are, on R50x1's row,
and an Axial-ViT as a ViT, on the row of the ViT it changes (Axial-ViT-B/16: ViT-B/16's).
"""
from __future__ import annotations

from vitkit.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

# Table 3: dataset -> {model: (epochs, base LR)}. Weight decay 0.1 (JFT), 0.03 (ImageNet-21k), 0.3 (ImageNet); dropout
# 0.0 (JFT), 0.1 (the others); linear decay but for ImageNet (cosine). Where the table gives two epoch counts (L/16 on
# JFT 7/14, L on ImageNet-21k 30/90) the first is the default.
TABLE3: dict[str, dict[str, tuple[float, float]]] = {
    "jft": {
        "ViT-B/16": (7, 8e-4), "ViT-B/32": (7, 8e-4), "ViT-L/32": (7, 6e-4), "ViT-L/16": (7, 4e-4), "ViT-H/14": (14, 3e-4),
        "R50x1": (7, 1e-3), "R50x2": (7, 1e-3), "R101x1": (7, 8e-4), "R152x1": (7, 6e-4), "R152x2": (7, 6e-4),
        "R50+ViT-B/16": (7, 8e-4), "R50+ViT-B/32": (7, 8e-4), "R50+ViT-L/32": (7, 2e-4), "R50+ViT-L/16": (7, 4e-4),
    },
    "imagenet21k": {"ViT-B/16": (90, 1e-3), "ViT-B/32": (90, 1e-3), "ViT-L/16": (30, 1e-3), "ViT-L/32": (30, 1e-3)},
    "imagenet1k": {},  # "ViT-*": every ViT 300 epochs at 3e-3
}
DEFAULTS = {"jft": (7, 8e-4), "imagenet21k": (90, 1e-3), "imagenet1k": (300, 3e-3)}  # the ViT-B row (ImageNet: ViT-*)
SETTINGS = {  # dataset -> (data name, weight decay, dropout, loss, schedule, clip: table 3's caption, ImageNet only)
    "jft": ("folder:jft", 0.1, 0.0, "sigmoid", "linear", 0.0),
    "imagenet21k": ("folder:imagenet21k", 0.03, 0.1, "sigmoid", "linear", 0.0),
    "imagenet1k": ("folder:imagenet", 0.3, 0.1, "softmax", "cosine", 1.0),
}


def row(recipe: str, model: str) -> tuple[float, float, str]:
    """(epochs, base LR, where from) of `model` in table 3 for `recipe`: its own row, else the row of its family
    (a ViT: ViT-B's; a BiT ResNet: R50x1's; a hybrid: R50+ViT-B/16's), said so in the third element."""
    from vitkit.models.registry import _canonical

    name = _canonical(model)
    table = TABLE3[recipe]
    if name in table:
        return (*table[name], f"table 3, {name}")
    family = ("R50x1" if _is_resnet(name) else "R50+ViT-B/16" if "+" in name
              else name.removeprefix("Axial-") if name.startswith("Axial-") else None)
    if family and family in table:
        return (*table[family], f"table 3 has no row for {name}: {family}'s")
    return (*DEFAULTS[recipe], f"table 3 has no row for {name}: ViT-B's" if recipe != "imagenet1k" else "table 3, ViT-*")


def _is_resnet(name: str) -> bool:
    from vitkit.models.registry import BIT_NAMES

    return name in BIT_NAMES or name == "AxialResNet50"


def _pretrain(recipe: str, model: str) -> Config:
    from vitkit.models.registry import model_config

    data, wd, dropout, loss, schedule, clip = SETTINGS[recipe]
    epochs, lr, _ = row(recipe, model)
    if _is_resnet_name(model):
        model_cfg = ModelConfig(name=model)  # BiT: no dropout, pre-logits layer or head bias in its architecture
    else:
        width = model_config(model).width
        model_cfg = ModelConfig(name=model, representation_size=width, dropout=dropout,
                                head_bias_init=-10.0 if loss == "sigmoid" else 0.0)  # sigmoid heads start at bias -10
    return Config(
        recipe=recipe,
        data=DataConfig(name=data, image_size=224, crop="inception", crop_scale_min=0.05, flip=True, val_fraction=0.01,
                        workers=8),
        model=model_cfg,
        optim=OptimConfig(name="adam", lr=lr, weight_decay=wd, b1=0.9, b2=0.999, schedule=schedule, warmup_steps=10_000,
                          clip_norm=clip, loss=loss),
        train=TrainConfig(epochs=epochs, batch_size=4096, micro_batch_size=64, precision="auto", log_every=100,
                          eval_every=5_000, ckpt_every=1_000),
    )


def _is_resnet_name(model: str) -> bool:
    from vitkit.models.registry import _canonical

    return _is_resnet(_canonical(model))


def imagenet21k(model: str = "ViT-B/16") -> Config:
    """ImageNet-21k pre-training (table 3): Adam, ViT-B LR 1e-3, weight decay 0.03, dropout 0.1, 90 epochs, linear decay."""
    return _pretrain("imagenet21k", model)


def jft(model: str = "ViT-B/16") -> Config:
    """JFT-300M pre-training (table 3): Adam, LR 8e-4 for ViT-B (L/32 6e-4, L/16 4e-4, H/14 3e-4, R50x1 1e-3, ...),
    weight decay 0.1, no dropout, 7 epochs (H/14: 14), linear decay."""
    return _pretrain("jft", model)


def imagenet1k(model: str = "ViT-B/16") -> Config:
    """ImageNet-1k from scratch (table 3): Adam, LR 3e-3, weight decay 0.3, dropout 0.1, 300 epochs, cosine decay,
    gradient clipping at global norm 1 (table 3's caption: for ImageNet only)."""
    return _pretrain("imagenet1k", model)
