"""Hugging Face transformers `ViTModel` / `ViTForImageClassification` <-> vitkit; the Hugging Face format's adapter
(a directory with config.json and model.safetensors or pytorch_model.bin: detect / read / write).

On disk (every transformers version, 5.x included) the names are the legacy ones: separate
query/key/value linears, `attention.output.dense`, `intermediate.dense`, `output.dense`. transformers
5 renames them in memory only (q_proj, o_proj, mlp.fc1); both are read here, the legacy ones written.

Beside them goes preprocessor_config.json, the `ViTImageProcessor` settings that prepare images as vitkit's evaluation
does (`Preprocess.eval_transform`), so that `transformers.pipeline("image-classification", model=DIR)` and
`AutoImageProcessor.from_pretrained(DIR)` work on an export; reading a directory, its mean / std give the normalisation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitkit.config import check_number
from vitkit.convert.common import CheckpointError
from vitkit.data.preprocess import Preprocess
from vitkit.models.vit import ViTConfig

EMBED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pooler.dense.weight": "pre_logits.0.weight",
    "pooler.dense.bias": "pre_logits.0.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
# per layer: HF (legacy, on disk) -> vitkit; q/k/v are fused into attn.qkv separately
LAYER = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
# transformers 5 in-memory names -> the legacy ones
V5_NAMES = [
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def _legacy(key: str) -> str:
    key = key[4:] if key.startswith("vit.") else key
    for pattern, repl in V5_NAMES:
        key = re.sub(pattern, repl, key)
    return key


# config.json's architecture keys -> (ViTConfig field, transformers' default)
HF_CONFIG = {
    "image_size": ("image_size", 224), "patch_size": ("patch_size", 16), "num_channels": ("in_chans", 3),
    "hidden_size": ("width", 768), "num_hidden_layers": ("depth", 12), "num_attention_heads": ("heads", 12),
    "intermediate_size": ("mlp_dim", 3072), "layer_norm_eps": ("ln_eps", 1e-12), "qkv_bias": ("qkv_bias", True),
    "hidden_dropout_prob": ("dropout", 0.0), "attention_probs_dropout_prob": ("attn_dropout", 0.0),
}


def _hf_value(hf: dict, key: str, field: str, default: Any, source: str) -> Any:
    """config.json's `key` (or transformers' default), of the type and in the range of ViTConfig's `field`, else
    CheckpointError naming the file and the key."""
    from vitkit.models.vit import FLAGS, NUMBERS, check_image_size

    value = hf.get(key, default)
    try:
        if field == "image_size":
            check_image_size(value)
        elif field in NUMBERS:
            check_number(key, value, *NUMBERS[field])
        elif field in FLAGS and not isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: must be true or false")
    except ValueError as err:
        raise CheckpointError(f"{source}: config.json {err}") from None
    return value


# transformers' activations (ACT2FN) that are GELU -> vitkit's ViTConfig.gelu: erf, or the tanh approximation
HF_GELUS = {"gelu": "exact", "gelu_python": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


def config_from_hf(hf: dict, source: str, **overrides) -> ViTConfig:
    """Honour the HF config: sizes, layer_norm_eps, qkv_bias, channels, dropouts, labels; a value of the wrong type or
    out of range is a CheckpointError naming the file and the key."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source}: config.json holds a JSON {type(hf).__name__}, not the object of a transformers config")
    if hf.get("model_type", "vit") != "vit":
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not a plain ViT ('vit'); vitkit reads ViT checkpoints only")
    act = hf.get("hidden_act", "gelu")
    if act not in HF_GELUS:
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported; vitkit's MLP computes GELU, exact ('gelu') or its "
                              f"tanh approximation ({', '.join(repr(a) for a, g in HF_GELUS.items() if g == 'tanh')})")
    labels = hf.get("id2label") or {}
    if not isinstance(labels, dict):
        raise CheckpointError(f"{source}: config.json id2label={labels!r}: must be an object of class index -> name")
    cfg = {field: _hf_value(hf, key, field, default, source) for key, (field, default) in HF_CONFIG.items()}
    cfg.update(num_classes=len(labels), pool="token", class_token=True, gelu=HF_GELUS[act])
    cfg.update(overrides)
    try:
        return ViTConfig(**cfg)
    except ValueError as err:
        raise CheckpointError(f"{source}: config.json describes no ViT vitkit builds ({err})") from None


def class_names_from_hf(hf: dict) -> list[str] | None:
    labels = hf.get("id2label")
    if not labels:
        return None
    return [str(labels.get(str(i), labels.get(i))) for i in range(len(labels))]


def to_vitkit(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """HF names (legacy or transformers 5, with or without the `vit.` prefix) -> vitkit names.

    A config without labels (transformers 5 writes no id2label for its default num_labels=2) leaves
    `cfg.num_classes` at 0; a classifier in the tensors then sets it from its shape, in place."""
    legacy = {_legacy(k): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in legacy.items():
        if key in EMBED:
            out[EMBED[key]] = value
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m and m.group(2) in LAYER:
            out[f"blocks.{m.group(1)}.{LAYER[m.group(2)]}.{m.group(3)}"] = value
        elif m and m.group(2) in QKV:
            continue  # fused below
        else:
            out[key] = value  # reported as unexpected by the loader
    for i in range(cfg.depth):
        for kind in ("weight", "bias"):
            parts = [legacy.get(f"encoder.layer.{i}.{name}.{kind}") for name in QKV]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    if not cfg.num_classes and "head.weight" in out:
        cfg.num_classes = out["head.weight"].shape[0]
    return out


def check_holds(cfg: ViTConfig) -> None:
    """Refuse, naming the field, what transformers' ViT cannot compute, and say which formats hold it instead.

    What it can: a fixed sin-cos or no position embedding (written as a table: files.outside_state), a class-token model
    with fc_norm (LayerNorm acts on each token alone, so normalising the class token after pooling, as vitkit does,
    equals normalising every token before, as transformers does), a pre-logits layer without a head (the pooler)."""
    if cfg.resnet is not None:
        raise CheckpointError("Hugging Face's ViT has no hybrid (ResNet) stem; save hybrids as vitkit, timm or npz")
    if cfg.pool == "gap":
        # .npz: its GAP files have neither a class token nor fc_norm (with a class token it reads token pooling)
        others = "vitkit, timm or npz" if not cfg.class_token and not cfg.fc_norm else "vitkit or timm"
        raise CheckpointError("Hugging Face's ViT has no global-average-pooling head (pool='gap'): it classifies from the class "
                              f"token, so a GAP model cannot be written in its format; save it as {others} instead "
                              "(vitkit convert SRC OUT.safetensors --to timm)")
    if cfg.representation_size and cfg.num_classes:
        raise CheckpointError("Hugging Face's ViTForImageClassification has no pre-logits layer; load with drop_pre_logits=True "
                              "or save with num_classes=0 (a ViTModel whose pooler holds it), or keep "
                              f"representation_size={cfg.representation_size} as vitkit or npz (vitkit convert SRC OUT.npz --to npz)")


def from_vitkit(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """vitkit names -> HF legacy names, laid out as ViTForImageClassification (or ViTModel when there
    is no head, with the pre-logits layer as its pooler)."""
    check_holds(cfg)
    prefix = "vit." if cfg.num_classes else ""
    inv_embed = {v: k for k, v in EMBED.items()}
    inv_layer = {v: k for k, v in LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in ("head.weight", "head.bias"):
            out[inv_embed[key]] = value
        elif key in inv_embed:
            out[prefix + inv_embed[key]] = value
        else:
            m = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
            if m and m.group(2) == "attn.qkv":
                for name, part in zip(QKV, value.chunk(3, dim=0)):
                    out[f"{prefix}encoder.layer.{m.group(1)}.{name}.{m.group(3)}"] = part.contiguous()
            elif m and m.group(2) in inv_layer:
                out[f"{prefix}encoder.layer.{m.group(1)}.{inv_layer[m.group(2)]}.{m.group(3)}"] = value
            else:
                raise CheckpointError(f"tensor {key!r} has no place in a Hugging Face ViT")
    return out


def config_to_hf(cfg: ViTConfig, class_names: list[str] | None = None) -> dict:
    h, w = (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else cfg.image_size
    if h != w:
        raise CheckpointError(f"Hugging Face's ViTConfig holds one image_size; {cfg.image_size} is not square")
    names = class_names or [f"LABEL_{i}" for i in range(cfg.num_classes)]
    return {
        "architectures": ["ViTForImageClassification" if cfg.num_classes else "ViTModel"],
        "model_type": "vit",
        "hidden_size": cfg.width, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.mlp_dim, "hidden_act": "gelu_pytorch_tanh" if cfg.gelu == "tanh" else "gelu",
        "layer_norm_eps": cfg.ln_eps,
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "image_size": h, "patch_size": cfg.patch_size, "num_channels": cfg.in_chans, "qkv_bias": cfg.qkv_bias,
        "encoder_stride": cfg.patch_size, "initializer_range": 0.02,
        "pooler_output_size": cfg.representation_size or cfg.width, "pooler_act": "tanh",
        "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
    }


# --- preprocessor_config.json ------------------------------------------------------------------------------------

PREPROCESSOR = "preprocessor_config.json"
# PIL.Image.Resampling.BILINEAR, the code transformers' "resample" holds; its torchvision backend then resizes with
# antialiasing, as Preprocess.eval_transform does
PIL_BILINEAR = 2


def preprocessor_to_hf(prep: Preprocess) -> dict:
    """A `ViTImageProcessor` that prepares images as `prep.eval_transform()` does: the whole image resized to the
    model's size (bilinear, no crop), scaled to [0, 1], normalised with `prep.mean_std()`, one value per channel.
    A 1-channel model gets 1-value mean / std and no RGB conversion: transformers' processor and pipeline then take
    grayscale arrays (H, W, 1); the pipeline makes image files RGB, which such a model refuses."""
    h, w = prep.image_size
    mean, std = prep.mean_std()
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_convert_rgb": prep.in_chans == 3,  # grayscale and palette images to RGB, as vitkit's image loader does
        "do_resize": True, "size": {"height": h, "width": w}, "resample": PIL_BILINEAR,
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(mean), "image_std": list(std),
    }


def normalize_from_hf(proc: dict, source: str) -> tuple[str | None, str | None]:
    """(vitkit's normalisation, None) when a preprocessor_config.json's mean / std are one of vitkit's
    (data.transforms.NORMALIZATIONS, to 1e-4), else (None, a note for the loading report). Absent fields mean
    ViTImageProcessor's defaults: rescale by 1/255, normalise with 0.5 / 0.5 (Google's)."""
    from vitkit.data.transforms import NORMALIZATIONS, norm_stats

    if not proc.get("do_rescale", True) or abs(float(proc.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        return None, f"{source}: pixels are not scaled by 1/255 (do_rescale, rescale_factor); normalisation kept as 'google'"
    if not proc.get("do_normalize", True):
        return None, f"{source}: do_normalize is false, which no vitkit normalisation is; normalisation kept as 'google'"

    def values(key: str) -> list[float]:
        v = proc.get(key, 0.5)
        return [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]

    mean, std = values("image_mean"), values("image_std")
    for kind in NORMALIZATIONS:
        ref = norm_stats(kind, len(mean))
        if len(std) == len(mean) and all(abs(a - b) <= 1e-4 for a, b in zip(mean + std, ref[0] + ref[1])):
            return kind, None
    return None, (f"{source}: image_mean {mean} / image_std {std} are not a normalisation vitkit knows (Google's 0.5 / 0.5, "
                  f"ImageNet's); normalisation kept as 'google' (eval --normalize, predict(normalize=...) choose another)")


def read_normalize(p: Path) -> tuple[str | None, str | None]:
    """`normalize_from_hf` of the preprocessor_config.json beside a Hugging Face checkpoint (read as JSON only);
    (None, None) without one. A broken file is a note, not an error: the weights load without it."""
    from vitkit.convert.files import read_json

    path = (p if p.is_dir() else p.parent) / PREPROCESSOR
    if not path.is_file():
        return None, None
    try:
        proc = read_json(path)
        return normalize_from_hf(proc, str(path))
    except CheckpointError as err:
        return None, f"{err}; normalisation kept as 'google'"
    except (TypeError, ValueError) as err:  # a mean / std / rescale_factor that is not numbers
        return None, f"{path}: unreadable settings ({err}); normalisation kept as 'google'"


# --- the format adapter -----------------------------------------------------------------------------------------

NAME = "hf"
PREFIXES = ("vit.", "embeddings.", "encoder.layer.", "layers.")


def detect_dir(config: dict) -> bool:
    """A directory whose config.json is transformers' (it names a model_type)."""
    return isinstance(config, dict) and "model_type" in config


def detect_tensors(keys: list[str], meta: dict[str, str], path: Path) -> bool:
    """transformers' tensor names, or (a .safetensors file of neither timm's nor these names) a transformers
    config.json beside the file."""
    from vitkit.convert.files import CONFIG, read_json

    if any(k.startswith(PREFIXES) for k in keys):
        return True
    if path.suffix != ".safetensors" or any(k.startswith("patch_embed.") for k in keys):
        return False
    beside = path.parent / CONFIG
    if not beside.exists():
        return False
    config = read_json(beside)
    return isinstance(config, dict) and "model_type" in config


def read(p: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str],
         **overrides: Any) -> tuple[ViTConfig, dict[str, torch.Tensor], list[str], list[str] | None]:
    """The architecture from config.json (beside the weights), the pooler as the pre-logits layer, the labels; a note
    when preprocessor_config.json normalises as vitkit cannot (the normalisation it can: load.read_preprocess)."""
    from vitkit.convert.files import CONFIG, read_json

    notes: list[str] = []
    cfg_path = (p if p.is_dir() else p.parent) / CONFIG
    if not cfg_path.exists():
        raise CheckpointError(f"{p}: a Hugging Face checkpoint needs its {CONFIG} beside the weights")
    hf_cfg = read_json(cfg_path)
    legacy = {_legacy(k) for k in tensors}
    if "pooler.dense.weight" in legacy:
        overrides.setdefault("representation_size", hf_cfg.get("pooler_output_size") or hf_cfg.get("hidden_size", 768))
        notes.append("ViTModel pooler (Dense + tanh) loaded as the pre-logits layer")
    if "classifier.weight" not in legacy:
        overrides.setdefault("num_classes", 0)
    note = read_normalize(p)[1]
    if note:
        notes.append(note)
    cfg = config_from_hf(hf_cfg, str(p), **overrides)
    return cfg, to_vitkit(tensors, cfg), notes, class_names_from_hf(hf_cfg)


def write(model: nn.Module, path: Path, info: dict, overwrite: bool) -> None:
    """A directory transformers' from_pretrained and pipeline read: model.safetensors (legacy names), config.json and
    preprocessor_config.json (the model's size, `info["preprocess"]`'s normalisation)."""
    from safetensors.torch import save_file

    from vitkit.atomic import atomic_path
    from vitkit.convert.files import CONFIG, WEIGHTS, outside_state, plain

    cfg = model.config
    sd = from_vitkit(outside_state(model), cfg)
    processor = preprocessor_to_hf(Preprocess.of(model, info.get("preprocess")))
    with atomic_path(path, overwrite) as tmp:
        tmp.mkdir()
        save_file(plain(sd), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config_to_hf(cfg, info.get("class_names")), indent=2))
        (tmp / PREPROCESSOR).write_text(json.dumps(processor, indent=2))
