"""Named variants -> configs -> models: "ViT-B/16", "R50+ViT-B/16", "R50x1", ..."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
import torch.nn as nn

from vitkit.models.resnet import BiTConfig, BiTResNet, ResNetConfig
from vitkit.models.vit import HYBRIDS, PATCH_SIZES, VARIANTS, ViTConfig, VisionTransformer

# BiT ResNet-v2 baselines (Kolesnikov et al. 2020): units per stage and width factors.
BIT_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BIT_NAMES = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")


def _vit_names() -> list[str]:
    return [f"ViT-{size}/{p}" for size in VARIANTS for p in PATCH_SIZES]


def list_models() -> list[str]:
    """Every named variant, in the order `vitkit models` prints them."""
    return _vit_names() + list(HYBRIDS) + list(BIT_NAMES)


def _canonical(name: str) -> str:
    """Accept "ViT-B/16", "vit-b/16", "ViT-B_16" (the .npz file names), "B/16", "b16"."""
    key = name.strip().replace("_", "/").lower()
    table = {n.lower(): n for n in list_models()}
    if key in table:
        return table[key]
    m = re.fullmatch(r"(?:vit-?)?(ti|s|b|l|h)/?(\d+)", key)
    if m:
        cand = f"vit-{m.group(1)}/{m.group(2)}"
        if cand in table:
            return table[cand]
    m = re.fullmatch(r"(?:bit-?)?r(\d+)x(\d+)", key)
    if m and f"r{m.group(1)}x{m.group(2)}" in table:
        return table[f"r{m.group(1)}x{m.group(2)}"]
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")


IDENTITY_FIELDS = ("patch_size", "width", "depth", "heads", "mlp_dim", "resnet")


def model_config(name: str, **overrides: Any) -> ViTConfig | BiTConfig:
    """The config of a named variant with `overrides` applied (any ViTConfig / BiTConfig field)."""
    canon = _canonical(name)
    if canon in BIT_NAMES:
        depth, width = (int(v) for v in re.fullmatch(r"R(\d+)x(\d+)", canon).groups())
        base: dict[str, Any] = dict(layers=BIT_DEPTHS[depth], width_factor=width)
        cls = BiTConfig
    elif canon in HYBRIDS:
        size, patch, layers = HYBRIDS[canon]
        base = dict(VARIANTS[size], patch_size=patch, resnet=ResNetConfig(layers=layers))
        cls = ViTConfig
    else:
        size, patch = re.fullmatch(r"ViT-(\w+)/(\d+)", canon).groups()
        base = dict(VARIANTS[size], patch_size=int(patch))
        cls = ViTConfig
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"{canon}: unknown option(s) {bad}; valid options: {sorted(valid - {'arch'})}")
    # the fields that make a variant what it is: a model with other values is not recorded under its name
    changed = {k: v for k, v in overrides.items() if k in IDENTITY_FIELDS and k in base and base[k] != v}
    base.update(overrides)
    if cls is ViTConfig and "name" not in overrides:
        base["name"] = canon if not changed else f"{canon}, modified ({', '.join(f'{k}={v}' for k, v in changed.items())})"
    return cls(**base)


def config_to_dict(cfg: ViTConfig | BiTConfig) -> dict[str, Any]:
    """A JSON-ready dict of a model config (the inverse of `config_from_dict`)."""
    if isinstance(cfg, ViTConfig):
        return cfg.to_dict()
    d = dataclasses.asdict(cfg)
    d["layers"] = list(d["layers"])
    return d


def config_from_dict(d: dict[str, Any]) -> ViTConfig | BiTConfig:
    arch = d.get("arch", "vit")
    if arch == "bit":
        valid = {f.name for f in dataclasses.fields(BiTConfig)}
        bad = sorted(set(d) - valid)
        if bad:
            raise ValueError(f"unknown BiT config keys {bad}; valid keys: {sorted(valid)}")
        return BiTConfig(**{**d, "layers": tuple(d.get("layers", BiTConfig.layers))})
    if arch != "vit":
        raise ValueError(f"unknown architecture {arch!r}; vitkit builds 'vit' (ViT and hybrids) and 'bit'")
    return ViTConfig.from_dict(d)


def build_model(cfg: ViTConfig | BiTConfig) -> nn.Module:
    """A model from its config (the inverse of `model.config`)."""
    return BiTResNet(cfg) if isinstance(cfg, BiTConfig) else VisionTransformer(cfg)


def create_model(
    name: str,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """A freshly initialised model by name: `create_model("ViT-B/16", num_classes=10, image_size=384)`.

    `overrides` set any architecture option (width, depth, pool="gap", posemb="sincos2d", ...).
    """
    for key, val in (("num_classes", num_classes), ("image_size", image_size), ("in_chans", in_chans)):
        if val is not None:
            overrides[key] = val
    return build_model(model_config(name, **overrides))


def count_params(model: nn.Module) -> int:
    """Learned parameters (fixed buffers such as a sin-cos table are not counted)."""
    return sum(p.numel() for p in model.parameters())


def describe(name: str, **overrides: Any) -> dict[str, Any]:
    """Parameters and forward FLOPs of one image at the variant's default size, without allocating
    weights (the model is built on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model(name, **overrides)
        cfg = model.config
        h, w = (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else cfg.image_size
        x = torch.empty(1, cfg.in_chans, h, w)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(x)
    flops = counter.get_total_flops()
    return {
        "name": _canonical(name),
        "params": count_params(model),
        "image_size": cfg.image_size,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
    }
