"""Fast inference: eval mode, no autograd, optional bf16 weights (the CPU's AVX-512 BF16, a GPU's tensor
cores) and optional torch.compile with inductor's freezing.

bf16 here means a bf16 copy of the weights made once (the wrapped model is left in fp32), not autocast:
autocast re-casts every weight on every call and keeps LayerNorm outputs in fp32, so every GEMM input is
cast again; with bf16 weights the dense layers run through oneDNN with GELU and the residual adds fused
(`vitkit.models.kernels`). Measured on ViT-B/16 224, batch 8, 2 cores: benchmarks/speed.py.
Compiling costs a one-off delay (seconds to a minute), so it is opt-in (`vitkit eval --compile`)."""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn

from vitkit.models.kernels import pack_dense_weights


def bf16_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with bf16 floating-point parameters and buffers, made without a transient fp32 copy."""
    memo: dict[int, object] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            cast = t.detach().to(torch.bfloat16)
            memo[id(t)] = nn.Parameter(cast, requires_grad=False) if isinstance(t, nn.Parameter) else cast
    return copy.deepcopy(model, memo)


class InferenceModel(nn.Module):
    """`InferenceModel(model, precision="bf16", compile=True)(images)` -> fp32 logits. fp32 runs the wrapped
    model itself (it must not be trained while compiled: its weights are frozen constants); bf16 runs a bf16
    copy (dense weights pre-blocked for oneDNN), so later changes to the wrapped model's weights are not seen."""

    def __init__(self, model: nn.Module, precision: str = "fp32", compile: bool = False):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}: choose 'fp32' or 'bf16'")
        self.bf16 = precision == "bf16"
        self.model = bf16_copy(model.eval()) if self.bf16 else model.eval()
        if self.bf16 and not compile:  # the copy is ours: its dense weights can be pre-blocked for oneDNN
            pack_dense_weights(self.model)
        self.config = getattr(model, "config", None)
        # a plain attribute, not a second registered sub-module: the weights appear once in state_dict()
        self.__dict__["fn"] = torch.compile(self.model, options={"freezing": True}) if compile else self.model
        super().train(False)

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an InferenceModel is for inference only; train the model it wraps instead")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.to(torch.bfloat16) if self.bf16 else x).float()


def inference_model(model: nn.Module, precision: str = "fp32", compile: bool = False) -> InferenceModel:
    return InferenceModel(model, precision, compile)
