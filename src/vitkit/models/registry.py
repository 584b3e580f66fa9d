"""Named variants -> configs -> models: "ViT-B/16", "R50+ViT-B/16", "R50x1", "Axial-ViT-B/16", ...; timm's and Hugging Face's names
("vit_base_patch16_224", "google/vit-base-patch16-224") as aliases of them."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from vitkit.models.axial import AXIAL_VARIANTS, AxialResNet, AxialResNetConfig, AxialViTConfig, AxialVisionTransformer
from vitkit.models.resnet import BiTConfig, BiTResNet, ResNetConfig
from vitkit.models.vit import HYBRIDS, PATCH_SIZES, VARIANTS, ViTConfig, VisionTransformer

# BiT ResNet-v2 baselines (Kolesnikov et al. 2020): units per stage and width factors.
BIT_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BIT_NAMES = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")


# --- other libraries' names for the same architectures ------------------------------------------------------------

# timm's (timm.list_models("vit_*"), timm 1.0) -> (vitkit variant, image size, the pretrained tag timm picks without one)
TIMM_NAMES = {
    "vit_tiny_patch16_224": ("ViT-Ti/16", 224, "augreg_in21k_ft_in1k"),
    "vit_tiny_patch16_384": ("ViT-Ti/16", 384, "augreg_in21k_ft_in1k"),
    "vit_small_patch8_224": ("ViT-S/8", 224, "dino"),
    "vit_small_patch16_224": ("ViT-S/16", 224, "augreg_in21k_ft_in1k"),
    "vit_small_patch16_384": ("ViT-S/16", 384, "augreg_in21k_ft_in1k"),
    "vit_small_patch32_224": ("ViT-S/32", 224, "augreg_in21k_ft_in1k"),
    "vit_small_patch32_384": ("ViT-S/32", 384, "augreg_in21k_ft_in1k"),
    "vit_base_patch8_224": ("ViT-B/8", 224, "augreg2_in21k_ft_in1k"),
    "vit_base_patch16_224": ("ViT-B/16", 224, "augreg2_in21k_ft_in1k"),
    "vit_base_patch16_384": ("ViT-B/16", 384, "augreg_in21k_ft_in1k"),
    "vit_base_patch32_224": ("ViT-B/32", 224, "augreg_in21k_ft_in1k"),
    "vit_base_patch32_384": ("ViT-B/32", 384, "augreg_in21k_ft_in1k"),
    "vit_large_patch14_224": ("ViT-L/14", 224, "untrained"),
    "vit_large_patch16_224": ("ViT-L/16", 224, "augreg_in21k_ft_in1k"),
    "vit_large_patch16_384": ("ViT-L/16", 384, "augreg_in21k_ft_in1k"),
    "vit_large_patch32_224": ("ViT-L/32", 224, "orig_in21k"),
    "vit_large_patch32_384": ("ViT-L/32", 384, "orig_in21k_ft_in1k"),
    "vit_huge_patch14_224": ("ViT-H/14", 224, "orig_in21k"),
    "vit_tiny_r_s16_p8_224": ("R+ViT-Ti/16", 224, "augreg_in21k_ft_in1k"),
    "vit_tiny_r_s16_p8_384": ("R+ViT-Ti/16", 384, "augreg_in21k_ft_in1k"),
    "vit_small_r26_s32_224": ("R26+ViT-S/32", 224, "augreg_in21k_ft_in1k"),
    "vit_small_r26_s32_384": ("R26+ViT-S/32", 384, "augreg_in21k_ft_in1k"),
    "vit_base_r26_s32_224": ("R26+ViT-B/32", 224, "untrained"),
    "vit_base_r50_s16_224": ("R50+ViT-B/16", 224, "orig_in21k"),
    "vit_base_r50_s16_384": ("R50+ViT-B/16", 384, "orig_in21k_ft_in1k"),
    "vit_large_r50_s32_224": ("R50+ViT-L/32", 224, "augreg_in21k_ft_in1k"),
    "vit_large_r50_s32_384": ("R50+ViT-L/32", 384, "augreg_in21k_ft_in1k"),
}
# timm's pretrained tags of those names -> the classes of the published head: ImageNet-1k, ImageNet-21k (AugReg kept its
# trained 21843-way head), none (orig_in21k: timm drops Google's zeroed head and pre-logits; DINO, MAE: self-supervised)
TIMM_TAGS = {
    "augreg2_in21k_ft_in1k": 1000, "augreg_in21k_ft_in1k": 1000, "augreg_in1k": 1000, "orig_in21k_ft_in1k": 1000,
    "sam_in1k": 1000, "untrained": 1000, "augreg_in21k": 21843, "bamboo": 115217, "orig_in21k": 0, "dino": 0, "mae": 0,
}
# Google's ViTs on the Hugging Face Hub -> (vitkit variant, image size, classes, pre-logits width). The ImageNet-1k
# fine-tuned ones are ViTForImageClassification; the -in21k ones ViTModel without a classifier ("heads zero'd by
# Google"), whose pooler (Dense + tanh) holds the pre-training pre-logits layer, as `vitkit.load` reads them.
HF_NAMES = {
    "google/vit-base-patch16-224": ("ViT-B/16", 224, 1000, None),
    "google/vit-base-patch16-384": ("ViT-B/16", 384, 1000, None),
    "google/vit-base-patch32-384": ("ViT-B/32", 384, 1000, None),
    "google/vit-large-patch16-224": ("ViT-L/16", 224, 1000, None),
    "google/vit-large-patch16-384": ("ViT-L/16", 384, 1000, None),
    "google/vit-large-patch32-384": ("ViT-L/32", 384, 1000, None),
    "google/vit-base-patch16-224-in21k": ("ViT-B/16", 224, 0, 768),
    "google/vit-base-patch32-224-in21k": ("ViT-B/32", 224, 0, 768),
    "google/vit-large-patch16-224-in21k": ("ViT-L/16", 224, 0, 1024),
    "google/vit-large-patch32-224-in21k": ("ViT-L/32", 224, 0, 1024),
    "google/vit-huge-patch14-224-in21k": ("ViT-H/14", 224, 0, 1280),
}


@dataclass(frozen=True)
class Alias:
    """Another library's name for one of vitkit's variants, with what its published model fixes beyond the variant."""

    variant: str  # vitkit's name, e.g. "ViT-B/16"
    image_size: int
    num_classes: int  # of the published head; 0: none
    representation_size: int | None  # pre-logits width (Hugging Face's in21k pooler), None: none
    library: str  # "timm" or "hf"
    name: str  # the library's name, without a tag
    tag: str | None = None  # timm's pretrained tag, the one given or timm's default (the weights a download would get)

    def defaults(self) -> dict[str, Any]:
        return dict(image_size=self.image_size, num_classes=self.num_classes, representation_size=self.representation_size)


def resolve_alias(name: str) -> Alias | None:
    """The variant a timm name ("vit_base_patch16_224", with an optional ".augreg_in21k" tag or "timm/" prefix, as on
    the Hugging Face Hub) or a Hugging Face name ("google/vit-base-patch16-224") stands for; None for other names."""
    key = name.strip().lower()
    if key in HF_NAMES:
        variant, size, classes, pre_logits = HF_NAMES[key]
        return Alias(variant, size, classes, pre_logits, "hf", key)
    base, dot, tag = key.removeprefix("timm/").partition(".")
    if base not in TIMM_NAMES:
        return None
    variant, size, default_tag = TIMM_NAMES[base]
    tag = tag if dot else default_tag
    if tag not in TIMM_TAGS:
        close = difflib.get_close_matches(tag, list(TIMM_TAGS), n=1)
        hint = f"did you mean {base}.{close[0]}? " if close else ""
        raise ValueError(f"{name!r}: unknown timm pretrained tag {tag!r}; {hint}known tags: {', '.join(TIMM_TAGS)} "
                         f"(or no tag: {base})")
    return Alias(variant, size, TIMM_TAGS[tag], None, "timm", base, tag)


# --- vitkit's names -------------------------------------------------------------------------------------------


def _vit_names() -> list[str]:
    return [f"ViT-{size}/{p}" for size in VARIANTS for p in PATCH_SIZES]


def list_models(pattern: str = "", aliases: bool = False) -> list[str]:
    """Every named variant, in the order `vitkit models` prints them; `pattern` keeps the names it matches as timm's
    list_models does (fnmatch, case-insensitive: "ViT-B*", "*/16", "vit_base*"); `aliases` adds timm's and Hugging
    Face's names that `create_model` also accepts (left out by default, so that each architecture is listed once)."""
    names = _vit_names() + list(HYBRIDS) + list(BIT_NAMES) + list(AXIAL_VARIANTS)
    if aliases:
        names += list(TIMM_NAMES) + list(HF_NAMES)
    return [n for n in names if fnmatch.fnmatch(n.lower(), pattern.lower())] if pattern else names


def _canonical(name: str) -> str:
    """Accept "ViT-B/16", "vit-b/16", "ViT-B_16" (the .npz file names), "B/16", "b16", and the aliases."""
    alias = resolve_alias(name)
    if alias is not None:
        return alias.variant
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
    m = re.fullmatch(r"axial[-/ ]?(?:vit[-/ ]?)?b/?(\d+)", key)  # "axial_vit_b16", "axial-b/16"
    if m and f"axial-vit-b/{m.group(1)}" in table:
        return table[f"axial-vit-b/{m.group(1)}"]
    if re.fullmatch(r"axial[-/ ]?resnet[-/ ]?50", key):  # "axial_resnet50", "axial-resnet-50"
        return "AxialResNet50"
    every = {n.lower(): n for n in list_models(aliases=True)}
    close = [every[k] for k in difflib.get_close_matches(name.strip().lower(), list(every), n=3, cutoff=0.6)]
    near = f" close to it: {', '.join(close)}; all of vitkit's:" if close else ":"
    raise ValueError(f"unknown model {name!r}; valid names{near} {', '.join(list_models())}, and timm's and Hugging Face's "
                     f"names for them (vitkit.list_models(aliases=True))")


IDENTITY_FIELDS = ("patch_size", "width", "depth", "heads", "mlp_dim", "resnet")


ModelConfigs = ViTConfig | BiTConfig | AxialViTConfig | AxialResNetConfig
NAMED = (ViTConfig, AxialViTConfig)  # the configs that record their variant's name


def model_config(name: str, **overrides: Any) -> ModelConfigs:
    """The config of a named variant with `overrides` applied (any field of its config: ViTConfig, BiTConfig,
    AxialViTConfig, AxialResNetConfig). An alias (timm's or
    Hugging Face's name) also sets its published model's image size, classes and pre-logits layer, unless overridden."""
    alias = resolve_alias(name)
    canon = alias.variant if alias else _canonical(name)
    if canon in BIT_NAMES:
        depth, width = (int(v) for v in re.fullmatch(r"R(\d+)x(\d+)", canon).groups())
        base: dict[str, Any] = dict(layers=BIT_DEPTHS[depth], width_factor=width)
        cls = BiTConfig
    elif canon in AXIAL_VARIANTS:
        cls, base = AXIAL_VARIANTS[canon]
        base = dict(base)
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
    base.update(alias.defaults() if alias else {})
    base.update(overrides)
    if cls in NAMED and "name" not in overrides:
        base["name"] = canon if not changed else f"{canon}, modified ({', '.join(f'{k}={v}' for k, v in changed.items())})"
    return cls(**base)


def config_to_dict(cfg: ModelConfigs) -> dict[str, Any]:
    """A JSON-ready dict of a model config (the inverse of `config_from_dict`)."""
    if hasattr(cfg, "to_dict"):  # ViT, Axial-ViT, and a model with a head on one (heads/)
        return cfg.to_dict()
    d = dataclasses.asdict(cfg)
    d["layers"] = list(d["layers"])
    if isinstance(d.get("image_size"), tuple):
        d["image_size"] = list(d["image_size"])
    return d


# arch (a config's record of its kind) -> (config, model, what it is called in errors)
ARCHS = {"vit": (ViTConfig, VisionTransformer, "ViT"), "bit": (BiTConfig, BiTResNet, "BiT"),
         "axial_vit": (AxialViTConfig, AxialVisionTransformer, "Axial-ViT"),
         "axial_resnet": (AxialResNetConfig, AxialResNet, "AxialResNet")}


# Models that put a head on one of these encoders, defined outside models/: arch -> the module, which adds itself to
# ARCHS when imported (on reading a record that names it)
HEADED = {"segmentation": "vitkit.heads.segmentation", "detection": "vitkit.heads.detection",
          "multitask": "vitkit.heads.multitask"}


def config_from_dict(d: dict[str, Any]) -> ModelConfigs:
    arch = d.get("arch", "vit")
    if arch in HEADED and arch not in ARCHS:
        importlib.import_module(HEADED[arch])
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; vitkit builds {', '.join(repr(a) for a in ARCHS)}")
    cls, _, what = ARCHS[arch]
    if hasattr(cls, "from_dict"):
        return cls.from_dict(d)
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(d) - valid)
    if bad:
        raise ValueError(f"unknown {what} config keys {bad}; valid keys: {sorted(valid)}")
    return cls(**{**d, "layers": tuple(d.get("layers", cls.layers))})


def build_model(cfg: ModelConfigs) -> nn.Module:
    """A model from its config (the inverse of `model.config`)."""
    for cls, model, _ in ARCHS.values():
        if type(cfg) is cls:
            return model(cfg)
    raise TypeError(f"build_model: {type(cfg).__name__} is not a model config; give one of "
                    f"{', '.join(c.__name__ for c, _, _ in ARCHS.values())}")


def create_model(
    name: str,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    pretrained: bool | str = False,
    **overrides: Any,
) -> nn.Module:
    """A freshly initialised model by name: `create_model("ViT-B/16", num_classes=10, image_size=384)`, or by timm's or
    Hugging Face's name (`create_model("vit_base_patch16_384")`, `create_model("google/vit-base-patch16-224")`): the
    same architecture at the published model's size and classes, which the arguments given here still override.

    `overrides` set any architecture option (width, depth, pool="gap", posemb="sincos2d", ...).

    `pretrained=True` loads published weights instead, as timm's `create_model` does: those the name stands for (timm's
    "MODEL.TAG" or MODEL with timm's default tag, Hugging Face's "ORG/NAME", "hf-hub:...", "google:..."), or for one of
    vitkit's names the checkpoint `vitkit.hub.default_for` picks (the paper's ImageNet-21k -> ImageNet-1k file where
    there is one: `vitkit models --pretrained` marks them); a string names the weights to load. `num_classes` other
    than the file's gives a new zero-initialised head, `image_size` resamples the position embeddings.
    """
    if pretrained:
        from vitkit import hub
        from vitkit.convert.load import load

        if in_chans is not None:
            raise ValueError(f"create_model({name!r}, pretrained=...): published weights take the channels they were trained "
                             f"on; in_chans= is for models trained from scratch")
        size = image_size if isinstance(image_size, int) else None
        src = pretrained if isinstance(pretrained, str) else name if hub.is_name(name) else hub.default_for(_canonical(name), size)
        model = load(src, num_classes, image_size, **overrides).model
        if isinstance(pretrained, str) and not hub.is_name(name):
            want, got = model_config(name), model.config
            if type(want) is not type(got) or any(getattr(want, f, None) != getattr(got, f, None)
                                                  for f in ("patch_size", "width", "depth", "layers", "width_factor")):
                raise ValueError(f"create_model({name!r}, pretrained={pretrained!r}): the weights are a "
                                 f"{getattr(got, 'name', None) or type(model).__name__}, not a {_canonical(name)}; name the "
                                 f"architecture they hold, or leave pretrained=True for {name}'s own")
        return model
    for key, val in (("num_classes", num_classes), ("image_size", image_size), ("in_chans", in_chans)):
        if val is not None:
            overrides[key] = val
    return build_model(model_config(name, **overrides))


def count_params(model: nn.Module) -> int:
    """Learned parameters (fixed buffers such as a sin-cos table are not counted)."""
    return sum(p.numel() for p in model.parameters())


def _forward_flops(model: nn.Module) -> int:
    """FLOPs of one image's forward pass at the model's size (a model on the meta device: nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    h, w = (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else cfg.image_size
    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter, torch.no_grad():
        model.eval()(torch.empty(1, cfg.in_chans, h, w))
    return counter.get_total_flops()


def _by_depth(cfg: Any) -> bool:
    """A transformer (ViT, hybrid, Axial-ViT): FLOPs affine in the depth, counted on one and two blocks."""
    return isinstance(cfg, NAMED) and cfg.depth > 2


def train_flops(cfg: ModelConfigs, image_size: int | None = None) -> int:
    """FLOPs of one training step's forward and backward pass for one image (the model in training mode, a loss that
    sums its outputs), counted by torch's FlopCounterMode on the meta device (nothing is computed) at `image_size`
    (default: the config's). A ViT's (and an Axial-ViT's) are affine in its depth: counted on one and two blocks and
    extrapolated."""
    from torch.utils.flop_counter import FlopCounterMode

    if image_size is not None:
        cfg = dataclasses.replace(cfg, image_size=image_size)

    def count(c: ModelConfigs) -> int:
        h, w = (c.image_size, c.image_size) if isinstance(c.image_size, int) else c.image_size
        counter = FlopCounterMode(display=False)
        with torch.device("meta"):
            model = build_model(c).train()
            with counter:
                model(torch.empty(1, c.in_chans, h, w)).sum().backward()
        return counter.get_total_flops()

    if _by_depth(cfg):
        one, two = count(dataclasses.replace(cfg, depth=1)), count(dataclasses.replace(cfg, depth=2))
        return one + (cfg.depth - 1) * (two - one)
    return count(cfg)


def describe(name: str, **overrides: Any) -> dict[str, Any]:
    """Parameters and forward FLOPs of one image at the variant's default size, without allocating
    weights (the model is built on the meta device). A ViT's FLOPs are affine in its depth: counted on one and two
    blocks and extrapolated (a counted forward costs about 10 ms a block on the meta device)."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
        cfg = model.config
        if _by_depth(cfg):
            one, two = (_forward_flops(create_model(name, **{**overrides, "depth": d})) for d in (1, 2))
            flops = one + (cfg.depth - 1) * (two - one)
        else:
            flops = _forward_flops(model)
    return {
        "name": _canonical(name),
        "params": count_params(model),
        "image_size": cfg.image_size,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
    }
