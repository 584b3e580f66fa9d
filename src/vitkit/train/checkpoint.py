"""Training checkpoints. RUN/checkpoint/ holds

- model.safetensors + config.json: the weights users load (`load_model(RUN)`), full, whatever the
  parallelism: the EMA weights when averaging, else the trained ones;
- train_state/: a torch.distributed.checkpoint (DCP) of the training module (model and objective) and
  the optimizer, keyed by parameter name; under FSDP each rank writes its own shards. DCP reshards on
  load, so a run resumes on any world size and under any parallelism (one process, DDP, FSDP);
- state.pt: step, LR schedule, RNG, EMA count (plain tensors and numbers, read with weights_only=True).

Written into a temporary directory beside it and swapped in with renames: a kill at any moment
(of any rank) leaves the last complete checkpoint in place, and at most a temporary directory that the
next resume (or the end of the run) removes (RunDir.remove_stale).

Nothing is unpickled beyond plain data: a run directory may come from anyone, and `--resume` must not run its
code. DCP itself unpickles its .metadata with plain pickle and its non-tensor items with
torch.load(weights_only=False) (torch 2.14: filesystem.py read_metadata, default_planner.py load_bytes); here the
first goes through an allow-list of the classes DCP's metadata holds and the second through weights_only=True.
Its tensors DCP already reads with torch.load(weights_only=True) (filesystem.py read_data).
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
import torch.nn as nn
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict

from vitkit.convert.card import ModelCard
from vitkit.convert.common import CheckpointError
from vitkit.convert.load import save_model
from vitkit.rundir import RunDir
from vitkit.train import distributed

CKPT = RunDir.CHECKPOINT
STATE = RunDir.STATE
TRAIN_STATE = "train_state"


class UnsafeCheckpoint(CheckpointError, pickle.UnpicklingError):
    """A checkpoint file that asks to unpickle more than plain data: refused, nothing of it run."""


def checkpoint_dir(run_dir: Path) -> Path | None:
    """The last complete checkpoint; recovers one left as .checkpoint.old by a kill between two renames."""
    return RunDir(run_dir).last_checkpoint(repair=True)


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
    DCP comes back wrapped in its CheckpointException: it is a KeyboardInterrupt again here, and a refused file
    its UnsafeCheckpoint."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            yield
        except CheckpointException as err:
            failures = [exc for exc, _ in err.failures.values()]
            if any(isinstance(exc, KeyboardInterrupt) for exc in failures):
                raise KeyboardInterrupt from None
            refused = next((exc for exc in failures if isinstance(exc, UnsafeCheckpoint)), None)
            if refused is not None:
                raise refused from None
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
        made = Path(tempfile.mkdtemp(prefix=f".{CKPT}.", dir=run_dir))  # left by a kill: RunDir.remove_stale removes it
        out = made / "out"
        save_model(export, out, card=card)
    out = distributed.broadcast_path(out or Path(), env)
    try:
        with _quiet_dcp():
            dcp.save({"module": msd, "optim": osd}, checkpoint_id=out / TRAIN_STATE)
        distributed.barrier(env)
        if env.is_main:
            torch.save(state, out / STATE)
            ckpt, old = run_dir / CKPT, run_dir / RunDir.CHECKPOINT_OLD
            if ckpt.exists():
                os.replace(ckpt, old)
            os.replace(out, ckpt)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    distributed.barrier(env)


# What DCP's .metadata holds (torch 2.14, one process, DDP and FSDP, read off real files with pickletools): its own
# dataclasses, torch.Size, dtypes (below), layouts (by name, through torch.serialization._get_layout) and the path it
# was written to. Constructing any of them runs no code of the file's choosing.
_METADATA_CLASSES = {
    *(("torch.distributed.checkpoint.metadata", n) for n in ("Metadata", "StorageMeta", "MetadataIndex", "ChunkStorageMetadata",
                                                            "TensorProperties", "TensorStorageMetadata",
                                                            "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),  # the checkpoint_id it was written to, on either system
}


class _Refused(pickle.UnpicklingError):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_CLASSES or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def read_dcp_metadata(path: Path) -> Metadata:
    """A DCP .metadata file, unpickled through the allow-list (UnsafeCheckpoint for anything else)."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _Refused as err:
        raise UnsafeCheckpoint(f"{path}: refusing to load: it asks to unpickle {err}, which a vitkit checkpoint never holds; "
                               f"the run directory was not written by vitkit or was altered: do not resume it") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint index ({err}); the checkpoint is damaged: start the run "
                              f"again") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpoint(f"{path}: holds a {type(metadata).__name__}, not DCP metadata; do not resume this run directory")
    return metadata


class _SafeReader(dcp.FileSystemReader):
    """DCP's file reader, its metadata read through the allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_dcp_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader.read_metadata does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(dcp.DefaultLoadPlanner):
    """DCP's planner, its non-tensor items (the optimizer's hyper-parameters, saved by torch.save) read with
    weights_only=True, then handed on re-saved: what the parent unpickles is plain data this process wrote."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpoint(f"{read_item.dest_index.fqn} in a checkpoint's {TRAIN_STATE}/: refusing to load: it needs "
                                   f"unpickling beyond plain data ({str(err).splitlines()[0]}); the run directory was not "
                                   f"written by vitkit or was altered: do not resume it") from None
        buf = io.BytesIO()
        torch.save(obj, buf)
        buf.seek(0)
        super().load_bytes(read_item, buf)


def load_checkpoint(run_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the training module and optimizer in place from the last complete checkpoint, whatever
    world size and parallelism wrote it (call on every rank, after wrapping and building the optimizer, once
    rank 0 has repaired the directory). Returns (the exported weights, for the EMA model; state.pt)."""
    ckpt = RunDir(run_dir).last_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to resume from (expected {run_dir / CKPT / STATE}); "
                                f"start again with `vitkit train --config {run_dir / RunDir.CONFIG} --out NEW_DIR`")
    if not (ckpt / TRAIN_STATE).is_dir():
        raise FileNotFoundError(f"{ckpt}: no {TRAIN_STATE}/ (written by an older vitkit); start the run again, or fine-tune "
                                f"from its weights with `vitkit finetune {run_dir}`")
    reader = _SafeReader(ckpt / TRAIN_STATE)
    reader.read_metadata()  # a refused file is its one-line error here (inside dcp.load, DCP would log it, then wrap it)
    msd, osd = get_state_dict(module, optimizer)
    sd = {"module": msd, "optim": osd}
    with _quiet_dcp():
        dcp.load(sd, checkpoint_id=ckpt / TRAIN_STATE, storage_reader=reader, planner=_SafePlanner())
    set_state_dict(module, optimizer, model_state_dict=sd["module"], optim_state_dict=sd["optim"])
    exported = load_file(str(ckpt / "model.safetensors"))
    try:
        state = torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(f"{ckpt / STATE}: refusing to load: it needs unpickling beyond tensors and numbers "
                               f"({str(err).splitlines()[0]}); do not resume this run directory") from None
    return exported, state
