"""What the hardware has, and what vitkit chooses for it: one owner for the machine.

`hardware()` describes the CPU (model, torch's cpu capability, native bf16 or not, what oneDNN's bf16
kernels need), the cores this process may use (affinity and cgroup quota, not `os.cpu_count()`), CUDA
devices and MPS. `vitkit info` prints it; run directories and benchmark results record `describe()`.

Native bf16 on a CPU means AVX512_BF16 or AMX-BF16: there a bf16 GEMM runs at about twice fp32's speed.
Without them PyTorch still computes in bf16, emulated: measured 4x slower than fp32 on an AVX-512 Xeon
and 50-170x slower on an AVX2-only EPYC. oneDNN's bf16 kernels (the fused dense layers, pre-blocked
weights) need AVX512BW/VL/DQ or AVX_NE_CONVERT; called without them they raise.

The probe can be forced, so that every branch runs on any machine (tests, benchmarks):
`VITKIT_CPU=native-bf16 | avx512 | avx2` sets what vitkit *chooses* (precision "auto", kernels, warnings).
It never makes vitkit call a kernel the real CPU cannot run (`onednn_bf16_runs()` is always the truth).
"""
from __future__ import annotations

import functools
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CPU_KINDS = ("native-bf16", "avx512", "avx2", "other")
_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert")


@dataclass(frozen=True)
class CPUInfo:
    model: str
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    flags: tuple[str, ...]  # the flags (of _FLAGS) that this CPU has
    native_bf16: bool  # AVX512_BF16 or AMX-BF16: bf16 GEMMs at about 2x fp32
    onednn_bf16: bool  # oneDNN's bf16 kernels run here (natively or emulated): AVX512BW+VL+DQ or AVX_NE_CONVERT
    kind: str  # "native-bf16" | "avx512" | "avx2" | "other"
    forced: str | None = None  # the VITKIT_CPU value that set `kind`, if any


@dataclass(frozen=True)
class AcceleratorInfo:
    type: str  # "cuda" | "mps"
    index: int
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability
    native_bf16: bool = False  # CUDA: compute capability 8.0 or more (Ampere, Hopper, ...)
    memory_gib: float | None = None


@dataclass(frozen=True)
class Hardware:
    cpu: CPUInfo
    cores: int  # cores this process may use
    accelerators: tuple[AcceleratorInfo, ...] = field(default_factory=tuple)
    torch: str = ""
    platform: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: ask torch's own probe (cpuinfo)
        import torch

        probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
                  "amx_tile": "_is_amx_tile_supported"}
        for flag, fn in probes.items():
            if getattr(torch.cpu, fn, lambda: False)():
                flags.add(flag)
        if "avx512f" in flags:
            flags |= {"avx512bw", "avx512vl", "avx512dq"}
        if "amx_tile" in flags:
            flags.add("amx_bf16")
    return model, flags


@functools.lru_cache(maxsize=None)
def _probe_cpu() -> tuple[str, str, tuple[str, ...]]:
    import torch

    model, flags = _cpu_model_and_flags()
    return model, torch.backends.cpu.get_cpu_capability(), tuple(f for f in _FLAGS if f in flags)


def cpu_info() -> CPUInfo:
    """This CPU as vitkit sees it; `VITKIT_CPU` forces the kind (module docstring)."""
    model, capability, flags = _probe_cpu()
    has = set(flags)
    onednn = {"avx512bw", "avx512vl", "avx512dq"} <= has or "avx_ne_convert" in has
    native = bool({"avx512_bf16", "amx_bf16"} & has)
    if native and onednn:
        kind = "native-bf16"
    elif "avx512f" in has:
        kind = "avx512"
    elif "avx2" in has:
        kind = "avx2"
    else:
        kind = "other"
    forced = os.environ.get("VITKIT_CPU") or None
    if forced:
        if forced not in CPU_KINDS:
            raise ValueError(f"VITKIT_CPU={forced!r}: choose one of {', '.join(CPU_KINDS)} (or unset it to probe the CPU)")
        kind = forced
        native, onednn = kind == "native-bf16", kind in ("native-bf16", "avx512")
    return CPUInfo(model, capability, flags, native, onednn, kind, forced)


def onednn_bf16_runs() -> bool:
    """Whether oneDNN's bf16 kernels can run on the real CPU (whatever VITKIT_CPU says): calling them
    elsewhere raises "mkldnn ... bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"."""
    _, _, flags = _probe_cpu()
    has = set(flags)
    return ({"avx512bw", "avx512vl", "avx512dq"} <= has or "avx_ne_convert" in has) and cpu_info().onednn_bf16


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers, SLURM)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, math.ceil(quota)) if quota else n)


def default_threads() -> int:
    """torch's thread count as vitkit sets it: the user's OMP_NUM_THREADS if set, else the cores this
    process may use (torch alone would count every core of the host, quota or not)."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return available_cores()


def _cgroup_v2_dirs() -> list[Path]:
    """This process's cgroup v2 directory and its parents (a quota anywhere up the tree applies)."""
    try:
        rel = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration, IndexError):
        rel = "/"
    d = Path("/sys/fs/cgroup") / rel.strip().lstrip("/")
    dirs = [d, *d.parents]
    return [p for p in dirs if str(p).startswith("/sys/fs/cgroup")]


def _cgroup_quota() -> float | None:
    quotas, v2 = [], False
    for d in _cgroup_v2_dirs():  # cgroup v2: cpu.max holds "max 100000" or "200000 100000"
        try:
            text = Path(d / "cpu.max").read_text().split()
        except OSError:
            continue
        v2 = True
        try:
            if text and text[0] != "max":
                quotas.append(int(text[0]) / int(text[1]))
        except (ValueError, IndexError):
            continue
    if v2:
        return min(quotas) if quotas else None
    try:  # cgroup v1
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def accelerators() -> tuple[AcceleratorInfo, ...]:
    import torch

    out = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cc = (p.major, p.minor)
            out.append(AcceleratorInfo("cuda", i, p.name, cc, cc >= (8, 0), round(p.total_memory / 2**30, 1)))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(AcceleratorInfo("mps", 0, "Apple MPS"))
    return tuple(out)


DEVICE_HELP = "auto (the accelerator when there is one, else the CPU), cpu, cuda, cuda:N or mps"


def resolve_device(spec: str | None = "auto", option: str = "--device"):
    """A torch.device from "auto" | "cpu" | "cuda" | "cuda:N" | "mps"; "auto" is this process's GPU (its
    LOCAL_RANK under torchrun), else MPS, else the CPU. Asking for a device that is not there is an error."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"{option} {spec!r}: choose {DEVICE_HELP}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {spec}: no CUDA device is visible (torch.cuda.is_available() is False; a CPU-only "
                             f"torch build, or CUDA_VISIBLE_DEVICES); use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{option} mps: MPS is not available here (Apple silicon and macOS 12.3+ only); use {option} cpu")
        return dev
    if dev.type != "cpu":
        raise ValueError(f"{option} {spec!r}: choose {DEVICE_HELP}")
    return dev


def model_device(model):
    """Where a model's parameters live (the CPU for a model without any)."""
    import torch

    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def hardware() -> Hardware:
    import torch

    return Hardware(cpu_info(), available_cores(), accelerators(), torch.__version__,
                    f"{platform.system()} {platform.machine()}, Python {platform.python_version()}")


def describe() -> dict[str, Any]:
    """The hardware and what vitkit chose for it, as JSON-ready data (recorded in runs and benchmark results)."""
    import torch

    from vitkit.models import kernels
    from vitkit.train.precision import resolve

    hw = hardware().to_dict()
    hw["threads"] = torch.get_num_threads()
    hw["omp"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    hw["chosen"] = {"precision_auto": resolve("auto"), "onednn_dense": kernels.choices()}
    return hw


def summary(info: dict[str, Any] | None = None) -> str:
    """One line for logs and tables: 'AMD EPYC (native-bf16: AVX512_BF16), 2 cores, torch 2.14.1, 2 threads'."""
    info = info or describe()
    cpu = info["cpu"]
    what = {"native-bf16": "native bf16", "avx512": "AVX-512, no native bf16", "avx2": "AVX2, no native bf16",
            "other": "no AVX2"}[cpu["kind"]]
    forced = f", forced by VITKIT_CPU={cpu['forced']}" if cpu.get("forced") else ""
    acc = "".join(f", {a['type']}:{a['index']} {a['name']}" for a in info.get("accelerators", []))
    return f"{cpu['model']} ({what}{forced}), {info['cores']} cores, torch {info['torch']}, {info.get('threads', '?')} threads{acc}"


# Threads -----------------------------------------------------------------------------------------------------
# PyTorch's wheels use GNU OpenMP, whose idle threads spin before they sleep. When another process holds a
# core, a spinning thread steals the time the busy one needs and every parallel region waits on it
# (measured here: benchmarks/contention.py). These variables act only if set before torch is imported, so the
# `vitkit` command sets them first, where the user has not.
THREAD_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_threads_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set OpenMP's thread count (the cores this process may use) and wait policy in `environ` where unset;
    returns what it set. Call before torch is imported (the console script does)."""
    environ = os.environ if environ is None else environ
    if environ.get("VITKIT_THREAD_DEFAULTS", "1") == "0":
        return {}
    wanted = {"OMP_NUM_THREADS": str(available_cores()), **THREAD_DEFAULTS}
    set_now = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(set_now)
    return set_now


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (its RANK variable, readable before the process group exists), or a lone process:
    the one that prints what a job's ranks would all say."""
    return os.environ.get("RANK", "0") == "0"


def cache_dir() -> Path:
    """vitkit's per-user cache: $VITKIT_CACHE_DIR, else $XDG_CACHE_HOME/vitkit, else ~/.cache/vitkit. Holds what is
    measured once per machine (kernels.json, engines.json), the engines' exports of checkpoints (exports/) and the
    published files vitkit.hub downloads (downloads/)."""
    root = os.environ.get("VITKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitkit"
    return Path(root)


def machine_key() -> str:
    """What a speed measurement depends on: the CPU (model, capability, kind) and the threads in use."""
    import torch

    cpu = cpu_info()
    return f"{cpu.model} | {cpu.capability} | {cpu.kind} | {torch.get_num_threads()} threads"


def read_cache(name: str) -> dict:
    """A JSON cache file of cache_dir() as a dict ({} when absent or damaged)."""
    import json

    try:
        data = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_cache(name: str, key: str, value: Any) -> None:
    """Set one entry of a JSON cache file, atomically; best effort (a read-only home only means measuring again)."""
    from vitkit.atomic import write_json

    data = read_cache(name)
    data[key] = value
    try:
        write_json(cache_dir() / name, data)
    except OSError:
        pass
