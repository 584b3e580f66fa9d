"""The paper's fine-tuning recipe (section 3.2, appendix B.1.1, table 4): a new zero-initialised D x K
head (pre-logits dropped), position embeddings resampled to the new resolution, SGD with momentum 0.9,
no weight decay, global-norm clipping at 1, short warm-up then cosine decay, batch 512 (by accumulation
where needed), LR swept in {0.001, 0.003, 0.01, 0.03} on the validation split."""
from __future__ import annotations

from vitkit.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

# Table 4's steps per dataset; anything else gets the small-dataset figure.
FINETUNE_STEPS = {"imagenet": 20_000, "cifar10": 10_000, "cifar100": 10_000, "pets": 500, "flowers": 500, "vtab": 2_500}
DEFAULT_STEPS = 500
# Datasets whose classes a mirror image changes (a flipped 2 is not a 2): no flip augmentation.
NO_FLIP = {"digits", "mnist", "svhn"}


# What the schedule takes from the number of steps (unless set explicitly): warm-up a tenth (at most 500, as the
# official code), five validations and checkpoints over the run, about twenty log lines.
DERIVED = ("optim.warmup_steps", "train.eval_every", "train.ckpt_every", "train.log_every")


def dataset_key(data: str) -> str:
    """The name of a dataset as table 4 keys it ("folder:/data/imagenet/" -> "imagenet")."""
    return data.split(":")[-1].rstrip("/").split("/")[-1].lower()


def finetune(src: str = "", data: str = "cifar10", image_size: int = 384, normalize: str = "google",
             steps: int | None = None) -> Config:
    """Fine-tune `src` on `data` at `image_size` for `steps` (default: table 4's for the dataset), the schedule
    derived from the steps (DERIVED). Inception crop + flip as the official code for images of
    64 px and more; a pad-and-crop for smaller ones (a 5% area crop of a 28 px digit leaves nothing); no
    flip for digit datasets (measured on digits from the fashion-mnist model, LR 0.03: 90.2% with flips,
    95.1% without)."""
    key = dataset_key(data)
    steps = steps or FINETUNE_STEPS.get(key, DEFAULT_STEPS)
    return Config(
        recipe="finetune",
        data=DataConfig(name=data, image_size=image_size, crop="inception" if image_size >= 64 else "pad",
                        crop_padding=max(1, image_size // 14), flip=key not in NO_FLIP, normalize=normalize),
        model=ModelConfig(name="ViT-B/16", init=src),
        optim=OptimConfig(name="sgd", lr=0.003, momentum=0.9, weight_decay=0.0, clip_norm=1.0, schedule="cosine",
                          warmup_steps=min(500, steps // 10)),
        train=TrainConfig(steps=steps, batch_size=512, micro_batch_size=64 if image_size >= 224 else 0,
                          log_every=max(1, min(50, steps // 20)), eval_every=max(1, steps // 5), ckpt_every=max(1, steps // 5)),
    )
