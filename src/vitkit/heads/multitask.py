"""Several tasks on one ViT encoder: a head per task on the same token states (the paper's closing direction,
multitask learning).

A task is a classification (a zero-initialised linear classifier on the encoder's image representation: its class
token or average pool, as `pool` sets, after the final LayerNorm; paper eq. 4) or a semantic segmentation (one of
SETR's heads on the patch tokens laid back on their grid, heads/segmentation.py). The encoder runs once per image
whatever the task; `model(x, task)` gives that task's outputs, `model.forward_tasks(x, task_of_image)` the outputs of
each image's own task (what joint training computes: one encoder pass for the mixed batch, each head on its images).

A MultitaskModel's `config` is a `MultitaskModelConfig` (arch "multitask": the encoder's config and one record per task:
its name, kind, classes, head and the data it was trained on), registered with models/registry.py, so that vitkit's
format saves and loads it as any model, every head with it (weights under encoder.* and heads.NAME.*).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from vitkit.heads.segmentation import HEADS, NORMS, EncoderRecord, OnEncoder, make_head, strip_classifier, token_grid
from vitkit.models.registry import ARCHS, build_model, config_from_dict, config_to_dict

KINDS = ("classification", "segmentation")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # a task's name: a module key, a metric prefix, a file name part


@dataclass
class TaskSpec:
    """One task of a MultitaskModel: its `name` (unique in the model), `kind` (classification | segmentation), class
    names (`classes`: their number is the head's), the data it was trained on (`data`, e.g. "digits", "canvas": what
    `vitkit eval` scores it on by default) and, for segmentation, the head (heads/segmentation.py)."""

    name: str
    kind: str
    classes: list[str]
    data: str = ""
    head: str = "linear"  # segmentation: linear | progressive
    channels: int = 256  # segmentation, progressive: the convolutions' channels
    norm: str = "group"  # segmentation, progressive: batch | group

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ValueError(f"task name {self.name!r}: lower-case letters, digits, '-' and '_', starting with a letter or "
                             f"digit")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if len(self.classes) < (1 if self.kind == "segmentation" else 2):
            raise ValueError(f"task {self.name!r}: {len(self.classes)} class(es); a {self.kind} needs "
                             f"{'one' if self.kind == 'segmentation' else 'two'} at least")
        if self.head not in HEADS or self.norm not in NORMS:
            raise ValueError(f"task {self.name!r}: head={self.head!r}, norm={self.norm!r}: heads are {HEADS}, norms {NORMS}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.kind == "classification":  # a classifier has no head options
            for k in ("head", "channels", "norm"):
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - valid)
        if bad or not {"name", "kind", "classes"} <= set(d):
            raise ValueError(f"a multitask model's task record holds {sorted(valid)} (name, kind and classes at least), "
                             f"not {sorted(d)}")
        return cls(**{**d, "classes": [str(c) for c in d["classes"]]})


@dataclass
class MultitaskModelConfig(EncoderRecord):
    """A MultitaskModel's architecture (arch "multitask"): the encoder's config (without a classifier) and its tasks,
    in order. The encoder's size, channels and name are the model's."""

    encoder: Any  # ViTConfig (a plain ViT or a hybrid) or AxialViTConfig
    tasks: list[TaskSpec] = field(default_factory=list)
    arch = "multitask"  # the record's kind (models/registry.py ARCHS), not a field

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a multitask model needs one task at least")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"multitask task names {names}: each once")

    @property
    def num_classes(self) -> int:
        """No one classifier: vitkit's verbs ask a multitask model for its tasks' instead."""
        return 0

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"task {name!r}: the model's tasks are {', '.join(t.name for t in self.tasks)}")

    def at_size(self, image_size: int | tuple[int, int]) -> "MultitaskModelConfig":
        return dataclasses.replace(self, encoder=dataclasses.replace(self.encoder, image_size=image_size))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "encoder": config_to_dict(self.encoder), "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MultitaskModelConfig":
        bad = sorted(set(d) - {"arch", "encoder", "tasks"})
        if bad or "encoder" not in d or not isinstance(d.get("tasks"), list):
            raise ValueError(f"a multitask model's record holds arch, encoder and tasks (a list), not {sorted(d)}")
        return cls(config_from_dict(d["encoder"]), [TaskSpec.from_dict(t) for t in d["tasks"]])


class MultitaskModel(OnEncoder, nn.Module):
    """A ViT encoder and a head per task (`heads`, a ModuleDict by task name). The encoder's own classifier and
    pre-logits layer are removed (they take no part, and parameters without gradients break DDP); every head's last
    layer starts at zero (every task starts at the uniform prediction, as a fine-tuning head does, section 3.2)."""

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec]):
        super().__init__()
        strip_classifier(encoder, "a multitask model")
        self.encoder = encoder
        self.config = MultitaskModelConfig(encoder.config, list(tasks))
        self.heads = nn.ModuleDict({t.name: self._head(t) for t in self.config.tasks})

    @classmethod
    def from_config(cls, cfg: MultitaskModelConfig) -> "MultitaskModel":
        return cls(build_model(cfg.encoder), cfg.tasks)

    @torch.no_grad()
    def _head(self, t: TaskSpec) -> nn.Module:
        if t.kind == "segmentation":
            return make_head(self.encoder, t.num_classes, t.head, t.channels, t.norm, zero=True)
        head = nn.Linear(self.encoder.config.width, t.num_classes).to(next(self.encoder.parameters()).device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.config.tasks

    def reset_head(self, task: str, zero: bool = True) -> None:
        """Task `task`'s head made anew (zero-initialised last layer; `zero=False`: PyTorch's initialisation)."""
        t = self.config.task(task)
        self.heads[task] = self._head(t)
        if not zero:  # PyTorch's initialisation of every layer (a classifier is its Linear itself)
            for m in self.heads[task].modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()

    def head_outputs(self, task: str, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Task `task`'s outputs from the encoder's token states of images of `size`: logits (B, K), or per-pixel
        logits (B, K, H, W) for a segmentation."""
        t = self.config.task(task)
        if t.kind == "segmentation":
            return self.heads[task](token_grid(self.encoder, tokens, size), size)
        return self.heads[task](self.encoder.forward_head(tokens, pre_logits=True))

    def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor:
        """Task `task`'s outputs (None: the model's only task)."""
        if task is None:
            if len(self.tasks) != 1:
                raise ValueError(f"a multitask model of {len(self.tasks)} tasks: name one "
                                 f"({', '.join(t.name for t in self.tasks)})")
            task = self.tasks[0].name
        return self.head_outputs(task, self.encoder.forward_features(x), tuple(x.shape[-2:]))

    def forward_tasks(self, x: torch.Tensor, task_of_image: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One encoder pass over a batch mixing tasks; `task_of_image` (B,) holds each image's task index (in
        `tasks`' order). Returns, for each task present, (the indices of its images in the batch, its outputs on them)."""
        tokens = self.encoder.forward_features(x)
        size = tuple(x.shape[-2:])
        out = {}
        for i, t in enumerate(self.tasks):
            idx = (task_of_image == i).nonzero().flatten()
            if len(idx):
                out[t.name] = (idx, self.head_outputs(t.name, tokens.index_select(0, idx), size))
        return out


class TaskView(nn.Module):
    """One task of a MultitaskModel as a model of its own: `view(x)` is `model(x, task)`; what the verbs that take a
    single-task model (evaluation, prediction) are given. Its parameters are the model's (nothing is copied)."""

    def __init__(self, model: MultitaskModel, task: str):
        super().__init__()
        self.model, self.task = model, model.config.task(task).name
        self.spec = model.config.task(task)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.task)


ARCHS["multitask"] = (MultitaskModelConfig, MultitaskModel.from_config, "multitask model")
