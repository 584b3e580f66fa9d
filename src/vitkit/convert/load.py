"""`load_model` and `save_model`: detect the format, convert, check shapes, resample, report.

Formats:
- "vitkit": a directory with `model.safetensors` + `config.json`, or one `.safetensors` file whose
  metadata holds the config (vitkit writes both, so any of its files describes itself);
- "timm": a timm state dict in `.safetensors`, or a `.pth`/`.pt`/`.bin` read with `weights_only=True`;
- "hf": a Hugging Face ViT directory (`config.json` + `model.safetensors` or `pytorch_model.bin`);
- "npz": a Google .npz (vit_jax or big_vision naming, any prefix, scanned or not).
"""
from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vitkit.data.preprocess import Preprocess
from vitkit.convert import google_npz, hf, timm
from vitkit.convert.common import CheckpointError, LoadReport, atomic_path, load_into, refuse_existing
from vitkit.models.registry import build_model, config_from_dict, config_to_dict, model_config
from vitkit.models.vit import ViTConfig, VisionTransformer

FORMATS = ("vitkit", "timm", "hf", "npz")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


# --- reading ---------------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); is the file complete?") from err


def _safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """A safetensors file's tensor names and metadata, from its header alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); is the file complete?") from err


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    """A .pth state dict, never unpickling anything but tensors and plain containers."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refusing to load: the file needs unpickling beyond tensors (weights_only=True failed: "
            f"{str(err).splitlines()[0]}). Convert it to safetensors where you trust its origin, then load that"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err}); is the file complete?") from err
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def _kind_of_keys(keys: list[str]) -> str | None:
    if any(k.startswith(("vit.", "embeddings.", "encoder.layer.", "layers.")) for k in keys):
        return "hf"
    if any(k.startswith("patch_embed.") for k in keys):
        return "timm"
    return None


def detect_format(path: str | Path) -> str:
    """Which of FORMATS a path holds, from its layout, its config and its tensor names."""
    p = resolve_run_dir(Path(path))
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / CONFIG).exists():
            cfg = _read_json(p / CONFIG)
            if cfg.get("format") == "vitkit":
                return "vitkit"
            if "model_type" in cfg:
                return "hf"
            if "architecture" in cfg:
                return "timm"
        if (p / WEIGHTS).exists():
            return detect_format(p / WEIGHTS)
        raise CheckpointError(f"{p}: a directory without {CONFIG} or {WEIGHTS}: not a vitkit, timm or Hugging Face checkpoint")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        keys, meta = _safetensors_header(p)  # the header only: the tensors are read once, by read_checkpoint
        if "vitkit" in meta:
            return "vitkit"
        kind = _kind_of_keys(keys)
        if kind is None and (p.parent / CONFIG).exists() and "model_type" in _read_json(p.parent / CONFIG):
            kind = "hf"
        if kind:
            return kind
        raise CheckpointError(f"{p}: safetensors file with neither timm/vitkit nor Hugging Face ViT tensor names")
    if suffix in TORCH_SUFFIXES:
        kind = _kind_of_keys(list(_read_torch(p)))
        if kind:
            return kind
        raise CheckpointError(f"{p}: PyTorch state dict with neither timm nor Hugging Face ViT tensor names")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        raise CheckpointError(f"{p}: a zip archive of unknown kind; name it .npz (Google) or .pth (PyTorch), or pass --from")
    raise CheckpointError(f"{p}: not a checkpoint vitkit knows (.safetensors, .npz, .pth, or a vitkit/Hugging Face directory)")


def resolve_run_dir(p: Path) -> Path:
    """A training run directory stands for its checkpoint (RUN/checkpoint)."""
    if p.is_dir() and (p / "checkpoint").is_dir() and not (p / WEIGHTS).exists():
        return p / "checkpoint"
    return p


def _weights_file(p: Path) -> Path:
    for name in (WEIGHTS, "pytorch_model.bin"):
        if (p / name).exists():
            return p / name
    raise CheckpointError(f"{p}: no {WEIGHTS} or pytorch_model.bin in this directory")


def _read_tensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    p = _weights_file(p) if p.is_dir() else p
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    return _read_torch(p), {}


def read_checkpoint(path: str | Path, fmt: str = "auto", **overrides: Any) -> tuple[Any, dict[str, torch.Tensor], list[str], list[str] | None]:
    """(config, vitkit-named tensors, notes, class names) from any supported checkpoint."""
    p = resolve_run_dir(Path(path))
    if fmt == "auto":
        fmt = detect_format(p)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS} or 'auto'")
    elif not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    notes: list[str] = []
    if fmt == "npz":
        cfg, sd, notes = google_npz.to_vitkit(google_npz.read_npz(str(p)), str(p), **overrides)
        return cfg, sd, notes, None
    tensors, meta = _read_tensors(p)
    if fmt == "vitkit" or "vitkit" in meta:
        info = json.loads(meta["vitkit"]) if "vitkit" in meta else _read_json(p / CONFIG)
        cfg = config_from_dict({**info["model"], **overrides})
        sd = tensors if fmt == "vitkit" else timm.to_vitkit(tensors, cfg)
        return cfg, sd, notes, info.get("class_names")
    if fmt == "hf":
        cfg_path = (p if p.is_dir() else p.parent) / CONFIG
        if not cfg_path.exists():
            raise CheckpointError(f"{p}: a Hugging Face checkpoint needs its {CONFIG} beside the weights")
        hf_cfg = _read_json(cfg_path)
        legacy = {hf._legacy(k) for k in tensors}
        if "pooler.dense.weight" in legacy:
            overrides.setdefault("representation_size", hf_cfg.get("pooler_output_size") or hf_cfg.get("hidden_size", 768))
            notes.append("ViTModel pooler (Dense + tanh) loaded as the pre-logits layer")
        if "classifier.weight" not in legacy:
            overrides.setdefault("num_classes", 0)
        cfg = hf.config_from_hf(hf_cfg, str(p), **overrides)
        return cfg, hf.to_vitkit(tensors, cfg), notes, hf.class_names_from_hf(hf_cfg)
    # timm
    cfg = timm.infer_config(tensors, str(p), **overrides)
    return cfg, timm.to_vitkit(tensors, cfg), notes, None


def load_model(
    path: str | Path,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    *,
    format: str = "auto",
    model: str | None = None,
    drop_pre_logits: bool = False,
    resample_mode: str = "bilinear",
    device: str | torch.device | None = None,
    **overrides: Any,
) -> nn.Module:
    """A model with the weights of any checkpoint vitkit reads; the architecture comes from the file.

    `num_classes` different from the checkpoint's replaces the head with a zero-initialised one;
    `image_size` resamples the position embeddings over the new grid (class token untouched);
    `drop_pre_logits` removes a pre-logits layer (as for fine-tuning); `model` names the variant when
    the file cannot say (timm state dicts do not record the number of heads); `overrides` set any
    other architecture option (dropout, drop_path, heads, ...); `device` ("auto", "cpu", "cuda:1", ...) places
    it (default: the CPU, where the file is read). The returned model has a
    `load_report` (missing, unexpected and resampled tensors) and `class_names` (or None).
    """
    source = str(path)
    if model is not None:
        overrides.setdefault("heads", model_config(model).heads)
    fmt = detect_format(path) if format == "auto" else format
    cfg, sd, notes, class_names = read_checkpoint(path, fmt, **overrides)
    report = LoadReport(source=source, format=fmt, notes=notes)
    if isinstance(cfg, ViTConfig) and cfg.posemb == "sincos2d":
        sd = {k: v for k, v in sd.items() if k != "pos_embed"}
    net = build_model(cfg)
    load_into(net, sd, source, report)
    if isinstance(net, VisionTransformer) and drop_pre_logits and cfg.representation_size:
        net.drop_pre_logits()
        report.notes.append(f"pre-logits layer dropped; new zero-initialised {cfg.width} x {cfg.num_classes} head")
    if num_classes is not None and num_classes != cfg.num_classes:
        report.notes.append(f"head replaced: {cfg.num_classes} -> {num_classes} classes, zero-initialised")
        net.reset_head(num_classes, zero=True)
        class_names = None
    if image_size is not None and isinstance(net, VisionTransformer):
        old = (cfg.image_size, tuple(net.pos_embed.shape) if net.pos_embed is not None else None)
        net.set_image_size(image_size, mode=resample_mode)
        if old[0] != cfg.image_size and net.pos_embed is not None:
            report.resampled.append(f"pos_embed {old[1]} -> {tuple(net.pos_embed.shape)} ({resample_mode}, class token kept)")
    elif image_size is not None:
        net.config.image_size = image_size  # convolutional: any size works
    net.load_report = report
    net.class_names = class_names
    net.preprocess = Preprocess.of(net, read_preprocess(path))  # the size after any resize above
    if device is not None:
        from vitkit.runtime import resolve_device

        net.to(resolve_device(str(device), option="device"))
    return net


def read_preprocess(path: str | Path) -> dict | None:
    """How a vitkit checkpoint's inputs were prepared ({"image_size", "normalize", "in_chans"}), if recorded."""
    p = resolve_run_dir(Path(path))
    try:
        if p.is_dir() and (p / CONFIG).exists():
            return _read_json(p / CONFIG).get("preprocess")
        if p.suffix == ".safetensors":
            meta = _safetensors_header(p)[1]
            return json.loads(meta["vitkit"]).get("preprocess") if "vitkit" in meta else None
    except (CheckpointError, json.JSONDecodeError):
        return None
    return None


# --- writing ---------------------------------------------------------------------------------------


def _plain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _outside_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict, with a fixed sin-cos table written as a (learned) position embedding, and a model
    without one given an all-zero table: outside formats have no other way to carry them (timm, transformers
    and the official code always add a table; without one they would start it at random, and .npz would lose
    the image size). Adding zeros computes the same."""
    sd = dict(model.state_dict())
    if isinstance(model, VisionTransformer) and model.config.posemb == "sincos2d":
        sd["pos_embed"] = model.pos_embed_fixed
    elif isinstance(model, VisionTransformer) and model.config.posemb == "none":
        cfg = model.config
        sd["pos_embed"] = torch.zeros(1, cfg.grid[0] * cfg.grid[1] + model.num_prefix_tokens, cfg.width)
    return sd


def save_model(model: nn.Module, path: str | Path, format: str = "vitkit", *, overwrite: bool = False,
               class_names: list[str] | None = None, preprocess: Preprocess | dict | None = None) -> Path:
    """Write `model` as vitkit (a directory, or one file if `path` ends in .safetensors), timm
    (.safetensors), hf (a directory) or npz (Google .npz, vit_jax naming). Atomic: on any error
    nothing is left at `path`; an existing path is refused unless `overwrite`."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")
    path = Path(path)
    refuse_existing(path, overwrite)
    cfg = model.config
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    prep = Preprocess.of(model, preprocess).to_dict()  # the model's size and channels, always
    info = {"format": "vitkit", "version": 1, "model": config_to_dict(cfg), "class_names": names, "preprocess": prep}
    if format != "vitkit" and not isinstance(cfg, ViTConfig):
        raise CheckpointError(f"a {type(model).__name__} can be saved as vitkit only; {format} holds ViTs")
    if format == "vitkit":
        sd = _plain(model.state_dict())
        meta = {"vitkit": json.dumps(info)}
        with atomic_path(path, overwrite) as tmp:
            if path.suffix == ".safetensors":
                save_file(sd, str(tmp), metadata=meta)
            else:
                tmp.mkdir()
                save_file(sd, str(tmp / WEIGHTS), metadata=meta)
                (tmp / CONFIG).write_text(json.dumps(info, indent=2))
    elif format == "timm":
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: timm checkpoints are written as .safetensors; name the file *.safetensors")
        sd, notes = timm.from_vitkit(_outside_state(model), cfg)
        for note in notes:
            warnings.warn(f"{path}: {note}", stacklevel=2)
        if cfg.representation_size:
            info["model"]["representation_size"] = None
        with atomic_path(path, overwrite) as tmp:
            save_file(_plain(sd), str(tmp), metadata={"format": "pt", "vitkit": json.dumps(info)})
    elif format == "hf":
        sd, _ = hf.from_vitkit(_outside_state(model), cfg)
        with atomic_path(path, overwrite) as tmp:
            tmp.mkdir()
            save_file(_plain(sd), str(tmp / WEIGHTS), metadata={"format": "pt"})
            (tmp / CONFIG).write_text(json.dumps(hf.config_to_hf(cfg, names), indent=2))
    else:
        if path.suffix != ".npz":
            raise ValueError(f"{path}: Google checkpoints are .npz files; name the file *.npz")
        arrays = google_npz.from_vitkit(_outside_state(model), cfg)
        with atomic_path(path, overwrite) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return path
