"""Dense layers on the CPU through oneDNN, with the activation or the residual add fused in; used where they win.

Why: PyTorch's CPU `F.linear` in fp32 goes to MKL, which on AMD CPUs (EPYC Zen 4, AVX-512) runs about half
as fast as oneDNN on the same cores: measured 200 vs 420-430 GFLOP/s for ViT-B's (1576 x 3072) x
(3072 x 768) product, and 330-390 GFLOP/s for its two backward products. oneDNN also fuses GELU (erf) or
the residual add into the GEMM's output, which saves a pass over the activations at inference (bf16
weights: GELU alone cost a fifth of fc1). `torch.ops.mkldnn._linear_pointwise` is the op torch.compile's
inductor emits for frozen CPU graphs; vitkit calls it in eager mode. On an AVX2-only EPYC MKL and oneDNN
are equal, and on Intel CPUs MKL is at home: there the plain path is kept.

Where it runs: only inside the fast blocks that `vitkit.models.fast` swaps into a model (the reference
model in models/vit.py calls plain nn.Linear), for CPU tensors of one dtype, fp32 or bf16, no autocast
(autocast already sends bf16 GEMMs to oneDNN), not while torch.compile traces, plain tensors only (tensor
subclasses such as FakeTensors take the ordinary path; FSDP2 computes on unsharded plain parameters, so its
blocks can use it), and only for a dtype where it wins on this machine:
`choices()` measures both paths once (a fraction of a second) and caches the verdict per CPU model, torch
version and thread count in the user's cache directory. `VITKIT_ONEDNN=1` / `=0` forces it on / off
(bf16 still only where the CPU can run oneDNN's bf16 kernels); `plain_kernels()` turns it off in a block.
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
import weakref
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit import runtime


def _find_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
        op.binary  # noqa: B018  (both overloads are needed)
    except (AttributeError, RuntimeError):
        return None
    return op


_OP = _find_op()
_OFF = [0]  # depth of `plain_kernels()` blocks
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
_CHOICES: dict[str, dict] = {}  # this process's measurements, by cache key
_VERDICT: dict[tuple, bool] = {}  # (dtype, threads, VITKIT_CPU) -> on


def _op_runs(dtype: torch.dtype) -> bool:
    """The op exists, oneDNN is on, and (bf16) the CPU can run oneDNN's bf16 kernels."""
    return (_OP is not None and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and (dtype != torch.bfloat16 or _bf16_runs(os.environ.get("VITKIT_CPU"))))


@functools.lru_cache(maxsize=None)
def _bf16_runs(forced_kind: str | None) -> bool:
    return runtime.onednn_bf16_runs()


def _verdict_name(dtype: torch.dtype, train: bool) -> str:
    return "fp32_train" if train and dtype == torch.float32 else _DTYPES[dtype]


def onednn_available(dtype: torch.dtype = torch.float32, train: bool = False) -> bool:
    """True when the oneDNN dense layer is used for `dtype` now (`train`: with autograd, forward and both
    backward products): it can run, is not switched off, and wins on this machine (or VITKIT_ONEDNN=1)."""
    if _OFF[0] or not _op_runs(dtype):
        return False
    forced = os.environ.get("VITKIT_ONEDNN", "")
    if forced in ("0", "1"):
        return forced == "1"
    key = (dtype, train, torch.get_num_threads(), os.environ.get("VITKIT_CPU"))
    if key not in _VERDICT:  # a dict look-up per call; the measurement happens once
        _VERDICT[key] = choices()[_verdict_name(dtype, train)]["on"]
    return _VERDICT[key]


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """PyTorch's own kernels inside the block (FLOP counters and other tools that only know aten ops)."""
    _OFF[0] += 1
    try:
        yield
    finally:
        _OFF[0] -= 1


CACHE = "kernels.json"  # in runtime.cache_dir()


def _cache_key() -> str:
    return f"{runtime.machine_key()} | torch {torch.__version__}"


def _gflops(fn, flops: float, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def measure(dtype: torch.dtype, reps: int = 7, train: bool = False) -> dict:
    """Both paths on two ViT-shaped products (B/16's fc1 at 1024 rows, the fashion-mnist model's fc1 at
    4096 rows), interleaved, median of `reps`; bf16 as inference runs it (packed weight, GELU fused);
    `train` (fp32): forward and both backward products, as a training step runs them."""
    if not _op_runs(dtype):
        return {"on": False, "why": "the oneDNN op cannot run on this CPU / build"}
    out: dict = {}
    g = torch.Generator().manual_seed(0)
    t_torch = t_onednn = 0.0  # time of each path over both shapes (FLOPs / speed): a time-weighted comparison
    for m, k, n in ((1024, 768, 3072), (4096, 128, 256)):
        with torch.inference_mode(False):  # callers may be evaluating; the training measurement needs autograd
            torch_gflops, onednn_gflops = _measure_shape(dtype, reps, train, m, k, n, g)
        flops = 2.0 * m * k * n
        t_torch, t_onednn = t_torch + flops / torch_gflops, t_onednn + flops / onednn_gflops
        out[f"torch_gflops_{m}x{k}x{n}"], out[f"onednn_gflops_{m}x{k}x{n}"] = torch_gflops, onednn_gflops
    ratio = t_torch / t_onednn  # > 1: oneDNN takes less time over both shapes
    out.update(ratio=ratio, on=ratio > 1.05, why=f"measured: oneDNN {ratio:.2f}x the time-weighted speed of PyTorch's own kernels")
    return out


def _measure_shape(dtype: torch.dtype, reps: int, train: bool, m: int, k: int, n: int,
                   g: torch.Generator) -> tuple[float, float]:
    """Median GFLOP/s of PyTorch's path and of oneDNN's on one (m x k) @ (k x n) product."""
    x = torch.randn(m, k, generator=g).to(dtype).requires_grad_(train)
    w = torch.randn(n, k, generator=g).to(dtype).requires_grad_(train)
    b = torch.randn(n, generator=g).to(dtype).requires_grad_(train)
    flops = 2.0 * m * k * n * (3 if train else 1)
    if train:
        grad = torch.randn(m, n, generator=g)
        plain = lambda: F.linear(x, w, b).backward(grad)  # noqa: E731
        fast = lambda: _OneDNNLinear.apply(x, w, b).backward(grad)  # noqa: E731
    elif dtype == torch.bfloat16:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
        plain = lambda: F.gelu(F.linear(x, w, b))  # noqa: E731
        fast = lambda: _OP(x, packed, b, "gelu", [], "none")  # noqa: E731
    else:
        plain = lambda: F.linear(x, w, b)  # noqa: E731
        fast = lambda: _OP(x, w, b, "none", [], "")  # noqa: E731
    with torch.set_grad_enabled(train):
        for _ in range(2):  # warm-up (threads, caches, the blocked layout's first use)
            plain(), fast()
        a, c = [], []
        for _ in range(reps):  # interleaved: drift hits both alike
            a.append(_gflops(plain, flops, 1))
            c.append(_gflops(fast, flops, 1))
    return statistics.median(a), statistics.median(c)


USES = ("fp32", "fp32_train", "bf16")


def _forced() -> str:
    value = os.environ.get("VITKIT_ONEDNN", "")
    if value not in ("", "0", "1"):
        raise ValueError(f"VITKIT_ONEDNN={value!r}: set 0 (off), 1 (on), or unset it (measured per machine)")
    return value


def _valid(entry: object) -> bool:
    """A cached verdict vitkit wrote: every use, each with a boolean "on"."""
    return isinstance(entry, dict) and all(isinstance(entry.get(u), dict) and isinstance(entry[u].get("on"), bool) for u in USES)


def choices() -> dict[str, dict]:
    """Per use ("fp32" and "bf16" inference, "fp32_train" with autograd): {"on": bool, "why": str, ...},
    measured once per machine and cached
    (~/.cache/vitkit/kernels.json, or $VITKIT_CACHE_DIR); VITKIT_ONEDNN=0/1 overrides the verdict."""
    key = _cache_key()
    if key not in _CHOICES:
        entry = runtime.read_cache(CACHE).get(key)
        if not _valid(entry):  # absent, from an older vitkit, or damaged: measure again
            entry = {"fp32": measure(torch.float32), "fp32_train": measure(torch.float32, train=True),
                     "bf16": measure(torch.bfloat16)}
            runtime.update_cache(CACHE, key, entry)
        _CHOICES[key] = entry
    forced = _forced()
    out = {}
    for name, dtype in (("fp32", torch.float32), ("fp32_train", torch.float32), ("bf16", torch.bfloat16)):
        e = dict(_CHOICES[key][name])
        if forced in ("0", "1"):
            e.update(on=forced == "1" and _op_runs(dtype), why=f"forced by VITKIT_ONEDNN={forced}"
                     + ("" if forced == "0" or _op_runs(dtype) else " (but the op cannot run on this CPU)"))
        out[name] = e
    return out


def _usable(x: torch.Tensor, w: torch.Tensor, train: bool = False) -> bool:
    return (x.device.type == "cpu" and x.dtype == w.dtype and x.dtype in _DTYPES
            and type(x) is torch.Tensor and type(w) in (torch.Tensor, nn.Parameter) and x.dim() >= 2
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and onednn_available(x.dtype, train))


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
        w = getattr(layer, "weight", None)
        if (isinstance(layer, nn.Linear) and w.device.type == "cpu" and w.dtype in _DTYPES and type(w) in (torch.Tensor, nn.Parameter)
                and onednn_available(w.dtype)):
            try:
                layer.__dict__["_vitkit_packed"] = (reorder(w.detach(), rows_hint), w._version, w.dtype, weakref.ref(w))
            except RuntimeError:  # a CPU or build the blocked layout does not support: the plain weight serves
                continue
            n += 1
    return n


def _packed(layer: nn.Linear, w: torch.Tensor) -> torch.Tensor:
    packed = layer.__dict__.get("_vitkit_packed")
    fresh = packed is not None and packed[3]() is w and packed[1] == w._version and packed[2] == w.dtype  # same tensor, unchanged
    return packed[0] if fresh else w


def dense(x: torch.Tensor, layer: nn.Linear, act: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """`residual + act(layer(x))`, each part optional; act is None, "gelu" (exact, erf) or "gelu_tanh" (its tanh
    approximation). Fused through oneDNN where it applies (module docstring), else plain PyTorch; same result within
    rounding."""
    if act not in (None, "gelu", "gelu_tanh"):
        raise ValueError(f"dense(act={act!r}): only None, 'gelu' and 'gelu_tanh' are supported")
    approximate = "tanh" if act == "gelu_tanh" else "none"
    w, b = layer.weight, layer.bias
    grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
    fast = _usable(x, w, grad)
    if fast and not grad:  # inference: pre-blocked weight, GELU or the residual add inside the GEMM
        w = _packed(layer, w)
        if residual is not None and act is None and residual.dtype == x.dtype and residual.shape[:-1] == x.shape[:-1]:
            return _OP.binary(x, residual.contiguous(), w, b, "add")
        y = _OP(x, w, b, "gelu", [], approximate) if act else _mm(x, w, b)
        return y if residual is None else residual + y
    y = _OneDNNLinear.apply(x, w, b) if fast and x.dtype == torch.float32 else F.linear(x, w, b)
    if act:
        y = F.gelu(y, approximate=approximate)
    return y if residual is None else residual + y
