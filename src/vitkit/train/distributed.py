"""Multi-process training on PyTorch's own engine: torchrun sets RANK / WORLD_SIZE / MASTER_ADDR, the
process group comes from the environment (gloo on CPU, NCCL on GPU). One process without torchrun is
world size 1 and every call here is a no-op. Parallelism stays out of the model."""
from __future__ import annotations

import os
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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup() -> Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Env()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(seconds=int(os.environ.get("VITKIT_DIST_TIMEOUT", "300")))
        dist.init_process_group(backend=backend, timeout=timeout)
    return Env(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


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


def wrap(model: nn.Module, env: Env, parallel: str) -> nn.Module:
    if not env.active:
        return model
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    raise ValueError(f"train.parallel={parallel!r} is not available; use 'ddp'")


def reduce_metrics(metrics: dict[str, float], env: Env) -> dict[str, float]:
    """Mean of each metric over ranks."""
    if not env.active:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / env.world for k, v in zip(keys, t)}


def reduce_eval(res: dict, env: Env) -> dict:
    """Combine per-rank evaluation results (each a mean over its own share of the images): means
    weighted by image counts; the confusion matrix, if any, is dropped (rank 0 recomputes what it needs)."""
    if not env.active:
        return res
    keys = sorted(k for k, v in res.items() if isinstance(v, float) and k != "n")
    n = res["n"]
    t = torch.tensor([res[k] * n if n else 0.0 for k in keys] + [float(n)], dtype=torch.float64)
    dist.all_reduce(t)
    total = max(t[-1].item(), 1.0)
    return {**{k: t[i].item() / total for i, k in enumerate(keys)}, "n": int(t[-1].item())}
