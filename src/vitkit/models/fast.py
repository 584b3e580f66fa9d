"""Fast inference: eval mode, no autograd, optional bf16 autocast (the CPU's AVX-512 BF16, a GPU's
tensor cores) and optional torch.compile with inductor's freezing (weights folded in as constants and
pre-packed for the GEMM library). Compiling costs a one-off delay (seconds to a minute) that pays for
long evaluations and serving, not for a few images; so it is opt-in (`vitkit eval --compile`)."""
from __future__ import annotations

import torch
import torch.nn as nn


class InferenceModel(nn.Module):
    """`InferenceModel(model, precision="bf16", compile=True)(images)` -> fp32 logits. The wrapped model
    must not be trained while this holds it (compiled weights are frozen constants)."""

    def __init__(self, model: nn.Module, precision: str = "fp32", compile: bool = False):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}: choose 'fp32' or 'bf16'")
        self.model = model.eval()
        self.config = getattr(model, "config", None)
        self.bf16 = precision == "bf16"
        # a plain attribute, not a second registered sub-module: the weights appear once in state_dict()
        self.__dict__["fn"] = torch.compile(self.model, options={"freezing": True}) if compile else self.model

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an InferenceModel is for inference only; train the model it wraps instead")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.fn(x).float()


def inference_model(model: nn.Module, precision: str = "fp32", compile: bool = False) -> InferenceModel:
    return InferenceModel(model, precision, compile)
