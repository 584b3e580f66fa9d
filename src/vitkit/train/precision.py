"""Numeric precision: "auto" resolved from the hardware, autocast contexts and the fp16 gradient scaler.

    from vitkit.train.precision import resolve
    resolve("auto")          # "bf16" on a CPU with AVX512_BF16 or AMX, or a CUDA GPU of compute capability 8.0+;
                             # "fp16" on older CUDA GPUs (autocast + GradScaler); "fp32" otherwise

Every verb that runs a model takes `precision` ("auto" by default) and resolves it here, once.
"""
from __future__ import annotations

import contextlib
import functools
import time
import warnings

import torch

from vitkit import runtime

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def check(precision: str, option: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{option}={precision!r}: choose one of {', '.join(PRECISIONS)} (auto: what the hardware does natively)")
    return precision


def resolve(precision: str = "auto", device: str | torch.device | None = None, option: str = "precision") -> str:
    """"auto" -> the precision `device` (default: the accelerator, else the CPU) runs natively; an explicit
    precision is returned as given, with a one-time warning where the hardware only emulates it. `option`
    names the setting in the error for an unknown value (e.g. "train.precision")."""
    check(precision, option)
    dev = _device(device)
    if precision == "auto":
        if dev.type == "cuda":
            major, _ = torch.cuda.get_device_capability(dev)
            return "bf16" if major >= 8 else "fp16"
        if dev.type == "cpu":
            return "bf16" if runtime.cpu_info().native_bf16 else "fp32"
        return "fp32"  # MPS and others: fp32 until measured
    if precision == "bf16" and dev.type == "cpu" and not runtime.cpu_info().native_bf16:
        _warn_emulated()
    if precision == "fp16" and dev.type == "cpu":
        _warn_fp16_cpu()
    return precision


@functools.lru_cache(maxsize=2)
def emulation_slowdown(dtype: torch.dtype = torch.bfloat16) -> float:
    """How much slower a `dtype` (bf16, fp16) matrix product is than fp32 on this CPU (a 256^3 product, best of 3)."""
    def best(dt: torch.dtype) -> float:
        a, b = torch.randn(256, 256, dtype=dt), torch.randn(256, 256, dtype=dt)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(dtype) / max(best(torch.float32), 1e-9)


_WARNED: set[str] = set()


def _warn_emulated() -> None:
    if "bf16" in _WARNED:
        return
    _WARNED.add("bf16")
    cpu = runtime.cpu_info()
    what = f"treated as emulated (VITKIT_CPU={cpu.forced})" if cpu.forced else f"emulated on this CPU ({cpu.model}: no AVX512_BF16 or AMX)"
    warnings.warn(f"bf16 is {what}: a bf16 matrix product takes {emulation_slowdown():.1f}x the time of an fp32 one here; "
                  f"precision 'auto' picks fp32", RuntimeWarning, stacklevel=3)


def _warn_fp16_cpu() -> None:
    """fp16 on a CPU is computed (not silently fp32) but rarely natively: say what it costs, where it costs (measured)."""
    if "fp16" in _WARNED:
        return
    _WARNED.add("fp16")
    if emulation_slowdown(torch.float16) < 1.5:  # a CPU with native fp16 products (AMX-FP16, AVX512-FP16)
        return
    warnings.warn(f"fp16 on the CPU: computed in fp16, not natively here (a matrix product takes "
                  f"{emulation_slowdown(torch.float16):.1f}x the time of an fp32 one here); use bf16 where the CPU has it "
                  f"(`vitkit info`), else fp32", RuntimeWarning, stacklevel=3)


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """Mixed precision for a resolved precision: bf16 / fp16 autocast, nothing for fp32."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type, dtype=DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 training needs its loss scaled (fp16's range is too narrow for small gradients); bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def configure_matmul(precision: str, device: torch.device, tf32: bool = True) -> None:
    """fp32 on a CUDA GPU of compute capability 8.0+: matmuls and convolutions on TF32 tensor cores (10-bit
    mantissa inputs, fp32 accumulation: what PyTorch leaves off by default) unless `tf32` is False."""
    if device.type != "cuda" or precision != "fp32" or not torch.cuda.is_available():
        return
    on = tf32 and torch.cuda.get_device_capability(device)[0] >= 8
    torch.set_float32_matmul_precision("high" if on else "highest")
    torch.backends.cudnn.allow_tf32 = on
