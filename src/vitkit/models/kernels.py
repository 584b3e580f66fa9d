"""Dense layers on the CPU through oneDNN, with the activation or the residual add fused in.

Why: PyTorch's CPU `F.linear` in fp32 goes to MKL, which on AMD CPUs (this project's machines: EPYC Zen 4,
AVX-512) runs about half as fast as oneDNN on the same cores: measured 200 vs 420-430 GFLOP/s for
ViT-B's (1576 x 3072) x (3072 x 768) product, and 330-390 GFLOP/s for its two backward products.
oneDNN also fuses GELU (erf) or the residual add into the GEMM's output, which saves a pass over the
activations at inference (bf16 weights: GELU alone cost a fifth of fc1). `torch.ops.mkldnn._linear_pointwise`
is the op torch.compile's inductor emits for frozen CPU graphs; vitkit calls it in eager mode.

Where it applies (else plain `F.linear`): CPU tensors of one dtype, fp32 or bf16, no autocast (autocast
already sends bf16 GEMMs to oneDNN), not while torch.compile traces (inductor picks its own kernels),
plain tensors only (FSDP's DTensors and other subclasses take the ordinary path). Without autograd
(evaluation, `InferenceModel`) the fused forms are used; with autograd (fp32 training) a custom autograd
function computes the backward products through oneDNN too. `VITKIT_ONEDNN=0` switches it all off.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


def _find_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
        op.binary  # noqa: B018  (both overloads are needed)
    except (AttributeError, RuntimeError):
        return None
    return op


_OP = _find_op()
_OFF = [0]  # depth of `plain_kernels()` blocks


def onednn_available() -> bool:
    """True when the fused oneDNN dense layer is on: the op is built in, oneDNN enabled, not switched off."""
    return (_OP is not None and not _OFF[0] and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and os.environ.get("VITKIT_ONEDNN", "1") != "0")


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """PyTorch's own kernels inside the block (FLOP counters and other tools that only know aten ops)."""
    _OFF[0] += 1
    try:
        yield
    finally:
        _OFF[0] -= 1


def _usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == w.dtype and x.dtype in (torch.float32, torch.bfloat16)
            and type(x) is torch.Tensor and type(w) in (torch.Tensor, nn.Parameter) and x.dim() >= 2
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling() and onednn_available())


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x @ w.T + b through oneDNN (strided views accepted)."""
    return _OP(x, w, b, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x w^T + b with the forward and both backward products on oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _mm(x, w, b)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])  # (M, out)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _mm(g2, w.t(), None).view(x.shape)  # (M, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            dw = _mm(g2.t(), x.reshape(-1, x.shape[-1]).t(), None)  # (out, M) @ (M, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db


def pack_dense_weights(model: nn.Module, rows_hint: int = 1024) -> int:
    """Give every CPU nn.Linear of `model` a copy of its weight in oneDNN's blocked layout, which `dense` uses
    without autograd for as long as the weight is unchanged (its version counter is checked). Measured on
    ViT-B's layers: bf16 GEMMs 10-15% faster, fp32 about 5% (benchmarks/speed.py uses it through
    InferenceModel). The copy costs the weight's memory again. Returns how many layers were packed."""
    try:
        reorder = torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return 0
    n = 0
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and layer.weight.device.type == "cpu" and layer.weight.dtype in (torch.float32, torch.bfloat16):
            w = layer.weight
            layer.__dict__["_vitkit_packed"] = (reorder(w.detach(), rows_hint), w._version, w.dtype)
            n += 1
    return n


def _packed(layer: nn.Linear, w: torch.Tensor) -> torch.Tensor:
    packed = layer.__dict__.get("_vitkit_packed")
    return packed[0] if packed is not None and packed[1] == w._version and packed[2] == w.dtype else w


def dense(x: torch.Tensor, layer: nn.Linear, act: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """`residual + act(layer(x))`, each part optional; act is None or "gelu" (exact, erf).
    Fused through oneDNN where it applies (module docstring), else plain PyTorch; same result within rounding."""
    if act not in (None, "gelu"):
        raise ValueError(f"dense(act={act!r}): only None and 'gelu' are supported")
    w, b = layer.weight, layer.bias
    fast = _usable(x, w)
    grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
    if fast and not grad:  # inference: pre-blocked weight, GELU or the residual add inside the GEMM
        w = _packed(layer, w)
        if residual is not None and act is None and residual.dtype == x.dtype and residual.shape[:-1] == x.shape[:-1]:
            return _OP.binary(x, residual.contiguous(), w, b, "add")
        y = _OP(x, w, b, "gelu", [], "none") if act == "gelu" else _mm(x, w, b)
        return y if residual is None else residual + y
    y = _OneDNNLinear.apply(x, w, b) if fast and x.dtype == torch.float32 else F.linear(x, w, b)
    if act == "gelu":
        y = F.gelu(y)
    return y if residual is None else residual + y
