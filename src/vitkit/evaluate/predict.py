"""`vitkit predict`: top-k classes of any image files, prepared as the model was trained."""
from __future__ import annotations

from pathlib import Path

import torch

from vitkit.config import DataConfig
from vitkit.convert.load import load_model
from vitkit.data.datasets import load_image
from vitkit.data.transforms import eval_transform


@torch.inference_mode()
def probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (B, K) on the CPU of prepared images (B, C, H, W), computed on the model's device."""
    from vitkit.data.loader import to_device
    from vitkit.runtime import model_device

    return model(to_device(images, model_device(model))).float().softmax(-1).cpu()


def predict(src: str | Path, images: list[str | Path], top_k: int = 5, normalize: str | None = None,
            precision: str = "auto", device: str = "auto") -> list[dict]:
    """[{"image", "top": [{"class", "index", "prob"}, ...]}] per image (softmax probabilities); `precision`
    "auto" is what the hardware does natively (vitkit.train.precision.resolve)."""
    from vitkit.models.fast import InferenceModel
    from vitkit.runtime import resolve_device

    dev = resolve_device(device)
    model = load_model(src).to(dev).eval()
    cfg_model = model.config
    k_model = getattr(cfg_model, "num_classes", 0)
    if not k_model:
        raise ValueError(f"{src}: the model has no classification head; fine-tune it first (`vitkit finetune`)")
    prep = getattr(model, "preprocess", None) or {}
    size = prep.get("image_size") or (cfg_model.image_size if isinstance(cfg_model.image_size, int) else cfg_model.image_size[0])
    transform = eval_transform(DataConfig(image_size=size, normalize=normalize or prep.get("normalize", "google")), cfg_model.in_chans)
    names = getattr(model, "class_names", None) or [str(i) for i in range(k_model)]
    batch = []
    for path in images:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such image file")
        batch.append(transform(load_image(p, cfg_model.in_chans)))
    probs = probabilities(InferenceModel(model, precision), torch.stack(batch))
    k = min(top_k, k_model)
    out = []
    for path, p in zip(images, probs):
        val, idx = p.topk(k)
        out.append({"image": str(path), "top": [{"class": names[i], "index": int(i), "prob": float(v)}
                                                 for v, i in zip(val.tolist(), idx.tolist())]})
    return out
