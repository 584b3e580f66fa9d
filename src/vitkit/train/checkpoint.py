"""Training checkpoints. RUN/checkpoint/ holds

- model.safetensors + config.json: the weights users load (`load_model(RUN)`), full, whatever the
  parallelism: the EMA weights when averaging, else the trained ones;
- train_state/: a torch.distributed.checkpoint (DCP) of the training module (model and objective) and
  the optimizer, keyed by parameter name; under FSDP each rank writes its own shards. DCP reshards on
  load, so a run resumes on any world size and under any parallelism (one process, DDP, FSDP);
- state.pt: step, LR schedule, RNG, EMA count (plain tensors and numbers, read with weights_only=True).

Written into a temporary directory beside it and swapped in with renames: a kill at any moment
(of any rank) leaves the last complete checkpoint in place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
import torch.nn as nn
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict

from vitkit.convert.card import ModelCard
from vitkit.convert.load import save_model
from vitkit.rundir import RunDir
from vitkit.train import distributed

CKPT = RunDir.CHECKPOINT
STATE = "state.pt"
TRAIN_STATE = "train_state"


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


class _Weights:
    """What save_model needs of a model (config, state dict), for weights gathered from shards."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self.config = model.config
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


@contextlib.contextmanager
def _quiet_dcp() -> Iterator[None]:
    """One process has no process group; DCP then reads and writes alone, which is what we want. A Ctrl-C inside
    DCP comes back wrapped in its CheckpointException: it is a KeyboardInterrupt again here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            yield
        except CheckpointException as err:
            if any(isinstance(exc, KeyboardInterrupt) for exc, _ in err.failures.values()):
                raise KeyboardInterrupt from None
            raise


def save_checkpoint(run_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer, export: nn.Module | None,
                    state: dict[str, Any], card: ModelCard, env: distributed.Env) -> None:
    """Every rank calls this. `module` is the training module (model + objective, sharded or not);
    `export` the module users get (the EMA model), or None for the trained model itself; `card` what is
    recorded beside its weights (class names, preprocessing)."""
    model = module.model
    if export is None and distributed.is_sharded(module):  # gather the shards, on rank 0 only
        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        export = _Weights(model, {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")})
    export = export if export is not None else model
    msd, osd = get_state_dict(module, optimizer)
    made = out = None  # made: the temporary directory this rank created, the only thing it ever removes
    if env.is_main:
        made = Path(tempfile.mkdtemp(prefix=f".{CKPT}.", dir=run_dir))
        out = made / "out"
        save_model(export, out, card=card)
    out = distributed.broadcast_path(out or Path(), env)
    try:
        with _quiet_dcp():
            dcp.save({"module": msd, "optim": osd}, checkpoint_id=out / TRAIN_STATE)
        distributed.barrier(env)
        if env.is_main:
            torch.save(state, out / STATE)
            ckpt, old = run_dir / CKPT, run_dir / f".{CKPT}.old"
            if ckpt.exists():
                os.replace(ckpt, old)
            os.replace(out, ckpt)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    distributed.barrier(env)


def load_checkpoint(run_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the training module and optimizer in place from the last complete checkpoint, whatever
    world size and parallelism wrote it (call on every rank, after wrapping and building the optimizer).
    Returns (the exported weights, for the EMA model; state.pt)."""
    ckpt = checkpoint_dir(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to resume from (expected {run_dir / CKPT / STATE})")
    if not (ckpt / TRAIN_STATE).is_dir():
        raise FileNotFoundError(f"{ckpt}: no {TRAIN_STATE}/ (written by an older vitkit); start the run again, or fine-tune "
                                f"from its weights with `vitkit finetune {run_dir}`")
    msd, osd = get_state_dict(module, optimizer)
    sd = {"module": msd, "optim": osd}
    with _quiet_dcp():
        dcp.load(sd, checkpoint_id=ckpt / TRAIN_STATE)
    set_state_dict(module, optimizer, model_state_dict=sd["module"], optim_state_dict=sd["optim"])
    exported = load_file(str(ckpt / "model.safetensors"))
    state = torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    return exported, state
