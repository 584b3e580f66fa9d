"""`vitkit predict`: top-k classes of any image files, prepared as the model was trained; for a segmentation model,
a class per pixel, written as a mask and an overlay PNG per image; for a detector, its boxes, written as JSON and
drawn on the image as a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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


# --- segmentation: a class per pixel -------------------------------------------------------------------------------


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, class k's Pascal VOC's (its index's bits spread over R, G and B: 0 black, 1 dark red,
    2 dark green, ...; distinct for the first 256 classes), as VOC's own palette masks colour their classes."""
    k = np.arange(num_classes)
    out = np.zeros((num_classes, 3), np.int64)
    for shift in range(8):
        for c in range(3):
            out[:, c] |= ((k >> (3 * shift + c)) & 1) << (7 - shift)
    return out.astype(np.uint8)


def output_paths(images: list[Path], out: str | Path | None, suffixes: tuple[str, ...],
                 overwrite: bool = False) -> list[tuple[Path, ...]]:
    """The files each image's prediction writes, STEM + each of `suffixes`, beside it or in `out`; refused before
    anything is written when one exists (unless `overwrite`), is one of the images, or two images would write the same
    file."""
    seen: dict[Path, Path] = {}
    inputs = {p.resolve() for p in images}
    outs = []
    for path in images:
        where = Path(out) if out is not None else path.parent
        files = tuple(where / f"{path.stem}{suffix}" for suffix in suffixes)
        for target in files:
            if target in seen:
                raise ValueError(f"{seen[target]} and {path} would both write {target}; give images of other names, or "
                                 f"predict them into separate --out directories")
            if target.resolve() in inputs:
                raise ValueError(f"{path}: its prediction {target} is one of the images given; predict into another --out DIR")
            if target.exists() and not overwrite:
                raise FileExistsError(f"{target} already exists; choose another --out DIR, or pass --force to replace it")
            seen[target] = path
        outs.append(files)
    return outs


def mask_paths(images: list[Path], out: str | Path | None, overwrite: bool = False) -> list[tuple[Path, Path]]:
    """(mask, overlay) paths per image: STEM.mask.png and STEM.overlay.png (`output_paths`)."""
    return output_paths(images, out, (".mask.png", ".overlay.png"), overwrite)


@torch.inference_mode()
def predict_masks(src: str | Path, images: list[str | Path], out: str | Path | None = None, overwrite: bool = False,
                  alpha: float = 0.5, normalize: str | None = None, precision: str = "auto", device: str = "auto") -> list[dict]:
    """A segmentation model's class per pixel of each image, at the image's own size (the logits upsampled
    bilinearly from the model's, then the argmax), written as two PNGs: STEM.mask.png (a palette PNG of the class
    indices, as VOC's masks, which `seg:PATH` folders read back) and STEM.overlay.png (the image with each class's
    colour blended in at `alpha`; a class named "background" left uncoloured). Beside each image, or in `out`;
    an existing file is refused (before any is written) unless `overwrite`. Returns per image {"image", "size"
    [width, height], "mask", "overlay", "classes" {name: fraction of the pixels}, largest first}."""
    import torch.nn.functional as F
    from PIL import Image

    from vitkit import progress
    from vitkit.atomic import atomic_path
    from vitkit.convert.load import load
    from vitkit.data.loader import to_device
    from vitkit.heads.segmentation import SegmentationModel
    from vitkit.models.fast import accelerate
    from vitkit.runtime import resolve_device
    from vitkit.train.precision import autocast, resolve

    check_argument("alpha", alpha)
    paths = check_images(images)
    targets = mask_paths(paths, out, overwrite)
    dev = resolve_device(device)
    precision = resolve(precision, dev, "--precision")
    model, card = load(src)
    if not isinstance(model, SegmentationModel):
        raise ValueError(f"{src}: a {type(model).__name__}, not a segmentation model; `vitkit predict` without --out gives a "
                         f"classifier's top-k classes")
    accelerate(model.to(dev).eval())
    prep = card.preprocess.replace(normalize=normalize) if normalize else card.preprocess
    transform = prep.eval_transform()
    k = model.num_classes
    names = card.class_names or [str(i) for i in range(k)]
    colours = torch.from_numpy(palette(k)).float()  # (K, 3)
    tint = torch.full((k, 1), float(alpha))
    if names[0] == "background":
        tint[0] = 0.0
    results = []
    for path, (mask_path, overlay_path) in zip(images, progress.bar(targets, desc="segmenting", unit="image")):
        rgb = load_image(Path(path), 3)  # (3, H, W) uint8, upright (EXIF) as the model's input
        H, W = rgb.shape[-2:]
        x = transform(load_image(Path(path), model.config.in_chans))[None]
        with autocast(precision, dev.type):
            logits = model(to_device(x, dev))
        logits = F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)  # (1, K, H, W)
        classes = logits[0].argmax(0).cpu()  # (H, W)
        a = tint[classes].permute(2, 0, 1)  # (1, H, W)
        blended = rgb.float() * (1 - a) + colours[classes].permute(2, 0, 1) * a
        overlay = blended.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        if k <= 256:
            mask = Image.fromarray(classes.numpy().astype(np.uint8), mode="P")
            mask.putpalette(palette(256).flatten().tolist())
        else:  # more classes than a palette holds: 16-bit grayscale indices
            mask = Image.fromarray(classes.numpy().astype(np.uint16))
        for target, image in ((mask_path, mask), (overlay_path, Image.fromarray(overlay))):
            with atomic_path(target, overwrite=overwrite) as tmp:
                image.save(tmp, format="PNG")
        counts = torch.bincount(classes.flatten(), minlength=k).tolist()
        shares = sorted(((names[i], c / (H * W)) for i, c in enumerate(counts) if c), key=lambda t: -t[1])
        results.append({"image": str(path), "size": [W, H], "mask": str(mask_path), "overlay": str(overlay_path),
                        "classes": dict(shares)})
    return results


# --- detection: boxes ----------------------------------------------------------------------------------------------


@torch.inference_mode()
def predict_boxes(src: str | Path, images: list[str | Path], out: str | Path | None = None, overwrite: bool = False,
                  min_score: float = 0.5, precision: str = "auto", device: str = "auto") -> list[dict]:
    """A detector's boxes of each image, in the image's own pixels (the detector resizes it to its input size and maps
    its boxes back), those scoring `min_score` or more, best first; the background (label 0) never one. Written as
    STEM.boxes.json ({"image", "size" [width, height], "boxes": [{"class", "label", "score", "box" [x0, y0, x1, y1]}]})
    and STEM.boxes.png (the image with each box drawn in its class's colour, named and scored: torchvision's
    draw_bounding_boxes), beside each image or in `out`; an existing file is refused (before any is written) unless
    `overwrite`. Returns per image that record, with "json" and "png" (the files)."""
    import json

    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    from vitkit import progress
    from vitkit.atomic import atomic_path
    from vitkit.convert.load import load
    from vitkit.data.loader import to_device
    from vitkit.models.fast import accelerate
    from vitkit.runtime import resolve_device
    from vitkit.train.precision import autocast, resolve

    check_argument("min_score", min_score)
    paths = check_images(images)
    targets = output_paths(paths, out, (".boxes.json", ".boxes.png"), overwrite)
    dev = resolve_device(device)
    precision = resolve(precision, dev, "--precision")
    model, card = load(src)
    if getattr(model.config, "arch", None) != "detection":
        raise ValueError(f"{src}: a {type(model).__name__}, not a detection model; `vitkit predict` without --out gives a "
                         f"classifier's top-k classes")
    accelerate(model.to(dev).eval())
    k = model.num_classes
    names = card.class_names or ["background"] + [str(i) for i in range(1, k)]
    colours = [tuple(int(c) for c in rgb) for rgb in palette(k)]
    results = []
    for path, (json_path, png_path) in zip(images, progress.bar(targets, desc="detecting", unit="image")):
        rgb = load_image(Path(path), 3)  # (3, H, W) uint8, upright (EXIF) as the model's input
        H, W = rgb.shape[-2:]
        x = load_image(Path(path), model.config.in_chans)
        with autocast(precision, dev.type):
            found = model([to_device(x, dev)])[0]
        keep = (found["labels"] > 0) & (found["scores"] >= min_score)
        boxes, labels, scores = (found[key][keep].float().cpu() for key in ("boxes", "labels", "scores"))
        order = scores.argsort(descending=True)
        boxes, labels, scores = boxes[order], labels[order].long(), scores[order]
        record = {"image": str(path), "size": [W, H],
                  "boxes": [{"class": names[c], "label": int(c), "score": float(sc), "box": [float(v) for v in b]}
                            for b, c, sc in zip(boxes.tolist(), labels.tolist(), scores.tolist())]}
        drawn = rgb if not len(boxes) else draw_bounding_boxes(
            rgb, boxes, labels=[f"{names[c]} {sc:.2f}" for c, sc in zip(labels.tolist(), scores.tolist())],
            colors=[colours[c] for c in labels.tolist()], width=max(1, round(min(H, W) / 160)))
        with atomic_path(json_path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        with atomic_path(png_path, overwrite=overwrite) as tmp:
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        results.append({**record, "json": str(json_path), "png": str(png_path)})
    return results
