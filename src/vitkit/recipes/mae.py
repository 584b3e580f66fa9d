"""Self-supervised pre-training by masked autoencoding (He et al. 2021), or its denoising variant (mae.noise_std)."""
from __future__ import annotations

from vitkit.config import Config, DataConfig, MaeConfig, OptimConfig, TrainConfig
from vitkit.recipes.small import fashion_mnist


def mae() -> Config:
    """The fashion-mnist recipe's ViT (patch 4: 7 x 7 tokens, width 128, depth 6, GAP, sin-cos) pre-trained as a
    masked autoencoder on Fashion-MNIST's images (labels unused; any dataset with --set data.name=...): 75% of the
    patches hidden (37 of 49), a decoder of width 64, depth 2, per-patch normalised pixel targets; AdamW with the MAE
    paper's betas (0.9, 0.95) and weight decay 0.05, warm-up then cosine. The encoder runs on a quarter of the tokens,
    so an epoch costs well under the supervised recipe's."""
    base = fashion_mnist()
    return Config(
        recipe="mae", objective="mae",
        data=DataConfig(name="fashion-mnist", image_size=28, crop="pad", crop_padding=1, flip=True),
        model=base.model,
        optim=OptimConfig(name="adamw", lr=1.5e-3, b2=0.95, weight_decay=0.05, warmup_fraction=0.05),
        train=TrainConfig(epochs=10, batch_size=256, log_every=50),
        mae=MaeConfig(mask_ratio=0.75, target="norm", decoder_width=64, decoder_depth=2, decoder_heads=4),
    )
