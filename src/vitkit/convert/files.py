"""Reading and writing checkpoint files safely: safetensors (whole, or its header alone), PyTorch files only with
`weights_only=True`, JSON; the names vitkit's directories use; the state outside formats are written from. The
format adapters (vitkit_format, timm, hf, google_npz) and the dispatcher (load.py) read through here."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from vitkit.convert.common import CheckpointError
from vitkit.models.vit import VisionTransformer

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); is the file complete?") from err


def safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """A safetensors file's tensor names and metadata, from its header alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); is the file complete?") from err


def read_torch(path: Path) -> dict[str, torch.Tensor]:
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


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}, not an object; is the file damaged?")
    return data


def resolve_run_dir(p: Path) -> Path:
    """A training run directory stands for its last complete checkpoint (RunDir.last_checkpoint: RUN/checkpoint, or
    the RUN/.checkpoint.old a kill between two renames left, read where it is)."""
    from vitkit.rundir import RunDir

    if p.is_dir() and not (p / WEIGHTS).exists():
        last = RunDir(p).last_checkpoint()
        if last is not None:
            return last
        if (p / RunDir.CHECKPOINT).is_dir():
            return p / RunDir.CHECKPOINT
    return p


def weights_file(p: Path) -> Path:
    for name in (WEIGHTS, "pytorch_model.bin"):
        if (p / name).exists():
            return p / name
    raise CheckpointError(f"{p}: no {WEIGHTS} or pytorch_model.bin in this directory")


def read_tensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    p = weights_file(p) if p.is_dir() else p
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    return read_torch(p), {}


def plain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def outside_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict, with a fixed sin-cos table or a learned 2-D one written as the (learned 1-D) position embedding
    it adds, and a model without one given an all-zero table: outside formats have no other way to carry them (timm,
    transformers and the official code always add one table after the stem; without one they would start it at
    random, and .npz would lose the image size). Adding zeros computes the same. Embeddings added at every layer
    and relative ones have no place in those formats: refused, naming the option."""
    sd = dict(model.state_dict())
    if not isinstance(model, VisionTransformer):
        return sd
    cfg = model.config
    if cfg.posemb == "relative" or cfg.posemb_placement != "stem":
        what = "posemb='relative'" if cfg.posemb == "relative" else f"posemb_placement={cfg.posemb_placement!r}"
        raise CheckpointError(f"{what}: timm, Hugging Face and .npz ViTs add one absolute position embedding after the "
                              f"stem and nothing else; save this model as vitkit (--to vitkit)")
    if cfg.posemb in ("sincos2d", "learned2d"):
        for name in ("pos_embed_x", "pos_embed_y"):
            sd.pop(name, None)
        sd["pos_embed"] = model.position_table().detach()
    elif cfg.posemb == "none":
        sd["pos_embed"] = torch.zeros(1, cfg.grid[0] * cfg.grid[1] + model.num_prefix_tokens, cfg.width)
    return sd
