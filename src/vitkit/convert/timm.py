"""timm's VisionTransformer / hybrid state dicts <-> vitkit; the timm format's adapter (detect / read / write).

timm and vitkit share the ViT names (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.attn.qkv`,
...); they differ in the hybrid's ResNet, in timm's `fc_norm` (LayerNorm after GAP) and in vitkit's
pre-logits layer, which timm's VisionTransformer does not have.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitkit.convert.common import CheckpointError
from vitkit.models.resnet import ResNetConfig
from vitkit.models.vit import ViTConfig

# (timm pattern, vitkit replacement) for the hybrid's ResNet, applied in order.
TIMM_TO_VITKIT = [
    (r"^patch_embed\.backbone\.stem\.conv\.", "patch_embed.backbone.conv_root."),
    (r"^patch_embed\.backbone\.stem\.norm\.", "patch_embed.backbone.gn_root."),
    (r"^patch_embed\.backbone\.conv\.", "patch_embed.backbone.conv_root."),  # R+ViT-Ti: the stem alone
    (r"^patch_embed\.backbone\.norm\.", "patch_embed.backbone.gn_root."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.blocks\.(\d+)\.downsample\.conv\.", r"\1.\2.conv_proj."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.blocks\.(\d+)\.downsample\.norm\.", r"\1.\2.gn_proj."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.blocks\.(\d+)\.conv(\d)\.", r"\1.\2.conv\3."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.blocks\.(\d+)\.norm(\d)\.", r"\1.\2.gn\3."),
    (r"^fc_norm\.", "norm."),
]
VITKIT_TO_TIMM = [
    (r"^patch_embed\.backbone\.conv_root\.", "patch_embed.backbone.stem.conv."),
    (r"^patch_embed\.backbone\.gn_root\.", "patch_embed.backbone.stem.norm."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.(\d+)\.conv_proj\.", r"\1.blocks.\2.downsample.conv."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.(\d+)\.gn_proj\.", r"\1.blocks.\2.downsample.norm."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.(\d+)\.conv(\d)\.", r"\1.blocks.\2.conv\3."),
    (r"^(patch_embed\.backbone\.stages\.\d+)\.(\d+)\.gn(\d)\.", r"\1.blocks.\2.norm\3."),
]
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # the paper's and DeiT's variants


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    for pattern, repl in table:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def guess_heads(width: int, source: str) -> int:
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    if width % 64 == 0:
        return width // 64
    raise CheckpointError(
        f"{source}: cannot tell the number of attention heads of a width-{width} model from its tensors; "
        f"pass heads=N to load_model (or --model NAME / --set heads=N on the command line)"
    )


def infer_config(sd: dict[str, torch.Tensor], source: str, **overrides) -> ViTConfig:
    """A ViTConfig from timm/vitkit-named tensors (what timm's files carry: no heads, so the paper's
    width -> heads table, 64-wide heads otherwise, or `heads=` from the caller)."""
    if "patch_embed.proj.weight" not in sd:
        raise CheckpointError(f"{source}: no 'patch_embed.proj.weight' tensor: not a ViT state dict in timm/vitkit names")
    proj = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    width, patch = proj.shape[0], proj.shape[-1]
    depth = len({k.split(".")[1] for k in sd if re.match(r"^blocks\.\d+\.norm1\.weight$", k)})
    hybrid = any(k.startswith("patch_embed.backbone.") for k in sd)
    resnet, in_chans, stride = None, proj.shape[1], 1
    if hybrid:
        stages: dict[int, set[int]] = {}
        for k in sd:
            m = re.match(r"^patch_embed\.backbone\.stages\.(\d+)\.(?:blocks\.)?(\d+)\.", k)
            if m:
                stages.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        root = sd.get("patch_embed.backbone.conv_root.weight")
        root = root if root is not None else sd.get("patch_embed.backbone.stem.conv.weight", sd.get("patch_embed.backbone.conv.weight"))
        layers = tuple(len(stages[i]) for i in sorted(stages))
        resnet = ResNetConfig(layers=layers, width_factor=root.shape[0] // 64, ws_eps=1e-8, gn_eps=1e-5)  # timm's eps
        in_chans, stride = root.shape[1], resnet.stride
    class_token = "cls_token" in sd
    fc_norm = "fc_norm.weight" in sd
    cfg: dict = dict(
        width=width, depth=depth, patch_size=patch, in_chans=in_chans, resnet=resnet,
        mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else 4 * width,  # else: named missing
        class_token=class_token, fc_norm=fc_norm, pool="token" if class_token and not fc_norm else "gap",
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        posemb="learned" if "pos_embed" in sd else "none",
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        representation_size=sd["pre_logits.0.weight"].shape[0] if "pre_logits.0.weight" in sd else None,
    )
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1] - int(class_token)
        side = math.isqrt(max(n, 0))
        if side * side != n:
            side = math.isqrt(n + int(class_token))  # timm's no_embed_class: no row for the class token
        cfg["image_size"] = side * patch * stride
    cfg.update(overrides)
    if "heads" not in cfg:
        cfg["heads"] = guess_heads(width, source)
    return ViTConfig(**cfg)


def to_vitkit(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """timm names -> vitkit names."""
    out = {_rename(k, TIMM_TO_VITKIT): v for k, v in sd.items()}
    pe = out.get("pos_embed")
    if pe is not None and cfg.class_token and pe.shape[1] == cfg.grid[0] * cfg.grid[1]:
        out["pos_embed"] = torch.cat([pe.new_zeros(1, 1, pe.shape[2]), pe], dim=1)  # no_embed_class -> zero row
    return out


def from_vitkit(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """vitkit names -> timm names; returns the notes on anything timm cannot hold."""
    notes, out = [], {}
    for k, v in sd.items():
        if k.startswith("pre_logits."):
            continue
        if cfg.fc_norm and k.startswith("norm."):
            k = "fc_" + k
        out[_rename(k, VITKIT_TO_TIMM)] = v
    if cfg.representation_size:
        notes.append("timm's VisionTransformer has no pre-logits layer: pre_logits dropped")
    if cfg.gelu == "tanh":
        notes.append("timm's VisionTransformer computes the exact GELU, this model its tanh approximation (the official code's): "
                     "timm's logits differ by about 1e-4 of their scale; vitkit reads the file back with the tanh form")
    if cfg.resnet is not None and not cfg.resnet.layers:  # R+ViT-Ti: timm's backbone is the stem itself
        out = {k.replace("patch_embed.backbone.stem.", "patch_embed.backbone."): v for k, v in out.items()}
    return out, notes


# --- the format adapter: a timm state dict in .safetensors, or .pth / .pt / .bin read with weights_only=True -------

NAME = "timm"


def detect_dir(config: dict) -> bool:
    """A directory whose config.json is timm's (pretrained_cfg with "architecture")."""
    return "architecture" in config


def detect_tensors(keys: list[str], meta: dict[str, str], path: Path) -> bool:
    return any(k.startswith("patch_embed.") for k in keys)


def read(p: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str],
         **overrides: Any) -> tuple[ViTConfig, dict[str, torch.Tensor], list[str], list[str] | None]:
    """The architecture inferred from the tensors' shapes (heads from `overrides`, else from the architecture a
    timm directory's config.json names, else the width's usual count); class names from its `label_names`."""
    names = None
    if p.is_dir():
        hub_cfg = hub_config(p)
        pool = {"avg": "gap", "token": "token"}.get(hub_cfg.get("global_pool") or (hub_cfg.get("model_args") or {}).get("global_pool"))
        if pool:
            overrides.setdefault("pool", pool)
        arch = hub_cfg.get("architecture")
        if isinstance(arch, str) and "heads" not in overrides:
            from vitkit.models.registry import model_config, resolve_alias

            try:
                alias = resolve_alias(arch)
            except ValueError:
                alias = None
            if alias is not None:
                overrides["heads"] = model_config(alias.variant).heads
        labels = hub_cfg.get("label_names") or hub_cfg.get("pretrained_cfg", {}).get("label_names")
        names = [str(n) for n in labels] if isinstance(labels, list) else None
    cfg = infer_config(tensors, str(p), **overrides)
    if names is not None and len(names) != cfg.num_classes:
        names = None
    note = read_preprocess(p)[1] if p.is_dir() else None  # a mean / std vitkit cannot follow, said in the report
    return cfg, to_vitkit(tensors, cfg), [note] if note else [], names


def hub_config(p: Path) -> dict:
    """A timm directory's config.json (what timm's push_to_hub writes: architecture, num_classes, pretrained_cfg)."""
    from vitkit.convert.files import CONFIG, read_json

    return read_json(p / CONFIG) if (p / CONFIG).is_file() else {}


def read_preprocess(p: Path) -> tuple[dict | None, str | None]:
    """How a timm directory's pretrained_cfg prepares images for evaluation, as vitkit's Preprocess fields (mean / std as
    a normalisation vitkit knows, crop_pct, interpolation), and a note for what vitkit cannot follow; (None, None)
    without one."""
    from vitkit.convert.hf import normalize_from_hf

    pre = (hub_config(p).get("pretrained_cfg") or {}) if p.is_dir() else {}
    if not isinstance(pre, dict) or not pre:
        return None, None
    out, note = {}, None
    if "mean" in pre and "std" in pre:
        try:
            normalize, note = normalize_from_hf({"image_mean": pre["mean"], "image_std": pre["std"]}, str(p / "config.json"))
        except (TypeError, ValueError):
            normalize, note = None, f"{p / 'config.json'}: unreadable mean / std; normalisation kept as 'google'"
        if normalize:
            out["normalize"] = normalize
    crop = pre.get("crop_pct")
    if isinstance(crop, (int, float)) and 0 < crop <= 1 and pre.get("crop_mode", "center") == "center":
        out["crop_pct"] = float(crop)
    if pre.get("interpolation") in ("bilinear", "bicubic"):
        out["interpolation"] = pre["interpolation"]
    return out or None, note


def write(model: nn.Module, path: Path, info: dict, overwrite: bool) -> None:
    """timm's names in one .safetensors file; vitkit's record rides along in the metadata (timm ignores it)."""
    from safetensors.torch import save_file

    from vitkit.atomic import atomic_path
    from vitkit.convert.files import outside_state, plain

    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: timm checkpoints are written as .safetensors; name the file *.safetensors")
    cfg = model.config
    sd, notes = from_vitkit(outside_state(model), cfg)
    for note in notes:
        warnings.warn(f"{path}: {note}", stacklevel=3)
    if cfg.representation_size:
        info["model"]["representation_size"] = None
    info = {**info, "names": "timm"}  # the record says the tensors carry timm's names, for vitkit's own reader
    with atomic_path(path, overwrite) as tmp:
        save_file(plain(sd), str(tmp), metadata={"format": "pt", "vitkit": json.dumps(info)})
