"""Multi-process training on PyTorch's own engine: torchrun sets RANK / WORLD_SIZE / MASTER_ADDR, the
process group comes from the environment (gloo on CPU, NCCL on GPU). One process without torchrun is
world size 1 and every call here is a no-op. Parallelism stays out of the model: DDP wraps it, FSDP2
(`fully_shard`) shards each transformer block and then the whole, in place."""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Env:
    """This process's rank and device; under torchrun the process group, its device chosen first: with
    CUDA, `cuda:LOCAL_RANK` is made current before `init_process_group` (NCCL, bound to it by `device_id`),
    else gloo on the CPU. `device` is train.device (vitkit.runtime.resolve_device)."""
    from vitkit.runtime import resolve_device

    dev = resolve_device(device, option="train.device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Env(device=dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if (device or "auto").strip().lower() not in ("auto", "cuda"):
            raise ValueError(f"train.device={device} under torchrun: each process takes its own GPU (cuda:LOCAL_RANK); "
                             f"use train.device=auto or cuda, and CUDA_VISIBLE_DEVICES to choose the GPUs")
        dev = torch.device("cuda", local % torch.cuda.device_count())  # one visible GPU per task (SLURM): cuda:0
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        timeout = dist_timeout()
        if dev.type == "cuda":
            dist.init_process_group(backend="nccl", timeout=timeout, device_id=dev)
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
    return Env(dist.get_rank(), dist.get_world_size(), local, dev)


def dist_timeout() -> timedelta:
    """VITKIT_DIST_TIMEOUT (seconds, default 300): how long a collective waits for the slowest rank, so that a rank
    that hangs or is stopped (SIGSTOP) fails the job after that long instead of stalling it for ever."""
    text = os.environ.get("VITKIT_DIST_TIMEOUT", "300")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"VITKIT_DIST_TIMEOUT={text!r}: give the seconds a process waits for the others, a positive "
                         f"number (default 300)")
    return timedelta(seconds=seconds)


def device(env: Env) -> torch.device:
    """This rank's device: its GPU (cuda:LOCAL_RANK) under torchrun with CUDA, else as train.device said."""
    return env.device


def teardown(env: Env) -> None:
    if env.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(env: Env) -> None:
    if env.active:
        dist.barrier()


def broadcast_path(path: Path, env: Env) -> Path:
    if not env.active:
        return path
    obj = [str(path)]
    dist.broadcast_object_list(obj, src=0)
    return Path(obj[0])


PARALLEL = ("ddp", "fsdp")


def sync_batchnorm(module: nn.Module, env: Env) -> list[nn.Module]:
    """On GPUs, the BatchNorms below the modules that ask for it (`sync_batchnorm = True`: a segmentation head) become
    SyncBatchNorm, in place (the same parameters); elsewhere a note that their statistics stay per process. Returns
    the modules that asked."""
    synced = [m for m in module.modules() if getattr(m, "sync_batchnorm", False)
              and any(isinstance(b, nn.modules.batchnorm._BatchNorm) for b in m.modules())]
    if synced and env.device.type == "cuda":  # a segmentation head's BatchNorm over the global batch, as SETR trains it
        for m in synced:
            for name, child in list(m.named_children()):
                setattr(m, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    elif synced and env.is_main:
        print("note: BatchNorm statistics per process (SyncBatchNorm needs GPUs); segmentation.norm=group is independent "
              "of the batch")
    return synced


def wrap(module: nn.Module, env: Env, parallel: str, precision: str = "fp32") -> nn.Module:
    """DDP: a wrapper that all-reduces gradients. FSDP: parameters, gradients and optimizer state sharded
    across ranks, one unit per transformer block (or ResNet stage) plus the rest; `module` itself becomes
    the sharded module, so build the optimizer after this. On GPUs the BatchNorms of the modules that ask for it (a
    `sync_batchnorm = True` attribute: SETR's segmentation head) become SyncBatchNorm (statistics of the global batch);
    every other BatchNorm (an AxialResNet's) keeps per-process statistics, as before. One process: `module` unchanged."""
    if parallel not in PARALLEL:
        raise ValueError(f"train.parallel={parallel!r} is not available; choose one of {PARALLEL}")
    if not env.active:
        return module
    sync_batchnorm(module, env)
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(module)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if precision in ("bf16", "fp16") and env.device.type == "cuda":
        # weights all-gathered and computed in half precision, gradients reduced in fp32; on the CPU (gloo)
        # autocast alone, as one process runs (same numerics)
        half = torch.bfloat16 if precision == "bf16" else torch.float16
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)
    for unit in shard_units(module):
        fully_shard(unit, **kw)
    fully_shard(module, **kw)
    return module


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The sub-modules FSDP shards (and gathers) one at a time: transformer blocks, ResNet stages."""
    units = []
    for name, child in module.named_modules():
        if name.endswith(".blocks") or name.endswith(".stages"):
            units.extend(child.children())
    return units


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """Evaluation under FSDP: every unit's full parameters gathered once, kept through any number of
    forwards (ranks may run different numbers of evaluation batches, with no collective in between),
    then sharded again. Any other module: nothing to do."""
    if not is_sharded(module):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    module.set_reshard_after_forward(False)
    for m in units:
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
        module.set_reshard_after_forward(True)
        module.set_reshard_after_forward(False, recurse=False)  # the root keeps its parameters between forward and backward


def comm_device() -> torch.device:
    """Where collective tensors must live: NCCL moves GPU tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def reduce_metrics(metrics: dict[str, float], env: Env) -> dict[str, float]:
    """Mean of each metric over ranks."""
    if not env.active:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return {k: float(v) / env.world for k, v in zip(keys, t)}


def reduce_eval(res: dict, env: Env) -> dict:
    """Combine per-rank evaluation results (each a mean over its own share of the images): means
    weighted by image counts; the confusion matrix, if any, is dropped (rank 0 recomputes what it needs)."""
    if not env.active:
        return res
    keys = sorted(k for k, v in res.items() if isinstance(v, float) and k != "n")
    n = res["n"]
    t = torch.tensor([res[k] * n if n else 0.0 for k in keys] + [float(n)], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    total = max(t[-1].item(), 1.0)
    return {**{k: t[i].item() / total for i, k in enumerate(keys)}, "n": int(t[-1].item())}
