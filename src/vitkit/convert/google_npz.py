"""Google .npz checkpoints (the paper's vit_jax releases, AugReg, big_vision) <-> vitkit; the .npz format's adapter.

Keys are Flax parameter paths joined by "/"; kernels are input-major (HWIO convs, (in, out) dense,
(D, heads, head_dim) attention). Two block naming schemes exist (vit_jax and big_vision), big_vision may
"scan" the blocks into one set of tensors with a leading depth axis, and files may carry a prefix.
Written files use the vit_jax scheme, unscanned and unprefixed: what timm's `_load_weights` reads.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitkit.convert.common import CheckpointError
from vitkit.models.resnet import ResNetConfig
from vitkit.models.vit import ViTConfig

PREFIXES = ("opt/target/", "params/img/", "params/", "")

# Per-block tensors: scheme -> {suffix under the block: vitkit name under blocks.{i}.}
VIT_JAX_BLOCK = {
    "LayerNorm_0/scale": "norm1.weight", "LayerNorm_0/bias": "norm1.bias",
    "LayerNorm_2/scale": "norm2.weight", "LayerNorm_2/bias": "norm2.bias",
    "MlpBlock_3/Dense_0/kernel": "mlp.fc1.weight", "MlpBlock_3/Dense_0/bias": "mlp.fc1.bias",
    "MlpBlock_3/Dense_1/kernel": "mlp.fc2.weight", "MlpBlock_3/Dense_1/bias": "mlp.fc2.bias",
    "MultiHeadDotProductAttention_1/out/kernel": "attn.proj.weight",
    "MultiHeadDotProductAttention_1/out/bias": "attn.proj.bias",
}
BIG_VISION_BLOCK = {
    k.replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0").replace("Attention_1", "Attention_0"): v
    for k, v in VIT_JAX_BLOCK.items()
}
TOP = {
    "embedding/kernel": "patch_embed.proj.weight", "embedding/bias": "patch_embed.proj.bias",
    "Transformer/encoder_norm/scale": "norm.weight", "Transformer/encoder_norm/bias": "norm.bias",
    "pre_logits/kernel": "pre_logits.0.weight", "pre_logits/bias": "pre_logits.0.bias",
    "head/kernel": "head.weight", "head/bias": "head.bias",
    "conv_root/kernel": "patch_embed.backbone.conv_root.weight",
    "gn_root/scale": "patch_embed.backbone.gn_root.weight", "gn_root/bias": "patch_embed.backbone.gn_root.bias",
}
UNIT = {  # hybrid ResNet unit: npz name -> vitkit name under patch_embed.backbone.stages.{s}.{u}.
    **{f"conv{r}/kernel": f"conv{r}.weight" for r in (1, 2, 3)},
    **{f"gn{r}/scale": f"gn{r}.weight" for r in (1, 2, 3)},
    **{f"gn{r}/bias": f"gn{r}.bias" for r in (1, 2, 3)},
    "conv_proj/kernel": "conv_proj.weight", "gn_proj/scale": "gn_proj.weight", "gn_proj/bias": "gn_proj.bias",
}


def read_npz(path: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz, never unpickling (allow_pickle=False)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable .npz archive ({err}); is the file complete? re-download or re-export it") from err


def _prefix(w: dict[str, np.ndarray], source: str) -> str:
    for p in PREFIXES:
        if f"{p}embedding/kernel" in w:
            return p
    raise CheckpointError(f"{source}: no 'embedding/kernel' under any known prefix {PREFIXES[:-1]}: not a ViT .npz checkpoint")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def _conv(k: np.ndarray) -> torch.Tensor:
    return _t(k.transpose(3, 2, 0, 1))  # HWIO -> OIHW


def _vec(a: np.ndarray) -> torch.Tensor:
    return _t(a.reshape(-1))  # old GN scales are stored (1, 1, 1, C)


def to_vitkit(w: dict[str, np.ndarray], source: str, **overrides) -> tuple[ViTConfig, dict[str, torch.Tensor], list[str]]:
    """Read a Google .npz dict: returns the inferred config, vitkit-named tensors and notes."""
    p = _prefix(w, source)
    w = {k[len(p):]: v for k, v in w.items() if k.startswith(p)}
    notes = [f"prefix {p!r}"] if p else []
    if any(k.startswith("MAPHead_0/") for k in w):
        raise CheckpointError(f"{source}: a MAP-head (attention pooling) checkpoint; vitkit supports class-token and GAP heads only")
    scanned = "Transformer/encoderblock/LayerNorm_0/scale" in w
    # Block children: the released files' names (flax.nn's global numbering: LayerNorm_0, MultiHeadDotProductAttention_1,
    # LayerNorm_2, MlpBlock_3), or flax.linen's per-class numbering (..._0, LayerNorm_1, MlpBlock_0) that big_vision and
    # today's vit_jax write (vit_jax renames old files on loading: flax's convert_pre_linen), whatever the top level is.
    first = "Transformer/encoderblock/" if scanned else "Transformer/encoderblock_0/"
    children = sorted({k[len(first):].split("/")[0] for k in w if k.startswith(first)})
    if "MultiHeadDotProductAttention_0" in children:
        linen = True
    elif "MultiHeadDotProductAttention_1" in children or not children:
        linen = False
    else:
        raise CheckpointError(f"{source}: its encoder blocks hold {children} under {first!r}: neither the released files' "
                              f"names (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) nor flax.linen's "
                              f"(LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0)")
    block_map = BIG_VISION_BLOCK if linen else VIT_JAX_BLOCK
    mha = "MultiHeadDotProductAttention_0" if linen else "MultiHeadDotProductAttention_1"
    missing = sorted({k.split("/")[0] for k in block_map} - set(children)) if children else []
    if missing:
        raise CheckpointError(f"{source}: its encoder blocks hold {children} under {first!r}, without {missing}: not a "
                              f"layout vitkit knows (the released files', flax.linen's or big_vision's)")
    used: set[str] = set()  # every array read; the rest is reported as unexpected

    def take(key: str) -> np.ndarray:
        used.add(key)
        return w[key]

    if scanned:
        depth = w["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        notes.append(f"scanned blocks (depth {depth}) unstacked")
        block = lambda i, name: take(f"Transformer/encoderblock/{name}")[i]  # noqa: E731
    else:
        depth = len({m.group(1) for k in w if (m := re.match(r"^Transformer/encoderblock_(\d+)/", k))})
        block = lambda i, name: take(f"Transformer/encoderblock_{i}/{name}")  # noqa: E731
    notes.append(("big_vision naming" if "pos_embedding" in w or scanned else "flax.linen naming") if linen else "vit_jax naming")
    has_qkv_bias = f"Transformer/encoderblock{'' if scanned else '_0'}/{mha}/query/bias" in w

    out: dict[str, torch.Tensor] = {}
    emb = w["embedding/kernel"]  # (p, p, C, D)
    width, patch, in_chans = emb.shape[3], emb.shape[0], emb.shape[2]
    resnet, stride = None, 1
    if "conv_root/kernel" in w:
        units: dict[int, set[int]] = {}
        for k in w:
            if m := re.match(r"^block(\d+)/unit(\d+)/", k):
                units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        resnet = ResNetConfig(layers=tuple(len(units[s]) for s in sorted(units)), width_factor=w["conv_root/kernel"].shape[3] // 64)
        in_chans, stride = w["conv_root/kernel"].shape[2], resnet.stride
        for k, v in w.items():
            if m := re.match(r"^block(\d+)/unit(\d+)/(.+)$", k):
                name = UNIT.get(m.group(3))
                if name is None:
                    continue  # unexpected
                used.add(k)
                key = f"patch_embed.backbone.stages.{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.{name}"
                out[key] = _conv(v) if v.ndim == 4 and "kernel" in k else _vec(v)
    for k, name in TOP.items():
        if k in w:
            v = take(k)
            out[name] = _conv(v) if v.ndim == 4 and k.endswith("kernel") else (_t(v.T) if v.ndim == 2 else _vec(v))
    heads = 1
    for i in range(depth):
        for k, name in block_map.items():
            v = block(i, k)
            if name == "attn.proj.weight":
                v = v.reshape(-1, v.shape[-1]).T  # (h, d, D) -> (D, h*d)
            elif v.ndim == 2:
                v = v.T  # (in, out) -> (out, in)
            out[f"blocks.{i}.{name}"] = _t(v)
        q, k_, v_ = (block(i, f"{mha}/{n}/kernel") for n in ("query", "key", "value"))  # each (D, h, d)
        heads = q.shape[1]
        out[f"blocks.{i}.attn.qkv.weight"] = _t(np.concatenate([a.reshape(width, -1).T for a in (q, k_, v_)], 0))
        if has_qkv_bias:
            out[f"blocks.{i}.attn.qkv.bias"] = _t(np.concatenate([block(i, f"{mha}/{n}/bias").reshape(-1) for n in ("query", "key", "value")]))

    class_token = "cls" in w
    if class_token:
        out["cls_token"] = _t(take("cls"))
    pe_key = "pos_embedding" if "pos_embedding" in w else "Transformer/posembed_input/pos_embedding"
    posemb = "none"
    if pe_key in w:
        posemb = "learned"
        pe = _t(take(pe_key)).reshape(1, -1, width)
        n = pe.shape[1]
        if class_token and math.isqrt(n) ** 2 == n and math.isqrt(n - 1) ** 2 != n - 1:
            pe = torch.cat([pe.new_zeros(1, 1, width), pe], 1)  # big_vision: the class token gets no position embedding
            notes.append("position embedding had no class-token row (big_vision): a zero row added")
        out["pos_embed"] = pe
    grid = math.isqrt(out["pos_embed"].shape[1] - int(class_token)) if posemb == "learned" else None
    cfg = dict(
        width=width, depth=depth, heads=heads, patch_size=patch, in_chans=in_chans, resnet=resnet,
        mlp_dim=out["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * width,
        class_token=class_token, pool="token" if class_token else "gap", posemb=posemb,
        qkv_bias="blocks.0.attn.qkv.bias" in out,
        representation_size=out["pre_logits.0.weight"].shape[0] if "pre_logits.0.weight" in out else None,
        num_classes=out["head.weight"].shape[0] if "head.weight" in out else 0,
    )
    if grid:
        cfg["image_size"] = grid * patch * stride
    cfg["gelu"] = "tanh"  # the official code's nn.gelu is Flax's default, the tanh approximation: what .npz weights compute
    cfg.update(overrides)
    for k in w.keys() - used:
        out[k] = _t(w[k])  # reported as unexpected
    if "head.weight" in out and not out["head.weight"].any():
        notes.append("the head is all zeros (a raw pre-training checkpoint): its predictions mean nothing until fine-tuned")
    return ViTConfig(**cfg), out, notes


def from_vitkit(sd: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """vitkit tensors -> a vit_jax-style .npz dict (unscanned, no prefix)."""
    if cfg.fc_norm:  # its encoder_norm comes before the pooling: the file would compute something else
        raise CheckpointError("the official .npz format has no LayerNorm after the pooling (fc_norm); save this model as vitkit or timm")
    if cfg.pool == "gap" and cfg.class_token:  # a file with "cls" is read as class-token pooling (big_vision's rule)
        raise CheckpointError("the .npz format pools by the class token whenever there is one (pool='gap' with class_token=True "
                              "would come back as token pooling); save this model as vitkit or timm")
    inv_top = {v: k for k, v in TOP.items()}
    inv_block = {v: k for k, v in VIT_JAX_BLOCK.items()}
    inv_unit = {v: k for k, v in UNIT.items()}
    D, h = cfg.width, cfg.heads
    out: dict[str, np.ndarray] = {}
    for key, t in sd.items():
        a = t.detach().float().cpu().numpy()
        if key == "cls_token":
            out["cls"] = a
        elif key == "pos_embed":
            out["Transformer/posembed_input/pos_embedding"] = a
        elif key in inv_top:
            out[inv_top[key]] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if a.ndim == 2 else a)
        elif m := re.match(r"^patch_embed\.backbone\.stages\.(\d+)\.(\d+)\.(.+)$", key):
            out[f"block{int(m.group(1)) + 1}/unit{int(m.group(2)) + 1}/{inv_unit[m.group(3)]}"] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a
        elif m := re.match(r"^blocks\.(\d+)\.(.+)$", key):
            bp = f"Transformer/encoderblock_{m.group(1)}/"
            name = m.group(2)
            if name == "attn.qkv.weight":
                for n, part in zip(("query", "key", "value"), np.split(a, 3, axis=0)):
                    out[f"{bp}MultiHeadDotProductAttention_1/{n}/kernel"] = part.T.reshape(D, h, D // h)
            elif name == "attn.qkv.bias":
                for n, part in zip(("query", "key", "value"), np.split(a, 3)):
                    out[f"{bp}MultiHeadDotProductAttention_1/{n}/bias"] = part.reshape(h, D // h)
            elif name == "attn.proj.weight":
                out[f"{bp}MultiHeadDotProductAttention_1/out/kernel"] = a.T.reshape(h, D // h, D)
            else:
                out[bp + inv_block[name]] = a.T if a.ndim == 2 else a
        else:
            raise CheckpointError(f"tensor {key!r} has no place in a Google .npz checkpoint")
    return out


# --- the format adapter: one .npz archive (vit_jax or big_vision naming) ------------------------------------------

NAME = "npz"


def recorded_gelu(path: Path) -> str | None:
    """The GELU a .npz vitkit wrote records in its zip comment ("exact" / "tanh"), None for any other file."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            record = json.loads(zf.comment.decode() or "{}").get("vitkit", {})
    except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    gelu = record.get("gelu") if isinstance(record, dict) else None
    return gelu if gelu in ("exact", "tanh") else None


def detect_file(path: Path) -> bool:
    return path.suffix.lower() == ".npz"


def read(p: Path, **overrides: Any) -> tuple[ViTConfig, dict[str, torch.Tensor], list[str], None]:
    recorded = recorded_gelu(p)
    if recorded:  # a file vitkit wrote: the GELU its weights learned (Google's files: the official tanh)
        overrides = {"gelu": recorded, **overrides}
    cfg, sd, notes = to_vitkit(read_npz(str(p)), str(p), **overrides)
    return cfg, sd, notes, None


def write(model: nn.Module, path: Path, info: dict, overwrite: bool) -> None:
    """vit_jax's names in one .npz (written with NumPy; read back with allow_pickle=False)."""
    from vitkit.atomic import atomic_path
    from vitkit.convert.files import outside_state

    if path.suffix != ".npz":
        raise ValueError(f"{path}: Google checkpoints are .npz files; name the file *.npz")
    arrays = from_vitkit(outside_state(model), model.config)
    if model.config.gelu != "tanh":
        warnings.warn(f"{path}: the official code computes GELU's tanh approximation, this model the exact GELU: its logits "
                      f"from the file differ by about 1e-4 of their scale (vitkit reads the file back exact)", stacklevel=3)
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        import zipfile

        with zipfile.ZipFile(tmp, "a") as zf:  # the archive's comment: invisible to every array reader (NumPy, JAX, timm)
            zf.comment = json.dumps({"vitkit": {"gelu": model.config.gelu}}).encode()
