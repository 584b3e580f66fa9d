"""vitkit's own format: a directory with `model.safetensors` + `config.json`, or one `.safetensors` file whose
metadata ("vitkit", JSON) holds the same record (architecture, class names, preprocessing), so that any of its
files describes itself. The adapter: detect / read / write; load.py dispatches."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file

from vitkit.convert import timm
from vitkit.atomic import atomic_path
from vitkit.convert.files import CONFIG, WEIGHTS, plain, read_json
from vitkit.models.registry import config_from_dict

NAME = "vitkit"


def detect_dir(config: dict) -> bool:
    """A directory whose config.json is vitkit's record."""
    return config.get("format") == "vitkit"


def detect_tensors(keys: list[str], meta: dict[str, str], path: Path) -> bool:
    """A safetensors file carrying vitkit's record in its metadata (vitkit's own, or a timm file vitkit wrote)."""
    return "vitkit" in meta


def read(p: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], timm_names: bool = False,
         **overrides: Any) -> tuple[Any, dict[str, torch.Tensor], list[str], list[str] | None]:
    """(config, vitkit-named tensors, notes, class names) from vitkit's record; `timm_names`: the tensors carry
    timm's names (a timm file vitkit wrote, read as timm)."""
    info = json.loads(meta["vitkit"]) if "vitkit" in meta else read_json(p / CONFIG)
    cfg = config_from_dict({**info["model"], **overrides})
    timm_names = timm_names or info.get("names") == "timm"  # a timm file vitkit wrote says so in its record
    return cfg, timm.to_vitkit(tensors, cfg) if timm_names else tensors, [], info.get("class_names")


def write(model: nn.Module, path: Path, info: dict, overwrite: bool) -> None:
    """One .safetensors file (record in its metadata) if `path` ends in .safetensors, else a directory."""
    sd = plain(model.state_dict())
    meta = {"vitkit": json.dumps(info)}
    with atomic_path(path, overwrite) as tmp:
        if path.suffix == ".safetensors":
            save_file(sd, str(tmp), metadata=meta)
        else:
            tmp.mkdir()
            save_file(sd, str(tmp / WEIGHTS), metadata=meta)
            (tmp / CONFIG).write_text(json.dumps(info, indent=2))
