"""The multitask objective's data: each task's dataset (datasets.py's for a classification, dense.py's for a
segmentation), and batches that mix them, a fixed quota of each task's images per batch (objectives/multitask.py).

Every task's images come at data.image_size, with the channels of the task with the most (grayscale repeated to RGB),
so that one encoder pass takes the mixed batch. A step's batch is a pure function of (seed, step), as every vitkit
batch is (loader.py): each task draws its quota from its own epoch order (its own seed, salted by its place), so a
resumed run sees the batches an uninterrupted one would. Targets travel as a dict of tensors with the batch's first
dimension: "task" (each image's task index) and one entry per task (its labels or masks, filled with -1 or
data.ignore_index on the other tasks' images), which train_step splits into micro-batches as it splits images.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset

from vitkit.objectives.multitask import TaskPlan, quotas, task_data


@dataclass
class TaskSplits:
    """One split (train, val or test) of every task, by task name; its length is their images together."""

    parts: dict[str, Any]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts.values())


@dataclass
class MultitaskDataset:
    """Every task's dataset, by name, in multitask.tasks' order, as `datasets.Dataset` is for one task."""

    plans: list[TaskPlan]
    datasets: dict[str, Any]  # name -> Dataset | DenseDataset
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "multitask(" + ", ".join(f"{p.name}={p.data}" if p.name != p.data else p.name for p in self.plans) + ")"

    @property
    def channels(self) -> int:
        return max(d.channels for d in self.datasets.values())

    @property
    def classes(self) -> dict[str, list[str]]:
        return {n: list(d.classes) for n, d in self.datasets.items()}

    @property
    def num_classes(self) -> int:
        """No one classifier (the tasks' heads have their own)."""
        return 0

    @property
    def source(self) -> str:
        return "; ".join(f"{n}: {d.source}" for n, d in self.datasets.items())

    def split(self, name: str) -> TaskSplits:
        return TaskSplits({n: getattr(d, name) for n, d in self.datasets.items()})

    @property
    def train(self) -> TaskSplits:
        return self.split("train")

    @property
    def val(self) -> TaskSplits:
        return self.split("val")

    @property
    def test(self) -> TaskSplits:
        return self.split("test")


def load_multitask(cfg: Any, plans: list[TaskPlan]) -> MultitaskDataset:
    """Each task's splits, read as its kind reads them (its data settings: objectives/multitask.py task_data)."""
    from vitkit.data.datasets import load_dataset
    from vitkit.data.dense import load_dense

    datasets, notes = {}, []
    for p in plans:
        d = task_data(cfg, p)
        ds = load_dense(d, "segmentation") if p.kind == "segmentation" else load_dataset(d)
        datasets[p.name] = ds
        notes += [f"{p.name}: {n}" for n in ds.notes]
    return MultitaskDataset(plans, datasets, notes)


def describe_multitask(ds: MultitaskDataset, shares: list[int]) -> str:
    return "; ".join(f"{p.name} ({p.kind}, {p.data}): {len(d.train)} train / {len(d.val)} val / {len(d.test)} test, "
                     f"{d.num_classes} classes, {q} per batch" for (p, q), d in zip(zip(ds.plans, shares), ds.datasets.values()))


class MultitaskBatches(TorchDataset):
    """Item `step` is that step's mixed batch: each task's quota of augmented images (its own StepBatches, its kind's
    augmentation), concatenated in the tasks' order, and the targets dict (see the module's docstring); rank r of w
    takes its slice of every task's quota."""

    def __init__(self, ds: MultitaskDataset, cfg: Any, channels: int, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu"):
        from vitkit.data.loader import StepBatches, step_seed

        self.plans, self.shares = ds.plans, check_batches(ds, batch_size, world)
        self.device = torch.device(device)
        self.ignore_index = cfg.data.ignore_index
        self.parts = []
        for i, (p, q) in enumerate(zip(self.plans, self.shares)):
            part = ds.datasets[p.name]
            self.parts.append(StepBatches(part.train, task_data(cfg, p), channels, part.num_classes, q,
                                          step_seed(seed, i, salt=11), rank, world, device=device))
        self.split = self.parts[0].split  # loader.train_stream's test of where the images live

    @property
    def steps_per_epoch(self) -> int:
        """Steps in which every task sees all its training images once (the task that takes longest)."""
        return max(b.steps_per_epoch for b in self.parts)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from vitkit.data.loader import to_device

        xs, ys = [], []
        for b in self.parts:  # a task read from files comes on the CPU, an in-memory one where it is augmented
            x, y = b[step]
            xs.append(to_device(x, self.device))
            ys.append(to_device(y, self.device))
        x = torch.cat(xs)
        n = len(x)
        target = {"task": torch.cat([torch.full((len(xi),), i, dtype=torch.long, device=x.device) for i, xi in enumerate(xs)])}
        start = 0
        for p, xi, yi in zip(self.plans, xs, ys):
            fill = self.ignore_index if p.kind == "segmentation" else -1  # hard labels: multitask refuses mixup and cutmix
            full = torch.full((n, *yi.shape[1:]), fill, dtype=torch.long, device=yi.device)
            full[start:start + len(xi)] = yi
            target[p.name] = full
            start += len(xi)
        return x, target


def check_batches(ds: MultitaskDataset, batch_size: int, world: int = 1) -> list[int]:
    """The tasks' quotas per batch (objectives/multitask.py quotas), checked against what they draw from (called
    before the run directory exists): ValueError naming the task whose quota its training split cannot fill (a
    batch is drawn without repeats) or that does not divide among the processes."""
    shares = quotas(ds.plans, batch_size)
    for p, q in zip(ds.plans, shares):
        n = len(ds.datasets[p.name].train)
        if n < q:
            raise ValueError(f"multitask task {p.name!r} ({p.data}): {q} images per batch but its training split has {n}; "
                             f"lower train.batch_size or its multitask.weights")
    bad = [f"{p.name}: {q}" for p, q in zip(ds.plans, shares) if q % world]
    if bad:
        raise ValueError(f"multitask: each task's images per batch ({', '.join(bad)}) must divide among the {world} "
                         f"processes; choose train.batch_size and multitask.weights so that they do")
    return shares


def multitask_eval_streams(split: TaskSplits, ds: MultitaskDataset, cfg: Any, channels: int, batch_size: int,
                           workers: int = 0, rank: int = 0, world: int = 1, pin_memory: bool = False) -> dict[str, Iterator]:
    """Each task's evaluation batches (loader.eval_stream with the task's data settings), by task name; tasks whose
    split is empty are left out."""
    from vitkit.data.loader import eval_stream

    return {p.name: eval_stream(split.parts[p.name], task_data(cfg, p), channels, batch_size, workers=workers, rank=rank,
                                world=world, pin_memory=pin_memory)
            for p in ds.plans if len(split.parts[p.name])}
