"""What every format shares: the loading report and shape-checked state-dict assembly (atomic writes: vitkit.atomic)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


@dataclass
class LoadReport:
    """What `load_model` did: where the weights came from and every tensor it could not simply copy."""

    source: str
    format: str
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint lacks (left as initialised)
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors the model has no place for (ignored)
    resampled: list[str] = field(default_factory=list)  # e.g. "pos_embed (1, 197, 768) -> (1, 577, 768)"
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {self.source} ({self.format})"]
        for title, items in (("missing (kept as initialised)", self.missing), ("unexpected (ignored)", self.unexpected),
                             ("resampled", self.resampled), ("notes", self.notes)):
            if items:
                lines.append(f"  {title}:")
                lines.extend(f"    {item}" for item in items)
        if len(lines) == 1:
            lines.append("  every tensor matched")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "format": self.format, "missing": self.missing,
                "unexpected": self.unexpected, "resampled": self.resampled, "notes": self.notes}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, report: LoadReport, strict: bool = True) -> None:
    """Copy a vitkit-named state dict into `model`, checking every shape; a mismatch names the tensor,
    both shapes and what to do. Exact: a tensor the model lacks is an error (its config describes less than the
    file holds, e.g. fewer blocks), unless `strict=False`, which reports it as unexpected and leaves it out."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in the "
                f"model; pass num_classes/image_size to load_model (or --model with the right variant) so the two agree"
            )
    if strict and report.unexpected:
        n = len(report.unexpected)
        raise CheckpointError(
            f"{source}: the checkpoint holds {n} tensor(s) the model it describes has no place for, e.g. {report.unexpected[:5]}; "
            f"its config may describe less than it holds (fewer blocks, no head), or the file has extra parts: load it with "
            f"strict=False (`vitkit convert SRC --out DST --ignore-unexpected`) to leave them out, and check the result"
        )
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(
            f"{source}: the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}; "
            f"is it a checkpoint of this architecture? (pass --from/--model to say what it is)"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)

