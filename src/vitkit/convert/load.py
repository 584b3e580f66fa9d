"""`load`, `load_model` and `save_model`: the dispatcher over the format adapters, then shape checks, resampling,
a model card (class names, preprocessing, the loading report: convert/card.py).

Formats, one adapter module each (detect / read / write):
- "vitkit" (convert/vitkit_format.py): a directory with `model.safetensors` + `config.json`, or one `.safetensors`
  file whose metadata holds the config (vitkit writes both, so any of its files describes itself);
- "timm" (convert/timm.py): a timm state dict in `.safetensors`, or a `.pth`/`.pt`/`.bin` read with `weights_only=True`;
- "hf" (convert/hf.py): a Hugging Face ViT directory (`config.json` + `model.safetensors` or `pytorch_model.bin`);
- "npz" (convert/google_npz.py): a Google .npz (vit_jax or big_vision naming, any prefix, scanned or not).
Detection reads layouts, config.json and safetensors headers (never the tensors of a .safetensors file); the
tensors are read once. File primitives: convert/files.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitkit import hub
from vitkit.convert import google_npz, hf, timm, vitkit_format
from vitkit.atomic import refuse_existing
from vitkit.convert.card import Loaded, ModelCard
from vitkit.convert.common import CheckpointError, LoadReport, load_into
from vitkit.convert.files import (CONFIG, TORCH_SUFFIXES, WEIGHTS, read_json, read_tensors, read_torch, resolve_run_dir,
                                  safetensors_header)
from vitkit.data import labels
from vitkit.data.preprocess import Preprocess
from vitkit.models.registry import build_model, config_to_dict, model_config
from vitkit.models.vit import ViTConfig

FORMATS = ("vitkit", "timm", "hf", "npz")
ADAPTERS = {"vitkit": vitkit_format, "timm": timm, "hf": hf, "npz": google_npz}
DETECT_ORDER = (vitkit_format, hf, timm)  # for directories and tensor files; hf's names before timm's


# --- reading ---------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """Which of FORMATS a path holds, from its layout, its config and its tensor names (safetensors: the header)."""
    p = resolve_run_dir(Path(path))
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / CONFIG).exists():
            cfg = read_json(p / CONFIG)
            for adapter in DETECT_ORDER:
                if adapter.detect_dir(cfg):
                    return adapter.NAME
        if (p / WEIGHTS).exists():
            return detect_format(p / WEIGHTS)
        raise CheckpointError(f"{p}: a directory without {CONFIG} or {WEIGHTS}: not a vitkit, timm or Hugging Face checkpoint")
    if google_npz.detect_file(p):
        return "npz"
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        keys, meta = safetensors_header(p)  # the header only: the tensors are read once, by read_checkpoint
        for adapter in DETECT_ORDER:
            if adapter.detect_tensors(keys, meta, p):
                return adapter.NAME
        raise CheckpointError(f"{p}: safetensors file with neither timm/vitkit nor Hugging Face ViT tensor names")
    if suffix in TORCH_SUFFIXES:
        keys = list(read_torch(p))
        for adapter in (hf, timm):
            if adapter.detect_tensors(keys, {}, p):
                return adapter.NAME
        raise CheckpointError(f"{p}: PyTorch state dict with neither timm nor Hugging Face ViT tensor names")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        raise CheckpointError(f"{p}: a zip archive of unknown kind; name it .npz (Google) or .pth (PyTorch), or pass --from")
    raise CheckpointError(f"{p}: not a checkpoint vitkit knows (.safetensors, .npz, .pth, or a vitkit/Hugging Face directory)")


def read_checkpoint(path: str | Path, fmt: str = "auto", **overrides: Any) -> tuple[Any, dict[str, torch.Tensor], list[str], list[str] | None]:
    """(config, vitkit-named tensors, notes, class names) from any supported checkpoint."""
    p = resolve_run_dir(Path(path))
    if fmt == "auto":
        fmt = detect_format(p)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS} or 'auto'")
    elif not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    try:
        if fmt == "npz":
            return google_npz.read(p, **overrides)
        tensors, meta = read_tensors(p)
        if fmt == "vitkit" or "vitkit" in meta:  # vitkit's record (also inside the timm files vitkit writes)
            return vitkit_format.read(p, tensors, meta, timm_names=fmt != "vitkit", **overrides)
        return ADAPTERS[fmt].read(p, tensors, meta, **overrides)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as err:  # a record that describes no model: JSON, keys, values
        raise CheckpointError(f"{p}: its record describes no model vitkit can build ({err}); is the file damaged?") from None


def load(
    path: str | Path,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    *,
    format: str = "auto",
    model: str | None = None,
    drop_pre_logits: bool = False,
    resample_mode: str = "bilinear",
    device: str | torch.device | None = None,
    strict: bool = True,
    **overrides: Any,
) -> Loaded:
    """`(model, card)`: a model with the weights of any checkpoint vitkit reads (the architecture comes from
    the file) and its `ModelCard` (class names, preprocessing, source, the loading report). `path` may also be a
    published name (vitkit/hub.py: "hf-hub:ORG/NAME[@REV]", timm's "MODEL.TAG", "google/vit-base-patch16-224",
    "google:imagenet21k/ViT-B_16"), downloaded once into the cache; a local path that exists wins over a name.

    `num_classes` different from the checkpoint's replaces the head with a zero-initialised one (and drops the
    class names); `image_size` resamples the position embeddings over the new grid (class token untouched);
    `drop_pre_logits` removes a pre-logits layer (as for fine-tuning); `model` names the variant when
    the file cannot say (timm state dicts do not record the number of heads); `overrides` set any
    other architecture option (dropout, drop_path, heads, ...); `device` ("auto", "cpu", "cuda:1", ...) places
    it (default: the CPU, where the file is read). Loading is exact: a tensor the model has no place for is an
    error; `strict=False` leaves such tensors out and lists them in the report (`card.report.unexpected`).
    """
    source = str(path)
    fetched = None
    if hub.is_name(path):  # a published name: its files in the cache, downloaded if need be (vitkit/hub.py)
        fetched = hub.fetch(source)
        path = fetched.path
    if model is not None:
        overrides.setdefault("heads", model_config(model).heads)
    fmt = detect_format(path) if format == "auto" else format
    if fetched is not None and fetched.name.variant and fmt == "timm" and "heads" not in overrides:
        overrides["heads"] = model_config(fetched.name.variant).heads  # timm's files do not record them; the name does
    cfg, sd, notes, class_names = read_checkpoint(path, fmt, **overrides)
    if fetched is not None:
        notes = fetched.notes + notes
        cfg = _named(cfg, fetched.name.variant)
        if class_names is None and fetched.name.labels:
            try:
                class_names = labels.names(fetched.name.labels, cfg.num_classes)
            except hub.DownloadError as err:  # the list is not cached and cannot be fetched: the weights load anyway
                notes.append(f"class names left out: {err}")
    report = LoadReport(source=source, format=fmt, notes=notes)
    if isinstance(cfg, ViTConfig) and cfg.posemb == "sincos2d":
        sd = {k: v for k, v in sd.items() if k != "pos_embed"}
    net = build_model(cfg)
    load_into(net, sd, source, report, strict)
    if hasattr(net, "drop_pre_logits") and drop_pre_logits and getattr(cfg, "representation_size", None):
        net.drop_pre_logits()
        report.notes.append(f"pre-logits layer dropped; new zero-initialised {cfg.width} x {cfg.num_classes} head")
    if num_classes is not None and getattr(cfg, "arch", None) == "multitask":
        raise ValueError(f"{source}: a multitask model has a head per task, not one classifier to resize; load it "
                         f"without num_classes (its encoder: model.encoder), or fine-tune it (`vitkit finetune {source} "
                         f"--data ...`)")
    if num_classes is not None and num_classes != cfg.num_classes:
        report.notes.append(f"head replaced: {cfg.num_classes} -> {num_classes} classes, zero-initialised")
        net.reset_head(num_classes, zero=True)
        class_names = None
    if image_size is not None and hasattr(net, "set_image_size"):  # a ViT, a hybrid or an Axial-ViT: tokens on a grid
        tables = ("pos_embed", "pos_embed_x", "pos_embed_y")
        old = (cfg.image_size, {n: tuple(getattr(net, n).shape) for n in tables if getattr(net, n, None) is not None})
        net.set_image_size(image_size, mode=resample_mode)
        kept = ", class token kept" if getattr(net, "num_prefix_tokens", 0) else ""
        if old[0] != cfg.image_size:
            report.resampled += [f"{n} {shape} -> {tuple(getattr(net, n).shape)} ({resample_mode}{kept if n == 'pos_embed' else ''})"
                                 for n, shape in old[1].items()]
    elif image_size is not None:
        net.config.image_size = image_size  # convolutional: any size works
    try:
        prep = Preprocess.of(net, read_preprocess(path, fmt))  # the size after any resize
    except (ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{source}: its recorded preprocessing is not one vitkit knows ({err}); is the file damaged?") from None
    card = ModelCard(prep, class_names, source, report)
    if device is not None:
        from vitkit.runtime import resolve_device

        net.to(resolve_device(str(device), option="device"))
    return Loaded(net, card)


def _named(cfg: Any, variant: str | None) -> Any:
    """`cfg` under the variant's name when its architecture is that variant's (timm's files do not record a name)."""
    import dataclasses

    from vitkit.models.registry import IDENTITY_FIELDS

    if not isinstance(cfg, ViTConfig) or cfg.name or not variant:
        return cfg
    ref = model_config(variant)
    same = isinstance(ref, ViTConfig) and all(getattr(ref, f) == getattr(cfg, f) for f in IDENTITY_FIELDS)
    return dataclasses.replace(cfg, name=variant) if same else cfg


def load_model(path: str | Path, num_classes: int | None = None, image_size: int | tuple[int, int] | None = None,
               **kwargs: Any) -> nn.Module:
    """The model of `load` alone (the same arguments); `vitkit.load` also gives its class names, preprocessing
    and loading report."""
    return load(path, num_classes, image_size, **kwargs).model


def read_preprocess(path: str | Path, fmt: str = "auto") -> dict | None:
    """How a checkpoint's inputs were prepared ({"image_size", "normalize", "in_chans"}), if recorded: vitkit's record,
    or (`fmt` "hf") the normalisation of a Hugging Face preprocessor_config.json's mean / std."""
    p = resolve_run_dir(Path(path))
    try:
        if fmt == "hf":
            normalize = hf.read_normalize(p)[0]
            return {"normalize": normalize} if normalize else None
        if fmt == "timm" and p.is_dir():
            return timm.read_preprocess(p)[0]
        if p.is_dir() and (p / CONFIG).exists():
            return read_json(p / CONFIG).get("preprocess")
        if p.suffix == ".safetensors":
            meta = safetensors_header(p)[1]
            return json.loads(meta["vitkit"]).get("preprocess") if "vitkit" in meta else None
    except (CheckpointError, json.JSONDecodeError):
        return None
    return None


def read_arch(path: str | Path) -> str | None:
    """The architecture a vitkit checkpoint (a run directory, its directory or .safetensors) records: "vit", "bit",
    "axial_vit", "axial_resnet", "segmentation", "detection"; None for what vitkit's record does not describe (other formats,
    published names, a path that is not there). Reads the record only, never the tensors."""
    try:
        p = resolve_run_dir(Path(path))
        if p.is_dir() and (p / CONFIG).exists():
            info = read_json(p / CONFIG)
        elif p.suffix == ".safetensors" and p.is_file():
            meta = safetensors_header(p)[1]
            info = json.loads(meta["vitkit"]) if "vitkit" in meta else {}
        else:
            return None
    except (OSError, CheckpointError, json.JSONDecodeError):
        return None
    if info.get("format") != "vitkit":  # a Hugging Face config.json, say
        return None
    model = info.get("model")
    return model.get("arch", "vit") if isinstance(model, dict) else None


# --- writing ---------------------------------------------------------------------------------------


def save_model(model: nn.Module, path: str | Path, format: str = "vitkit", *, overwrite: bool = False,
               card: ModelCard | None = None, class_names: list[str] | None = None,
               preprocess: Preprocess | dict | None = None) -> Path:
    """Write `model` as vitkit (a directory, or one file if `path` ends in .safetensors), timm
    (.safetensors), hf (a directory) or npz (Google .npz, vit_jax naming), with its card (class names and
    normalisation; `class_names` / `preprocess` given here win over the card's; the size and channels are the
    model's). Atomic: on any error nothing is left at `path`; an existing path is refused unless `overwrite`."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")
    path = Path(path)
    refuse_existing(path, overwrite)
    cfg = model.config
    names = class_names if class_names is not None else card.class_names if card else None
    prep = Preprocess.of(model, preprocess if preprocess is not None else card.preprocess if card else None).to_dict()
    info = {"format": "vitkit", "version": 1, "model": config_to_dict(cfg), "class_names": names, "preprocess": prep}
    if format != "vitkit" and not isinstance(cfg, ViTConfig):
        raise CheckpointError(f"a {type(model).__name__} can be saved as vitkit only; {format} holds ViTs")
    ADAPTERS[format].write(model, path, info, overwrite)
    return path
