"""Inference speed and the largest batch that fits vs input resolution, for ViTs, hybrids, ResNets and axial models:
the paper's appendix D.5 (figure 12: images/s per core, and the largest batch per core, at 64-512 px, on a TPUv3 core).

For each model and resolution:
- throughput: images/s on one thread (--threads) through vitkit's inference path (`vitkit.models.fast.inference_model`, fp32 by default,
  --precision), random weights (speed does not depend on them), a batch sized to about --seconds per call; the
  models are interleaved round by round and the median of --rounds rounds is reported, also divided by the threads;
- the largest batch whose forward pass fits in --memory-gb. On a GPU it is measured: torch.cuda.max_memory_allocated
  of real forward passes, the batch found by bisection (an out-of-memory error counts as not fitting). On a CPU
  nothing is allocated: the model runs on the meta device (shapes only) under `LiveBytes`, a TorchFunctionMode
  (torch.overrides, public) that follows every tensor a torch function returns until its storage is freed, and
  the peak of live bytes plus the weights is the memory of that batch. Memory is affine in the batch: counted at
  two batches, the fitting batch solved for, then checked at it and the next (bisection if it is not affine).

    python benchmarks/inference_scaling.py                       # the default set, about 4 minutes on one core
    python benchmarks/inference_scaling.py --models ViT-B/16,R50x1 --resolutions 224,384 --precision bf16

Writes benchmarks/results/inference_scaling.json (with the CPU, torch version and threads) and inference_scaling.png
beside it (--out). Models this vitkit lacks (e.g. the axial ones on an older checkout) are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import vitkit
from vitkit import progress
from vitkit.models.fast import inference_model
from vitkit.models.registry import describe

HERE = Path(__file__).parent
DEFAULT_MODELS = ("ViT-Ti/16", "ViT-S/16", "ViT-B/16", "R26+ViT-S/32", "R50x1", "Axial-ViT-B/16", "AxialResNet50")
DEFAULT_RESOLUTIONS = (64, 128, 224, 384)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --- memory: the peak of live tensors, counted on the meta device -------------------------------------------------


def _tensors(out) -> list[torch.Tensor]:
    """The tensors in a function's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


class LiveBytes(TorchFunctionMode):
    """Counts the bytes of the tensors alive while torch functions run: each storage a function's output holds is
    counted once (views share it) from its creation until it is freed (a finalizer on the storage, which PyTorch
    keeps as one Python object per storage), so CPython's reference counting frees them as a real run would.
    `peak`: the most bytes alive at once. Tensors made inside one fused op (e.g. scaled_dot_product_attention's
    workspace) are not seen: what a kernel allocates internally is not a torch function's output.

    `ignore`: tensors already resident that are not to be counted again (the weights, the input)."""

    def __init__(self, ignore: list[torch.Tensor] = ()):
        super().__init__()
        self.known = {id(t.untyped_storage()) for t in ignore}
        self._keep = [t.untyped_storage() for t in ignore]  # their ids stay theirs while we count
        self.live = self.peak = 0
        self.sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            s = t.untyped_storage()
            key = id(s)
            if key not in self.known and key not in self.sizes:
                self.sizes[key] = s.nbytes()
                self.live += self.sizes[key]
                weakref.finalize(s, self._free, key)
        self.peak = max(self.peak, self.live)
        return out


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages (a tied weight once)."""
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[id(s)] = s.nbytes()
    return sum(seen.values())


def meta_memory(model: torch.nn.Module, batch: int, size: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a forward pass of `batch` images needs at its peak: the weights (parameters and buffers), the input and the
    most activations alive at once, counted on the meta device (`model` lives there; nothing is allocated)."""
    x = torch.empty(batch, 3, size, size, device="meta", dtype=dtype)
    resident = [*model.parameters(), *model.buffers()]
    counter = LiveBytes(ignore=[*resident, x])
    with torch.inference_mode(), counter:
        model(x)
    return tensor_bytes(resident) + x.untyped_storage().nbytes() + counter.peak


def largest_batch(memory: Callable[[int], float], budget: float, limit: int = 1 << 24) -> int:
    """The largest batch b with memory(b) <= budget (0: not even one image), for memory that grows with b: solved from
    memory(1) and memory(2) as an affine function, then checked there and one above; where that check fails (not
    affine, or a measured memory that jumps) found by bisection. `limit` caps the search."""
    m1 = memory(1)
    if m1 > budget:
        return 0
    slope = memory(2) - m1
    guess = limit if slope <= 0 else min(limit, max(1, int((budget - m1) // slope) + 1))
    if memory(guess) <= budget:
        if guess == limit or memory(guess + 1) > budget:
            return guess
        lo, hi = guess + 1, None  # fits further than affine says: grow until it does not
        while hi is None:
            nxt = min(limit, lo * 2)
            if nxt == lo:
                return lo
            if memory(nxt) <= budget:
                lo = nxt
            else:
                hi = nxt
    else:
        lo, hi = 1, guess
    while hi - lo > 1:  # memory(lo) fits, memory(hi) does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if memory(mid) <= budget else (lo, mid)
    return lo


def cuda_memory(model: torch.nn.Module, batch: int, size: int, dtype: torch.dtype) -> float:
    """Peak bytes allocated by a real forward pass of `batch` images on the GPU (inf when it runs out of memory)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        with torch.inference_mode():
            model(torch.zeros(batch, 3, size, size, device="cuda", dtype=dtype))
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        return float("inf")
    finally:
        torch.cuda.empty_cache()
    return torch.cuda.max_memory_allocated()


# --- the plan ---------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("Model name", platform.machine())
    extra = ", ".join(f"{k.lower()} {fields[k]}" for k in ("CPU family", "Model") if k in fields)
    return f"{name} ({extra})" if extra else name


def cpu_flags() -> list[str]:
    """The flags that decide fast inference paths here (native bf16: avx512_bf16 or AMX)."""
    from vitkit.runtime import cpu_info

    return [f for f in cpu_info().flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")]


def parse_list(text: str, kind: type, option: str) -> list:
    try:
        items = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{option} {text!r}: give a comma-separated list of {kind.__name__}s, e.g. "
                         f"{'64,128,224' if kind is int else 'ViT-B/16,R50x1'}") from None
    if not items:
        raise SystemExit(f"{option}: the list is empty")
    return items


def build(name: str, size: int, device: str, precision: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model on `device` through vitkit's inference path, the same on the meta device for counting memory)."""
    with torch.device(device):
        real = inference_model(vitkit.create_model(name, image_size=size), precision)
    with torch.device("meta"):
        meta = inference_model(vitkit.create_model(name, image_size=size), precision)
    return real, meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated vitkit names (default: %(default)s)")
    p.add_argument("--resolutions", default=",".join(map(str, DEFAULT_RESOLUTIONS)), help="input sizes in px (default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="inference precision (default: fp32)")
    p.add_argument("--memory-gb", type=float, default=16.0, help="the memory budget of the largest batch (default: 16 GB = 2^30 bytes x 16)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, models interleaved; the median is reported")
    p.add_argument("--seconds", type=float, default=0.5, help="about how long one timed call runs (sets its batch)")
    p.add_argument("--max-batch", type=int, default=64, help="the largest batch a timed call uses")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the paper's figure is per core, and on a shared machine a busy core stalls "
                        "every parallel region of a multi-threaded run: 2 threads on 2 loaded cores ran 3-10x slower than 1)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "inference_scaling.json")
    args = p.parse_args(argv)
    if args.memory_gb <= 0 or args.rounds < 1 or args.seconds <= 0 or args.max_batch < 1:
        raise SystemExit("--memory-gb and --seconds must be positive, --rounds and --max-batch at least 1")
    if args.threads < 1:
        raise SystemExit(f"--threads {args.threads}: give at least 1")
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here; use --device cpu")
    dtype = PRECISIONS[args.precision]
    sizes = parse_list(args.resolutions, int, "--resolutions")
    if any(s < 16 for s in sizes):
        raise SystemExit(f"--resolutions {args.resolutions}: sizes must be at least 16 px")
    names, known = parse_list(args.models, str, "--models"), set(vitkit.list_models())
    for n in [n for n in names if n not in known]:
        print(f"skipping {n}: not among this vitkit's models (vitkit.list_models())", file=sys.stderr)
    names = [n for n in names if n in known]
    if not names:
        raise SystemExit(f"--models {args.models}: none of them is a vitkit model; choose from {', '.join(sorted(known))}")
    budget = args.memory_gb * 2**30

    results, cells = [], []
    plan = [(n, s) for n in names for s in sizes]
    for name, size in progress.bar(plan, desc="building, counting memory", unit="cell"):
        try:
            real, meta = build(name, size, args.device, args.precision)
        except ValueError as err:  # e.g. a size the patch size does not divide
            print(f"skipping {name} at {size} px: {err}", file=sys.stderr)
            continue
        gflops = describe(name, image_size=size)["gflops"]
        if args.device.startswith("cuda"):
            mem = lambda b, m=real, s=size: cuda_memory(m, b, s, dtype)  # noqa: E731
        else:
            mem = lambda b, m=meta, s=size: meta_memory(m, b, s, dtype)  # noqa: E731
        batch = int(min(args.max_batch, max(1, args.seconds * 100 / gflops)))  # ~100 GFLOP/s: a guess, refined below
        x = torch.randn(batch, 3, size, size, device=args.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            real(x)  # warm-up, and a first timing to size the batch
            dt = time.perf_counter() - t0
        batch = int(min(args.max_batch, max(1, batch * args.seconds / dt)))
        most = largest_batch(mem, budget)
        row = {"model": name, "resolution": size, "gflops": gflops, "batch": batch, "times": [], "max_batch": most,
               "memory_at_1": mem(1), "memory_at_max_batch": mem(most) if most else None}
        results.append(row)
        cells.append((row, real, torch.randn(batch, 3, size, size, device=args.device)))

    load_before = os.getloadavg()
    for i in progress.bar(range(args.rounds + 1), desc="timing (interleaved rounds, the first a warm-up)", unit="round"):
        for row, model, x in cells:
            with torch.inference_mode():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(x)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i:
                    row["times"].append(time.perf_counter() - t0)
    threads = torch.get_num_threads()
    for row in results:
        row["images_per_s"] = row["batch"] / statistics.median(row["times"])
        row["images_per_s_per_core"] = row["images_per_s"] / threads

    meta = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch.__version__, "threads": threads, "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],  # before / after timing
            "precision": args.precision, "memory_budget_gb": args.memory_gb, "rounds": args.rounds,
            "memory_method": "torch.cuda.max_memory_allocated, bisection" if args.device.startswith("cuda") else
                             "peak live tensor bytes + weights on the meta device (LiveBytes), affine in the batch",
            "command": " ".join(["python", "benchmarks/inference_scaling.py", *(argv if argv is not None else sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    figure(results, meta, args.out.with_suffix(".png"))
    print(f"{'model':<16} {'px':>4} {'GFLOPs':>8} {'img/s':>8} {'img/s/core':>10} {'max batch':>10}")
    for r in results:
        print(f"{r['model']:<16} {r['resolution']:>4} {r['gflops']:>8.1f} {r['images_per_s']:>8.2f} "
              f"{r['images_per_s_per_core']:>10.2f} {r['max_batch']:>10,}")
    print(f"{meta['cpu']}, {threads} threads, torch {torch.__version__}, {args.precision}; wrote {args.out} and "
          f"{args.out.with_suffix('.png')}", file=sys.stderr)
    return 0


def figure(results: list[dict], meta: dict, path: Path) -> None:
    """Figure 12's two panels: images/s per core and the largest batch vs input size, one line per model, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        px = [r["resolution"] for r in rows]
        left.plot(px, [r["images_per_s_per_core"] for r in rows], "o-", label=name)
        right.plot(px, [max(r["max_batch"], 0.5) for r in rows], "o-", label=name)
    for ax, title in ((left, "inference speed [img/s/core]"), (right, f"largest batch in {meta['memory_budget_gb']:g} GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["resolution"] for r in results}), [str(s) for s in sorted({r["resolution"] for r in results})])
        ax.minorticks_off()
        ax.set_xlabel("input size [px]")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    threads = f"{meta['threads']} thread{'s' if meta['threads'] > 1 else ''}"
    fig.suptitle(f"{meta['gpu'] or meta['cpu']}, {threads}, {meta['precision']}, torch {meta['torch']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
