"""Multitask learning: one small ViT, three heads (Fashion-MNIST classes, digits classes, canvas segmentation)."""
from __future__ import annotations

from vitkit.config import (CanvasConfig, Config, DataConfig, ModelConfig, MultitaskConfig, OptimConfig, SegmentationConfig,
                           TrainConfig)


def multitask() -> Config:
    """Fashion-MNIST's 10 classes, digits' 10 and the canvas task's 21-class segmentation (digits and Fashion-MNIST items
    on a 64 px canvas), trained jointly on one ViT (patch 8, width 128, depth 6, sin-cos position embeddings, average
    pooling) at 64 px: every batch of 96 holds 32 images of each task (equal sampling weights); a linear classifier per
    classification task and SETR's progressive head (64 channels, group norm) for the segmentation. AdamW 1e-3 with
    warm-up and cosine, 3,000 steps, flips and a 4-pixel pad-and-crop (the masks moved with their images). The data
    section's augmentation applies to every task: digits are flipped too (the quickstart recipe does not flip them;
    per-task augmentation is not offered)."""
    return Config(
        recipe="multitask", objective="multitask",
        data=DataConfig(image_size=64, crop="pad", crop_padding=4, flip=True,
                        canvas=CanvasConfig(size=64, train=5000, val=500, test=1000)),
        model=ModelConfig(name="ViT-Ti/16", patch_size=8, width=128, depth=6, heads=4, mlp_dim=256, pool="gap", posemb="sincos2d"),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.05),
        train=TrainConfig(steps=3000, batch_size=96, log_every=50, eval_every=500, ckpt_every=500),
        segmentation=SegmentationConfig(head="progressive", channels=64, norm="group"),
        multitask=MultitaskConfig(tasks="fashion-mnist,digits,canvas"),
    )
