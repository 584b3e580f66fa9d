"""`vitkit predict`: top-k classes of any image files, prepared as the model was trained."""
from __future__ import annotations

from pathlib import Path

import torch

from vitkit.config import check_argument
from vitkit.data.datasets import load_image


@torch.inference_mode()
def probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (B, K) on the CPU of prepared images (B, C, H, W), computed on the model's device."""
    from vitkit.data.loader import to_device
    from vitkit.runtime import model_device

    return model(to_device(images, model_device(model))).float().softmax(-1).cpu()


def check_images(images: list[str | Path]) -> list[Path]:
    paths = [Path(p) for p in images]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such image file")
    return paths


def predict(src: str | Path, images: list[str | Path], top_k: int = 5, normalize: str | None = None,
            precision: str = "auto", device: str = "auto", engine: str = "auto") -> list[dict]:
    """[{"image", "top": [{"class", "index", "prob"}, ...]}] per image (softmax probabilities); `precision`
    "auto" is what the hardware does natively (vitkit.train.precision.resolve); `engine` what computes
    (vitkit.engines: auto, torch, onnxruntime, openvino; `src` may be an export of `vitkit export`)."""
    from vitkit import engines

    check_argument("top_k", top_k)
    n = len(check_images(images))
    return predict_with(engines.load_engine(src, engine, precision, device, batch_size=n, images=n), images, top_k, normalize)


def predict_with(model, images: list[str | Path], top_k: int = 5, normalize: str | None = None) -> list[dict]:
    """`predict` with a loaded `vitkit.engines.Engine` (load once, predict many times)."""
    check_argument("top_k", top_k)
    paths = check_images(images)
    k_model = model.num_classes
    if not k_model:
        raise ValueError(f"{model.source}: the model has no classification head; fine-tune it first (`vitkit finetune`)")
    prep = model.preprocess.replace(normalize=normalize) if normalize else model.preprocess
    transform = prep.eval_transform()
    names = model.class_names or [str(i) for i in range(k_model)]
    probs = probabilities(model, torch.stack([transform(load_image(p, model.in_chans)) for p in paths]))
    k = min(top_k, k_model)
    out = []
    for path, p in zip(images, probs):
        val, idx = p.topk(k)
        out.append({"image": str(path), "top": [{"class": names[i], "index": int(i), "prob": float(v)}
                                                 for v, i in zip(val.tolist(), idx.tolist())]})
    return out
