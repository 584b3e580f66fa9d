"""Memory per rank for training, computed without allocating anything: the model is built on the meta
device and one training forward is traced with saved-tensor hooks, which see every tensor autograd keeps
for the backward pass (their sizes are exact; memory is counted once per storage).

    python -m vitkit.train.memory ViT-B/16 ViT-L/16 ViT-H/14 --sizes 224,384 --world 8 --batch 32

Model state is 16 bytes per parameter with AdamW in fp32 (weights 4, gradients 4, two moments 8): every
rank holds all of it under DDP, 1/world of it under FSDP, plus, under FSDP, the gathered weights of the
unit being computed (one transformer block, twice with prefetch). Transient workspace (attention
scratch, the all-reduce buckets, the allocator's slack) is not counted: leave 10-20% headroom.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vitkit.models.registry import create_model

GIB = 2**30


class _FusedAttentionSaves(torch.autograd.Function):
    """What the fused attention kernels keep for the backward pass (flash attention on GPUs, its CPU
    counterpart): q, k, v, the output and one float32 log-sum-exp per row; shapes only (the meta device)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, n, _ = q.shape  # laid out (B, N, h, d), as the kernels write it: merging the heads after is a view
        out = q.new_empty(b, n, h, v.shape[-1]).transpose(1, 2)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        raise RuntimeError("vitkit.train.memory counts what the forward keeps; it has no backward pass")


class _fused_attention(TorchFunctionMode):
    """On the meta device, attention as the fused kernels store it, not the T x T weights that the composite
    fallback keeps there (1.7x too much for ViT-B/16 at 384 px). A function mode: only the calls made inside
    the `with` block are affected, nothing is patched."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and kwargs.get("attn_mask") is None and len(args) == 3:
            return _FusedAttentionSaves.apply(*args)
        return func(*args, **kwargs)


def activation_bytes(name: str, image_size: int, batch: int = 1, checkpointing: bool = False,
                     device: str = "meta", **overrides: Any) -> int:
    """Bytes autograd keeps between forward and backward for `batch` images (the peak of the backward
    pass is about this plus one block's worth). `device="cpu"` runs it for real (tests compare the two)."""
    # keyed by the storage object (one per storage: views of one tensor count once), kept alive beside its size
    seen: dict[int, tuple[torch.UntypedStorage, int]] = {}
    weights: set[int] = set()

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if id(st) not in weights:  # parameters are model state, counted apart
            seen[id(st)] = (st, max(seen.get(id(st), (st, 0))[1], st.nbytes()))
        return t

    meta = torch.device(device).type == "meta"
    with torch.device(device), _fused_attention() if meta else contextlib.nullcontext():
        model = create_model(name, image_size=image_size, **overrides)
        model.train()
        model.set_grad_checkpointing(checkpointing)
        params = [p.untyped_storage() for p in model.parameters()]  # alive while counting, so their ids stay theirs
        weights.update(id(st) for st in params)
        x = torch.empty(batch, model.config.in_chans, image_size, image_size)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x).sum()  # kept alive while counting: its graph holds the saved tensors
    total = sum(nbytes for _, nbytes in seen.values())
    del out
    return total


def per_rank(name: str, image_size: int, batch_per_rank: int, world: int, parallel: str,
             checkpointing: bool = False) -> dict[str, Any]:
    """GiB per rank: model state (+ gathered unit under FSDP) and activations for `batch_per_rank` images."""
    with torch.device("meta"):
        model = create_model(name, image_size=image_size)
    params = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    state = 16 * params / (world if parallel == "fsdp" else 1)
    gathered = 2 * 4 * block if parallel == "fsdp" else 0
    act = activation_bytes(name, image_size, batch_per_rank, False)
    if checkpointing:  # the block inputs, plus one block's activations while it is recomputed
        act = activation_bytes(name, image_size, batch_per_rank, True) + act / model.config.depth
    return {"model": name, "image_size": image_size, "params": params, "parallel": parallel, "world": world,
            "batch_per_rank": batch_per_rank, "checkpointing": checkpointing,
            "state_gib": (state + gathered) / GIB, "activations_gib": act / GIB, "total_gib": (state + gathered + act) / GIB}


def oom_advice(model_name: str, image_size: int, overrides: dict[str, Any], params: int, micro: int, per_rank: int,
               device_bytes: int, checkpointing: bool = False) -> str:
    """One line for a CUDA out-of-memory error: this estimate for the micro-batch that failed, and the
    largest micro-batch (a divisor of the per-rank batch) the estimate fits in 85% of the device."""
    per_image = activation_bytes(model_name, image_size, 1, checkpointing, **overrides)
    state = 16 * params
    fits = [m for m in range(1, per_rank + 1) if per_rank % m == 0 and state + m * per_image <= 0.85 * device_bytes]
    want = (state + micro * per_image) / GIB
    hint = (f"try --set train.micro_batch_size={max(fits)} (same results, by accumulation)" if fits and max(fits) < micro
            else "try --set train.activation_checkpointing=true, a smaller model or image size, or train.parallel=fsdp")
    return (f"about {want:.1f} GiB estimated for micro-batch {micro} ({state / GIB:.1f} GiB weights, gradients and AdamW "
            f"state + {per_image * micro / GIB:.1f} GiB activations) on a device of {device_bytes / GIB:.1f} GiB; {hint}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["ViT-B/16", "ViT-L/16", "ViT-H/14"])
    ap.add_argument("--sizes", default="224,384")
    ap.add_argument("--batch", type=int, default=32, help="images per rank")
    ap.add_argument("--world", type=int, default=8, help="ranks, for FSDP's shards")
    args = ap.parse_args(argv)
    print(f"GiB per rank, AdamW, fp32, {args.batch} images per rank, FSDP over {args.world} ranks")
    print(f"{'model':<10} {'px':>4} {'params':>7} {'DDP':>7} {'FSDP':>7} {'FSDP+AC':>8}   state DDP / FSDP, activations / with AC")
    for name in args.models:
        with torch.device("meta"):
            patch = create_model(name).config.patch_size
        patch = patch if isinstance(patch, int) else patch[0]
        for size in (patch * round(int(s) / patch) for s in args.sizes.split(",")):  # 384 -> 378 for /14
            ddp = per_rank(name, size, args.batch, args.world, "ddp")
            fsdp = per_rank(name, size, args.batch, args.world, "fsdp")
            ac = per_rank(name, size, args.batch, args.world, "fsdp", True)
            print(f"{name:<10} {size:>4} {ddp['params'] / 1e6:>6.0f}M {ddp['total_gib']:>7.1f} {fsdp['total_gib']:>7.1f} "
                  f"{ac['total_gib']:>8.1f}   {ddp['state_gib']:.1f} / {fsdp['state_gib']:.2f}, "
                  f"{ddp['activations_gib']:.1f} / {ac['activations_gib']:.2f}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # an unknown model name or a size its patch does not divide: say which, no traceback
        raise SystemExit(f"vitkit.train.memory: error: {err}") from None


# --- inference: a guard against a job that cannot fit ------------------------------------------------------------


def inference_bytes(cfg: Any, batch: int, explicit_attention: bool = False, dtype_bytes: int = 4) -> int:
    """An upper estimate of the memory a forward pass without autograd holds at its peak for `batch` images: the
    input images, the largest per-block working set (q, k, v and the attention output beside the residual stream, or
    the MLP's hidden layer), the T x T weights of every head when attention is explicit (ONNX Runtime, OpenVINO),
    and for a convolutional stem its first stage's feature maps. No allocation; the config alone."""
    h, w = (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else cfg.image_size
    per_image = 2 * cfg.in_chans * h * w * 4  # the float32 input and a resized / normalised copy
    vit = hasattr(cfg, "width")  # a ViT or a hybrid; else a BiT ResNet
    stem = cfg.resnet if vit else cfg  # what has the ResNet's width factor; None for a plain ViT
    if vit:
        gh, gw = cfg.grid
        tokens = gh * gw + cfg.num_prefix_tokens
        block = tokens * max(5 * cfg.width, cfg.mlp_dim + 2 * cfg.width)
        if explicit_attention:
            block += 2 * cfg.heads * tokens * tokens  # the scores and their softmax
        per_image += block * dtype_bytes + tokens * cfg.width * 4  # + the position embeddings' share
    if stem is not None:  # the first stage's input, output and residual: 256 x width factor channels at 1/4 size
        per_image += 3 * 256 * stem.width_factor * (h // 4) * (w // 4) * dtype_bytes
    return int(batch * per_image)


def available_bytes(device: Any) -> int | None:
    """Memory free for a job on `device` now: a GPU's free memory, the CPU's MemAvailable (Linux) or free physical
    pages; None when the system does not say."""
    import os

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_inference(cfg: Any, batch: int, device: Any, explicit_attention: bool = False, dtype_bytes: int = 4,
                   share: float = 0.9) -> bool:
    """Whether `inference_bytes` stays within `share` of what `device` has available (True when it does not say)."""
    have = available_bytes(device)
    return have is None or inference_bytes(cfg, batch, explicit_attention, dtype_bytes) <= share * have


def check_inference(cfg: Any, batch: int, device: Any, source: str, explicit_attention: bool = False,
                    dtype_bytes: int = 4, share: float = 0.9) -> None:
    """Refuse, before anything runs, a forward pass estimated to need more than `share` of the memory available:
    one line with the estimate, what is available and the largest batch size that fits (or a lower resolution)."""
    if fits_inference(cfg, batch, device, explicit_attention, dtype_bytes, share):
        return
    have, need = available_bytes(device), inference_bytes(cfg, batch, explicit_attention, dtype_bytes)
    one = inference_bytes(cfg, 1, explicit_attention, dtype_bytes)
    fits = int(share * have // one) if one else 0
    size = cfg.image_size if isinstance(cfg.image_size, int) else "x".join(map(str, cfg.image_size))
    hint = (f"use --batch-size {fits} or less" if fits >= 1 else
            "even one image does not fit: use a lower --resolution, or a machine with more memory")
    raise MemoryError(f"{source} at {size} px: about {need / GIB:.1f} GiB estimated for a batch of {batch} "
                      f"({one / GIB:.2f} GiB an image), {have / GIB:.1f} GiB available on {device}; {hint}")
