"""The multitask objective: one encoder, a head per task (heads/multitask.py), trained on batches that mix the tasks'
images (data/multitask.py).

Every batch holds a fixed number of images of each task, its quota: the batch size split by the sampling weights
(multitask.weights; largest remainders, at least one image a task). The encoder runs once over the mixed batch and each
head on its own images; the loss is sum over tasks of (the task's images / the batch) x its loss weight x the task's
loss: softmax (or sigmoid) cross-entropy for a classification, the pixel-wise cross-entropy over the pixels not at
data.ignore_index for a segmentation. With the default loss weights of 1 that is the mean over the batch's images,
each image's loss by its own task. Per-task losses and accuracies are logged (loss_NAME, acc_NAME: the step's means
over that task's images), per-task scores reported (top-1 or mIoU under each task's name) with their mean, "score",
which selects nothing but summarises.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from vitkit.objectives.classification import classification_loss, hard_labels

MAIN = {"classification": "top1", "segmentation": "miou"}  # each task's main score
RESERVED = {"score", "n", "tasks"}  # keys of the results beside the tasks' own
REFUSED = {  # data options a mixed batch cannot honour
    "mixup": "it blends images of one batch, and a multitask batch mixes tasks",
    "cutmix": "it blends images of one batch, and a multitask batch mixes tasks",
}


@dataclass(frozen=True)
class TaskPlan:
    """A task as multitask.tasks names it: its name, its data, its kind, its sampling weight and loss weight."""

    name: str
    data: str
    kind: str  # classification | segmentation
    weight: float
    loss_weight: float


def _numbers(text: str | None, n: int, key: str) -> list[float]:
    if text is None:
        return [1.0] * n
    try:
        out = [float(p) for p in text.split(",")]
    except ValueError:
        out = []
    if len(out) != n or not all(v > 0 and v < float("inf") for v in out):
        raise ValueError(f"{key}={text!r}: {n} positive numbers, comma-separated, one per task of multitask.tasks")
    return out


def parse_tasks(m: Any) -> list[TaskPlan]:
    """multitask.tasks (with its weights) as TaskPlans; a ValueError naming the key for a bad entry (an empty or
    repeated name, a detection dataset, an unknown one)."""
    from vitkit.data.dense import COCO, is_dense
    from vitkit.heads.multitask import NAME

    parts = [p.strip() for p in (m.tasks or "").split(",")]
    if not m.tasks or not all(parts):
        raise ValueError(f"multitask.tasks={m.tasks!r}: name the tasks' data, comma-separated, each DATA or NAME=DATA "
                         f"(e.g. fashion-mnist,digits,canvas)")
    named = []
    for p in parts:
        name, data = p.split("=", 1) if "=" in p.split(":", 1)[0] else ("", p)
        data = data.strip()
        name = name.strip() or _default_name(data)
        if data.startswith(COCO):
            raise ValueError(f"multitask.tasks: {p!r} is a detection dataset; multitask trains classification and "
                             f"segmentation heads (train a detector alone: objective=detection)")
        if not NAME.match(name):
            raise ValueError(f"multitask.tasks: task name {name!r} (of {p!r}): lower-case letters, digits, '-' and '_'; "
                             f"name it NAME=DATA")
        if name in RESERVED or hasattr(nn.ModuleDict, name):
            raise ValueError(f"multitask.tasks: task name {name!r} (of {p!r}) is taken (a score's key or a module "
                             f"attribute); name it otherwise, NAME=DATA")
        named.append((name, data, "segmentation" if is_dense(data) else "classification"))
    names = [n for n, _, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"multitask.tasks={m.tasks!r}: the task names {names} repeat; name them NAME=DATA, each once")
    weights = _numbers(m.weights, len(named), "multitask.weights")
    losses = _numbers(m.loss_weights, len(named), "multitask.loss_weights")
    return [TaskPlan(n, d, k, w, lw) for (n, d, k), w, lw in zip(named, weights, losses)]


def _default_name(data: str) -> str:
    """A task's name from its data's: "digits", "canvas"; a folder's (folder:PATH, seg:PATH) its last part, lower-cased."""
    import re
    from pathlib import Path

    base = Path(data.split(":", 1)[1]).name if ":" in data else data
    return re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-") or "task"


def quotas(tasks: list[TaskPlan], batch_size: int) -> list[int]:
    """Images of each task per batch: `batch_size` split by the sampling weights, largest remainders first, every task
    one image at least; ValueError when the batch is smaller than the tasks."""
    if batch_size < len(tasks):
        raise ValueError(f"train.batch_size={batch_size} with {len(tasks)} tasks: every batch holds one image of each "
                         f"task at least; raise the batch size")
    total = sum(t.weight for t in tasks)
    exact = [1 + (batch_size - len(tasks)) * t.weight / total for t in tasks]
    out = [int(e) for e in exact]
    for i in sorted(range(len(tasks)), key=lambda i: out[i] - exact[i])[:batch_size - sum(out)]:
        out[i] += 1
    return out


def task_data(cfg: Any, plan: TaskPlan) -> Any:
    """The data settings of one task: the data section's, named for the task; a segmentation task's without the
    classification-only options (they apply to the classification tasks)."""
    from vitkit.config import DataConfig
    from vitkit.data.dense import CLASSIFICATION_ONLY

    d = dataclasses.replace(cfg.data, name=plan.data)
    if plan.kind == "segmentation":
        default = DataConfig()
        d = dataclasses.replace(d, **{k: getattr(default, k) for k in CLASSIFICATION_ONLY})
    return d


def check_config(cfg: Any) -> list[TaskPlan]:
    """What multitask needs of a config, before anything is written: its tasks, their data names (and a segmentation
    task's settings), data.name left unused, no option a mixed batch cannot honour, a batch with room for every task."""
    from vitkit.config import DataConfig
    from vitkit.data.datasets import check_classes, check_source
    from vitkit.data.dense import check_data

    tasks = parse_tasks(cfg.multitask)
    if cfg.data.name != DataConfig().name:
        raise ValueError(f"data.name={cfg.data.name!r} with objective=multitask: the tasks name their data "
                         f"(multitask.tasks={cfg.multitask.tasks!r}); leave data.name unset")
    for key, why in REFUSED.items():
        if getattr(cfg.data, key):
            raise ValueError(f"data.{key}={getattr(cfg.data, key)!r} with objective=multitask: {why}; set it to 0")
    for t in tasks:
        what = f"multitask.tasks ({t.name}={t.data})"
        if t.kind == "segmentation":
            try:
                check_data(task_data(cfg, t), "segmentation")
            except ValueError as err:
                raise type(err)(f"{what}: {err}") from None
        else:
            check_source(t.data, what)
            check_classes(t.data, what)
    quotas(tasks, cfg.train.batch_size)
    return tasks


class Multitask:
    """The objective (see the module's docstring) of a MultitaskModel over the tasks `plans` (their order: the model's,
    and the batches' task indices), `shares` images of each per batch."""

    main_metric = "score"
    flops_counted = ("forward + backward of the encoder and each task's head per image (torch FlopCounterMode), the "
                     "heads weighted by their share of the batch, x images seen")

    def __init__(self, plans: list[TaskPlan], shares: list[int], ignore_index: int = 255, loss: str = "softmax",
                 smoothing: float = 0.0, class_names: dict[str, list[str]] | None = None):
        self.plans, self.shares, self.ignore_index = list(plans), list(shares), ignore_index
        self.loss, self.smoothing, self.class_names = loss, smoothing, class_names or {}

    def task_loss(self, plan: TaskPlan, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, accuracy) of one task's outputs on its images: top-1 accuracy, or pixel accuracy over the scored pixels."""
        if plan.kind == "segmentation":
            from vitkit.heads.segmentation import segmentation_loss

            loss = segmentation_loss(out, target, self.ignore_index)
            valid = target != self.ignore_index
            acc = ((out.detach().argmax(1) == target) & valid).sum() / valid.sum().clamp(min=1)
            return loss, acc.float()
        loss = classification_loss(out, target, self.loss, self.smoothing)
        return loss, (out.detach().argmax(-1) == hard_labels(target)).float().mean()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mixed batch's loss; metrics per task weighted by its share of this micro-batch (`step_metrics` turns the
        step's sums into per-task means). A head with no image in this micro-batch joins the graph at zero weight, so
        that every parameter has a gradient (DistributedDataParallel needs that)."""
        outs = model.forward_tasks(x, y["task"])
        n = len(x)
        loss = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for plan in self.plans:
            if plan.name not in outs:
                loss = loss + sum(p.sum() for p in model.heads[plan.name].parameters()) * 0.0
                continue
            idx, out = outs[plan.name]
            task_loss, acc = self.task_loss(plan, out, y[plan.name].index_select(0, idx))
            share = torch.tensor(len(idx) / n, device=x.device)
            loss = loss + plan.loss_weight * share * task_loss
            metrics[f"loss_{plan.name}"] = task_loss.detach() * share
            metrics[f"acc_{plan.name}"] = acc * share
            metrics[f"share_{plan.name}"] = share
        return loss, metrics

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """A logged step's metrics with each task's loss and accuracy as means over its images (train_step summed them
        weighted by the task's share of each micro-batch)."""
        out = dict(metrics)
        for plan in self.plans:
            share = out.pop(f"share_{plan.name}", 0.0)
            for k in (f"loss_{plan.name}", f"acc_{plan.name}"):
                if k in out:
                    if share > 0:
                        out[k] = out[k] / share
                    else:
                        out.pop(k)
        return out

    def evaluate(self, model: nn.Module, batches: dict[str, Any], precision: str = "fp32") -> dict:
        """Each task's scores on its batches (classify.evaluate's, evaluate_segmentation's), by task name, and "score":
        the mean of the tasks' main scores (top-1, mIoU); "n": the images, all tasks together."""
        from vitkit.evaluate.classify import evaluate
        from vitkit.evaluate.segmentation import evaluate_segmentation
        from vitkit.heads.multitask import TaskView

        out: dict[str, Any] = {}
        for plan in self.plans:
            if plan.name not in batches:
                continue
            view = TaskView(model, plan.name)
            if plan.kind == "segmentation":
                k = model.config.task(plan.name).num_classes
                out[plan.name] = evaluate_segmentation(view, batches[plan.name], k, self.ignore_index, precision,
                                                       self.class_names.get(plan.name))
            else:
                out[plan.name] = evaluate(view, batches[plan.name], precision)
        return self.summary(out)

    def summary(self, per_task: dict[str, dict]) -> dict:
        out: dict[str, Any] = dict(per_task)
        mains = [per_task[p.name].get(MAIN[p.kind]) for p in self.plans if p.name in per_task and per_task[p.name].get("n")]
        out["score"] = sum(mains) / len(mains) if mains and None not in mains else float("nan")
        out["n"] = sum(int(r.get("n", 0)) for r in per_task.values())
        return out

    def log_row(self, res: dict) -> dict:
        """Evaluation results as one metrics.jsonl line: "score", "n" and each task's numbers as NAME/KEY."""
        row = {k: v for k, v in res.items() if not isinstance(v, dict)}
        for plan in self.plans:
            for k, v in res.get(plan.name, {}).items():
                if isinstance(v, (int, float)) and k != "n":
                    row[f"{plan.name}/{k}"] = v
        return row

    def reduce_eval(self, res: dict, env: Any) -> dict:
        """Each task's results combined over the processes as its kind's are (a segmentation's confusion matrices
        summed, a classification's means weighted by images); the nested results keep numbers and per-class dicts."""
        from vitkit.objectives.segmentation import Segmentation
        from vitkit.train import distributed

        per_task = {}
        for plan in self.plans:
            if plan.name not in res:
                continue
            r = res[plan.name]
            if env.active:
                if plan.kind == "segmentation":
                    k = len(r["confusion"])
                    r = Segmentation(k, self.ignore_index, self.class_names.get(plan.name)).reduce_eval(r, env)
                else:
                    r = distributed.reduce_eval(r, env)
            per_task[plan.name] = {k: v for k, v in r.items() if v is None or isinstance(v, (int, float, dict))}
        return self.summary(per_task)

    def train_flops(self, model_cfg: Any, image_size: int | None = None) -> int:
        """FLOPs of one training image: the encoder's forward and backward and each head's, the heads weighted by their
        share of the batch (counted on the meta device: nothing is computed)."""
        from torch.utils.flop_counter import FlopCounterMode

        from vitkit.heads.multitask import MultitaskModel

        cfg = model_cfg.at_size(image_size) if image_size is not None else model_cfg
        size = cfg.image_size
        h, w = (size, size) if isinstance(size, int) else size
        total = 0.0
        with torch.device("meta"):
            model = MultitaskModel.from_config(cfg).train()
            for plan, share in zip(self.plans, self.shares):
                counter = FlopCounterMode(display=False)
                with counter:
                    model(torch.empty(1, cfg.in_chans, h, w), plan.name).float().sum().backward()
                total += counter.get_total_flops() * share / sum(self.shares)
        return int(round(total))
