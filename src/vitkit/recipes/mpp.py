"""Self-supervised pre-training by masked patch prediction (paper section 4.6, appendix B.1.2)."""
from __future__ import annotations

from vitkit.config import Config, DataConfig, ModelConfig, MppConfig, OptimConfig, TrainConfig
from vitkit.recipes.small import fashion_mnist


def mpp_paper() -> Config:
    """The paper's run: ViT-B/16 on JFT, 1M steps of batch 4096, Adam, LR 2e-4, 10k warm-up, cosine decay;
    50% of the patch embeddings corrupted (80% [mask], 10% random, 10% kept), 3-bit mean colour targets."""
    return Config(
        recipe="mpp-paper", objective="mpp",
        data=DataConfig(name="folder:jft", image_size=224, crop="inception", flip=True, val_fraction=0.01, workers=8),
        model=ModelConfig(name="ViT-B/16"),
        optim=OptimConfig(name="adam", lr=2e-4, weight_decay=0.0, schedule="cosine", warmup_steps=10_000, clip_norm=1.0),
        train=TrainConfig(steps=1_000_000, batch_size=4096, micro_batch_size=64, precision="auto", log_every=100,
                          eval_every=10_000, ckpt_every=2_000),
        mpp=MppConfig(rate=0.5, mask_frac=0.8, random_frac=0.1, bits=3, target="mean"),
    )


def mpp_fashion_mnist() -> Config:
    """The fashion-mnist recipe's ViT pre-trained by masked patch prediction on Fashion-MNIST's images
    (labels unused). Grayscale: 3 bits of one channel, 8 classes per patch."""
    base = fashion_mnist()
    return Config(
        recipe="mpp-fashion-mnist", objective="mpp",
        data=DataConfig(name="fashion-mnist", image_size=28, crop="none", flip=True),
        model=base.model,
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.05),
        train=TrainConfig(epochs=8, batch_size=128, log_every=50),
        mpp=MppConfig(rate=0.5, mask_frac=0.8, random_frac=0.1, bits=3, target="mean"),
    )
