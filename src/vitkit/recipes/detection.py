"""Object detection (ViTDet's simple feature pyramid on a plain ViT, into torchvision's FCOS): the canvas task, offline."""
from __future__ import annotations

from vitkit.config import CanvasConfig, Config, DataConfig, DetectionConfig, ModelConfig, OptimConfig, TrainConfig


def det_canvas() -> Config:
    """The canvas task's boxes (Fashion-MNIST and digits items, 1-4 per 64 px canvas, 20 object classes; 5,000
    training canvases) detected by a small ViT from scratch: patch 8 (8 x 8 tokens), width 128, depth 6, sin-cos
    position embeddings, a simple feature pyramid of 64 channels at scales 4, 2 and 1 (strides 2, 4 and 8 px: the
    items are 16-48 px, so ViTDet's 2P level would hold none) into torchvision's FCOS; AdamW 1e-3 with warm-up and
    cosine, 30 epochs of 64, flips and a 4-pixel pad-and-crop that move each box with its image (clipped, dropped
    when it leaves). Scored by COCO's box mAP (map, map_50, map_75, per class)."""
    return Config(
        recipe="det-canvas", objective="detection",
        data=DataConfig(name="canvas", image_size=64, crop="pad", crop_padding=4, flip=True,
                        canvas=CanvasConfig(size=64, train=5000, val=500, test=1000)),
        model=ModelConfig(name="ViT-Ti/16", patch_size=8, width=128, depth=6, heads=4, mlp_dim=256, pool="gap", posemb="sincos2d"),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.05),
        train=TrainConfig(epochs=30, batch_size=64, log_every=50),
        detection=DetectionConfig(kind="fcos", scales="4,2,1", out_channels=64, norm="layer"),
    )
