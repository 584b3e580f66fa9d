"""Fast paths, applied to a model from outside: the reference model (models/vit.py) stays the paper's.

`accelerate(model)` swaps each transformer block for a `FastBlock` holding the very same sub-modules and
parameters (state_dict keys unchanged), whose forward takes the kernels that win on this machine:
- dense layers through oneDNN where measured faster (`vitkit.models.kernels`: fp32 on AMD CPUs), with
  GELU fused into fc1 and, in evaluation, the residual adds fused into the output projections;
- attention computed explicitly (two batched matmuls and a softmax) for bf16 / fp16 on the CPU up to 256
  tokens, where PyTorch's fused CPU kernel is slower (measured on an AMD Zen 4, bf16, forward + backward:
  49 tokens 7x, 197 tokens 2.2x; at 577 tokens the fused kernel wins at inference); elsewhere
  `scaled_dot_product_attention` (flash / memory-efficient kernels on GPUs).
The training loop accelerates the model it trains; `InferenceModel` the copy it evaluates.

`InferenceModel(model, precision)`: eval mode, no autograd, a half-precision copy of the weights where the
precision asks for one (not autocast: autocast re-casts every weight on every call and keeps LayerNorm
outputs in fp32), dense weights pre-blocked for oneDNN where it is used, optional torch.compile with
inductor's freezing (a one-off delay, so opt-in: `vitkit eval --compile`).
"""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitkit.models import kernels
from vitkit.runtime import model_device
from vitkit.models.kernels import dense, pack_dense_weights
from vitkit.models.vit import Attention, Block
from vitkit.train.precision import DTYPES, configure_matmul, resolve


def explicit_attention(q: torch.Tensor) -> bool:
    """bf16 / fp16 on the CPU up to 256 tokens (module docstring)."""
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-2] <= 256


def attention(attn: Attention, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head self-attention of `attn`'s weights up to (not including) the output projection: (B, N, D),
    and the weights (B, h, N, N) when asked for."""
    B, N, D = x.shape
    q, k, v = dense(x, attn.qkv).reshape(B, N, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
    drop = attn.attn_drop if attn.training else 0.0
    # InferenceModel's own copies have 1/sqrt(d) folded into the q rows of the qkv weights (`prescale_queries`)
    scale = 1.0 if attn.__dict__.get("_vitkit_q_prescaled") else attn.head_dim**-0.5
    weights = None
    if need_weights or explicit_attention(q):
        # scaling q (N x d) rather than the scores (N x N): fewer multiplies, and it makes q contiguous for the matmul
        w = ((q * scale if scale != 1.0 else q) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
        weights = w if need_weights else None
        x = F.dropout(w, drop, attn.training) @ v
    else:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=scale)  # (B, h, N, d)
    return x.transpose(1, 2).reshape(B, N, D), weights


class FastBlock(Block):
    """A `Block` with the same sub-modules and a forward through the fast kernels; the same function."""

    def __init__(self, block: Block):
        nn.Module.__init__(self)
        self.norm1, self.attn, self.norm2, self.mlp, self.drop_path = block.norm1, block.attn, block.norm2, block.mlp, block.drop_path
        self.train(block.training)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, m = self.attn, self.mlp
        act = "gelu_tanh" if getattr(m, "approximate", "none") == "tanh" else "gelu"
        if not self.training:  # dropout and stochastic depth are identities: the adds fuse into the GEMMs
            y, weights = attention(a, self.norm1(x), need_weights)
            x = dense(y, a.proj, residual=x)
            return dense(dense(self.norm2(x), m.fc1, act=act), m.fc2, residual=x), weights
        y, weights = attention(a, self.norm1(x), need_weights)
        x = x + self.drop_path(a.proj_drop(dense(y, a.proj)))
        x = x + self.drop_path(m.drop(dense(m.drop(dense(self.norm2(x), m.fc1, act=act)), m.fc2)))
        return x, weights


@torch.no_grad()
def prescale_queries(model: nn.Module) -> int:
    """Fold attention's 1/sqrt(d) into the q rows of every fast block's qkv weight and bias (in place, for a
    model of its own, e.g. InferenceModel's half-precision copy); `attention` then skips the scaling. Returns
    how many blocks were changed."""
    n = 0
    for blk in model.modules():
        if type(blk) is FastBlock and not blk.attn.__dict__.get("_vitkit_q_prescaled"):
            a = blk.attn
            D = a.heads * a.head_dim
            a.qkv.weight[:D] *= a.head_dim**-0.5
            if a.qkv.bias is not None:
                a.qkv.bias[:D] *= a.head_dim**-0.5
            a.__dict__["_vitkit_q_prescaled"] = True
            a.register_state_dict_post_hook(_unscaled_state)  # saved or exported, the weights are the model's own
            n += 1
    return n


def _unscale(attn: Attention, t: torch.Tensor) -> torch.Tensor:
    D = attn.heads * attn.head_dim
    t = t.clone()
    t[:D] *= attn.head_dim**0.5
    return t


def _unscaled_state(attn: Attention, state: dict, prefix: str, local_metadata: dict) -> None:
    if attn.__dict__.get("_vitkit_q_prescaled"):
        for name in ("qkv.weight", "qkv.bias"):
            if prefix + name in state:
                state[prefix + name] = _unscale(attn, state[prefix + name])


def _measure_kernels_now(model: nn.Module) -> None:
    """The per-machine kernel verdicts, measured here (once per machine, then cached) rather than inside the
    first forward, where activation checkpointing or inference mode would be in the way."""
    if any(p.device.type == "cpu" for p in model.parameters()):
        kernels.choices()


def accelerate(model: nn.Module) -> nn.Module:
    """Swap every transformer `Block` of `model` (in place) for a `FastBlock`; returns the model. Parameters,
    buffers, state_dict keys and results (within rounding) are unchanged; models without blocks pass through."""
    _measure_kernels_now(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Block:
                setattr(parent, name, FastBlock(child))
    return model


def reference(model: nn.Module) -> nn.Module:
    """The inverse of `accelerate`: plain `Block`s again (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is FastBlock:
                a = child.attn
                if a.__dict__.pop("_vitkit_q_prescaled", False):  # the reference block scales q itself
                    with torch.no_grad():
                        a.qkv.weight.copy_(_unscale(a, a.qkv.weight))
                        if a.qkv.bias is not None:
                            a.qkv.bias.copy_(_unscale(a, a.qkv.bias))
                plain = Block.__new__(Block)
                nn.Module.__init__(plain)
                plain.norm1, plain.attn, plain.norm2, plain.mlp, plain.drop_path = (
                    child.norm1, child.attn, child.norm2, child.mlp, child.drop_path)
                plain.train(child.training)
                setattr(parent, name, plain)
    return model


def cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` with `dtype` floating-point parameters and buffers, made without a transient fp32 copy."""
    memo: dict[int, object] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            cast = t.detach().to(dtype)
            memo[id(t)] = nn.Parameter(cast, requires_grad=False) if isinstance(t, nn.Parameter) else cast
    return copy.deepcopy(model, memo)


def bf16_copy(model: nn.Module) -> nn.Module:
    return cast_copy(model, torch.bfloat16)


class InferenceOnly:
    """A module for inference only (InferenceModel, vitkit.engines.Engine): train(True) is refused, eval stays."""

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"an {type(self).__name__} is for inference only; train the model it serves instead")
        return super().train(False)


class InferenceModel(InferenceOnly, nn.Module):
    """`InferenceModel(model, precision="auto", compile=False)(images)` -> fp32 logits.

    precision: "auto" (bf16 where the hardware has it natively, fp16 on older GPUs, else fp32), "fp32",
    "bf16" or "fp16". fp32 runs a fast-block view of the wrapped model's own weights (it must not be trained
    while compiled: its weights are frozen constants); bf16 / fp16 run a half-precision copy, so later
    changes to the wrapped model's weights are not seen. The wrapped model is put in eval mode, its weights untouched."""

    def __init__(self, model: nn.Module, precision: str = "auto", compile: bool = False):
        super().__init__()
        device = model_device(model)
        self.precision = resolve(precision, device)
        configure_matmul(self.precision, device)  # fp32 on Ampere+ GPUs: TF32 tensor cores, as training does
        _measure_kernels_now(model)
        self.dtype = DTYPES[self.precision]
        model.eval()  # as before: the wrapped model is put in eval mode (fp32 shares its modules)
        if self.dtype == torch.float32:  # a shallow copy: the same parameters, fast blocks in the copy only
            inner = copy.copy(model)
            inner._modules = dict(model._modules)
            if isinstance(getattr(model, "blocks", None), nn.ModuleList):
                inner._modules["blocks"] = nn.ModuleList([FastBlock(b) if type(b) is Block else b for b in model.blocks])
        else:  # our own copy: fast blocks, the attention scale folded in, dense weights pre-blocked where oneDNN is used
            inner = accelerate(cast_copy(model, self.dtype))
            prescale_queries(inner)
            if not compile:
                pack_dense_weights(inner)
        self.model = inner.eval()
        self.config = getattr(model, "config", None)
        # a plain attribute, not a second registered sub-module: the weights appear once in state_dict()
        self.__dict__["fn"] = torch.compile(self.model, options={"freezing": True}) if compile else self.model
        super().train(False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.forward_features(x.to(self.dtype))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        with torch.no_grad():
            return self.model.forward_head(x, pre_logits=pre_logits).float()

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The features before the head (B, D), in fp32: what few-shot evaluation fits."""
        with torch.no_grad():
            return self.model.forward_head(self.model.forward_features(x.to(self.dtype)), pre_logits=True).float()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.to(self.dtype)).float()


def inference_model(model: nn.Module, precision: str = "auto", compile: bool = False) -> InferenceModel:
    return InferenceModel(model, precision, compile)
