"""Semantic segmentation (SETR's decoders on a ViT's patch tokens): the canvas task, offline."""
from __future__ import annotations

from vitkit.config import CanvasConfig, Config, DataConfig, ModelConfig, OptimConfig, SegmentationConfig, TrainConfig


def seg_canvas() -> Config:
    """The canvas task (Fashion-MNIST and digits items, 1-4 per 64 px canvas, 21 classes with the background; 5,000
    training canvases) segmented by a small ViT from scratch: patch 8 (8 x 8 tokens), width 128, depth 6, sin-cos
    position embeddings, and SETR's progressive-upsampling head (3 x2 steps of 64 channels, group norm); AdamW 1e-3
    with warm-up and cosine, 30 epochs of 64, flips and a 4-pixel pad-and-crop that move each mask with its image.
    Pixel accuracy alone flatters it (most pixels are background): mIoU is the main metric."""
    return Config(
        recipe="seg-canvas", objective="segmentation",
        data=DataConfig(name="canvas", image_size=64, crop="pad", crop_padding=4, flip=True,
                        canvas=CanvasConfig(size=64, train=5000, val=500, test=1000)),
        model=ModelConfig(name="ViT-Ti/16", patch_size=8, width=128, depth=6, heads=4, mlp_dim=256, pool="gap", posemb="sincos2d"),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.05),
        train=TrainConfig(epochs=30, batch_size=64, log_every=50),
        segmentation=SegmentationConfig(head="progressive", channels=64, norm="group"),
    )
