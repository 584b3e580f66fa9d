"""Training checkpoints: RUN/checkpoint/ holds the weights as a vitkit checkpoint (so `load_model(RUN)`
works) plus `state.pt` with optimizer, scheduler, EMA and RNG state. Written into a temporary
directory and swapped in with renames: a kill at any moment leaves the last complete checkpoint."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from vitkit.convert.common import atomic_path
from vitkit.convert.load import save_model

CKPT = "checkpoint"
STATE = "state.pt"
RAW = "raw.safetensors"  # the training weights when the exported model.safetensors holds the EMA


def checkpoint_dir(run_dir: Path) -> Path | None:
    """The last complete checkpoint; recovers one left as .checkpoint.old by a kill between two renames."""
    ckpt, old = run_dir / CKPT, run_dir / f".{CKPT}.old"
    if (ckpt / STATE).exists():
        return ckpt
    if (old / STATE).exists():
        if ckpt.exists():
            shutil.rmtree(ckpt)
        os.replace(old, ckpt)
        return ckpt
    return None


def save_checkpoint(run_dir: Path, model: nn.Module, export: nn.Module, state: dict[str, Any],
                    class_names: list[str] | None, preprocess: dict) -> None:
    """`export` is what users load (the EMA model when averaging, else `model`)."""
    with atomic_path(run_dir / CKPT, overwrite=True) as tmp:
        save_model(export, tmp, class_names=class_names, preprocess=preprocess)
        if export is not model:
            save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(tmp / RAW))
        torch.save(state, tmp / STATE)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(training weights, exported weights, state) of the last complete checkpoint."""
    ckpt = checkpoint_dir(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to resume from (expected {run_dir / CKPT / STATE})")
    exported = load_file(str(ckpt / "model.safetensors"))
    raw = load_file(str(ckpt / RAW)) if (ckpt / RAW).exists() else exported
    state = torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    return raw, exported, state
