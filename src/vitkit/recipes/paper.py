"""The paper's pre-training recipes (appendix B.1, table 3), runnable on users' own copies of the data
(`--set data.name=folder:/path/to/imagenet` with train/ and val/ class folders). Batch 4096 is reached
by gradient accumulation (`train.micro_batch_size`) on machines that cannot hold it."""
from __future__ import annotations

from vitkit.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def _pretrain(recipe: str, data: str, lr: float, wd: float, epochs: float, dropout: float, loss: str,
              schedule: str, model: str = "ViT-B/16") -> Config:
    return Config(
        recipe=recipe,
        data=DataConfig(name=data, image_size=224, crop="inception", crop_scale_min=0.05, flip=True, val_fraction=0.01,
                        workers=8),
        # pre-training head: pre-logits Dense + tanh (the paper's MLP head), sigmoid heads start at bias -10
        model=ModelConfig(name=model, representation_size=768 if "B/" in model else None, dropout=dropout,
                          head_bias_init=-10.0 if loss == "sigmoid" else 0.0),
        optim=OptimConfig(name="adam", lr=lr, weight_decay=wd, b1=0.9, b2=0.999, schedule=schedule, warmup_steps=10_000,
                          clip_norm=1.0, loss=loss),
        train=TrainConfig(epochs=epochs, batch_size=4096, micro_batch_size=64, precision="auto", log_every=100,
                          eval_every=5_000, ckpt_every=1_000),
    )


def imagenet21k() -> Config:
    """ImageNet-21k pre-training of ViT-B/16: Adam, LR 1e-3, weight decay 0.03, dropout 0.1, 90 epochs, linear decay."""
    return _pretrain("imagenet21k", "folder:imagenet21k", 1e-3, 0.03, 90, 0.1, "sigmoid", "linear")


def jft() -> Config:
    """JFT-300M pre-training of ViT-B/16: Adam, LR 8e-4 (L/16 4e-4, H/14 3e-4), weight decay 0.1, no dropout, 7 epochs."""
    return _pretrain("jft", "folder:jft", 8e-4, 0.1, 7, 0.0, "sigmoid", "linear")


def imagenet1k() -> Config:
    """ImageNet-1k from scratch (table 3): Adam, LR 3e-3, weight decay 0.3, dropout 0.1, 300 epochs, cosine decay."""
    return _pretrain("imagenet1k", "folder:imagenet", 3e-3, 0.3, 300, 0.1, "softmax", "cosine")
