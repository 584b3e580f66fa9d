"""vitkit against timm and transformers, side by side in one process and one run: the same configs, the
same weights (copied from vitkit with its converters, outputs compared) and the same inputs.

For each model: inference (torch.inference_mode) and one full training step (forward, cross-entropy,
backward, AdamW update), in fp32 and bf16. Reported: images/s, the ratio to the best peer, achieved
GFLOP/s and the fraction of this machine's GEMM peak measured in the same run (a 2048^3 product through
torch.mm and through oneDNN directly, the larger counts: on AMD CPUs MKL's fp32 is about half of
oneDNN's), and the growth of resident memory during the measurement.

Rows: "vitkit" is vitkit eager as `vitkit train` / `vitkit eval` run it (oneDNN dense layers, fused AdamW,
its attention path; bf16 inference = `InferenceModel(model, "bf16")`, bf16 weights; bf16 training =
autocast); "vitkit, compiled" is the opt-in path (`vitkit eval --compile`, `train.compile=true`), whose
one-off compile time is reported. Peers run as their documentation shows: eager, torch.optim.AdamW, bf16
inference both under autocast (timm's --amp-dtype bfloat16) and with bf16 weights (transformers'
torch_dtype=torch.bfloat16); the best of all peer rows is the bar. Inference rows also run ONNX Runtime (fp32) and
OpenVINO (fp32, and bf16 where the CPU has it natively) on vitkit's ONNX export of the same weights, where they are
installed (pip install onnxruntime openvino; --no-engines leaves them out); they count as peers, run as their
documentation shows (OpenVINO: LATENCY hint, this run's threads). "vitkit auto: ENGINE" is what `vitkit eval` serves
with --engine auto: `vitkit.engines.choose`, measured afresh in this run (a temporary cache), through vitkit's
Engine interface (its OpenVINO engine splits a large batch over one single-threaded stream per core).

    python benchmarks/speed.py                      # everything (about 15 minutes on 2 cores)
    python benchmarks/speed.py --models fmnist,Ti   # a subset
    python benchmarks/speed.py --models Axial-B,B   # appendix D.7: Axial-ViT-B/16 against ViT-B/16 (no peer has it)
    python benchmarks/speed.py --quick              # one short repeat each (a smoke test)

Writes benchmarks/results/speed.json and prints the table as Markdown (benchmarks/results/speed.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import vitkit
from vitkit import engines as vitkit_engines
from vitkit.convert import timm as timm_convert
from vitkit.convert.files import outside_state as _outside_state
from vitkit import runtime
from vitkit.models.fast import accelerate, inference_model
from vitkit.recipes import get_recipe
from vitkit.train.optim import build_optimizer
from vitkit.config import OptimConfig

HERE = Path(__file__).parent
MODELS = {  # key: (vitkit name, overrides, image size, batch)
    "Ti": ("ViT-Ti/16", {}, 224, 32),
    "S": ("ViT-S/16", {}, 224, 16),
    "B": ("ViT-B/16", {}, 224, 8),
    "fmnist": None,  # the fashion-mnist recipe's model, filled in below
    "Axial-B": ("Axial-ViT-B/16", {}, 224, 8),  # axial attention (appendix D.7): vitkit's rows only
    "Axial-B32": ("Axial-ViT-B/32", {}, 224, 8),
    "AxialR50": ("AxialResNet50", {}, 224, 8),
}


def fmnist_spec() -> tuple[str, dict, int, int]:
    r = get_recipe("fashion-mnist")
    return r.model.name, {**r.model.overrides(), "in_chans": 1, "num_classes": 10}, r.data.image_size, 256


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Resident-memory growth over a region, sampled every 10 ms (CPU has no allocator counters)."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def gemm_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """Best GFLOP/s of a large square product through torch.mm (MKL for fp32, oneDNN for bf16) and through
    oneDNN directly; the machine's peak is the larger (on AMD CPUs MKL's fp32 reaches about half of oneDNN's)."""
    from vitkit.models.kernels import _mm, _op_runs

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    fns = {"torch.mm": lambda: torch.mm(a, b)}
    if _op_runs(dtype):  # oneDNN can run this dtype on this CPU (bf16 needs AVX-512 or AVX_NE_CONVERT)
        fns["oneDNN"] = lambda: _mm(a, b.t(), None)  # a @ b, as torch.mm
    out = {}
    for name, fn in fns.items():
        best, t_end = 0.0, time.perf_counter() + seconds
        fn()
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            fn()
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
        out[name] = best / 1e9
    out["peak"] = max(out.values())
    return out


def forward_gflops(model: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from vitkit.models.kernels import plain_kernels

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), plain_kernels():  # the counter knows aten's matmuls, not oneDNN's op
        model.eval()(x[:1])
    return counter.get_total_flops() / 1e9


def build(name: str, overrides: dict, size: int) -> dict[str, nn.Module]:
    """vitkit's model and the peers' same-config models carrying its weights (where a peer can hold it)."""
    torch.manual_seed(0)
    kw = {"num_classes": 1000, **overrides}
    ours = vitkit.create_model(name, image_size=size, **kw).eval()
    with torch.no_grad():  # a zero head would hide differences in the comparison
        ours.head.weight.normal_(0, 0.02)
    cfg, models = ours.config, {"vitkit": ours}
    if not isinstance(ours, vitkit.VisionTransformer):  # the axial models: no peer library has them
        return models
    state = _outside_state(ours)
    try:
        import timm.models.vision_transformer as tv

        peer = tv.VisionTransformer(img_size=size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
                                    embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_dim / cfg.width,
                                    class_token=cfg.class_token, global_pool="token" if cfg.pool == "token" else "avg",
                                    fc_norm=cfg.fc_norm)
        sd, _ = timm_convert.from_vitkit(state, cfg)
        peer.load_state_dict(sd)
        models["timm"] = peer.eval()
    except ImportError:
        print("timm is not installed: its rows are skipped (pip install timm)")
    try:
        import transformers

        if cfg.pool == "token":  # through a saved Hugging Face directory, as users get one
            with tempfile.TemporaryDirectory() as tmp:
                vitkit.save_model(ours, Path(tmp) / "hf", format="hf")
                peer = transformers.ViTForImageClassification.from_pretrained(Path(tmp) / "hf", attn_implementation="sdpa")
            models["transformers"] = peer.eval()
        else:
            print(f"transformers' ViT pools the class token only: no peer for {name} with GAP")
    except ImportError:
        print("transformers is not installed: its rows are skipped (pip install transformers)")
    return models


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def make_infer(model: nn.Module, bf16: bool, weights_bf16: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """bf16 as a peer's documentation shows it: autocast (timm's --amp-dtype bfloat16) or, with
    weights_bf16, the weights cast once (transformers' torch_dtype=torch.bfloat16, model.to(bfloat16))."""
    if weights_bf16:
        model = model.to(torch.bfloat16)

    def run(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and not weights_bf16):
            return logits(model, x.to(torch.bfloat16) if weights_bf16 else x)
    return run


def engines(model: nn.Module, x: torch.Tensor, bf16: bool, tmp: Path) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """ONNX Runtime and OpenVINO on vitkit's ONNX export of the same weights (optional benchmark dependencies:
    pip install onnxruntime openvino), each with its logits checked against vitkit's. fp32: both engines; bf16:
    OpenVINO with its bf16 inference precision where the CPU has native bf16 (ONNX Runtime's CPU provider has no
    bf16 path). Engines that are not installed are left out with a note. Returns (timed calls, max abs logit
    difference from vitkit's fp32 PyTorch) per engine."""
    from vitkit.export import export_onnx

    onnx_path = tmp / "model.onnx"
    if not onnx_path.exists():
        src = tmp / "model"
        vitkit.save_model(model, src)
        export_onnx(src, onnx_path, check=False)
    want = logits(model, x[:4]).detach().numpy()
    xn = x.numpy()
    fns: dict[str, Callable[[], object]] = {}
    diffs: dict[str, float] = {}
    if not bf16:
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime not installed: no ONNX Runtime rows (pip install onnxruntime)")
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            diffs["onnxruntime"] = float(abs(sess.run(["logits"], {"images": xn[:4]})[0] - want).max())
            fns["onnxruntime"] = lambda: sess.run(["logits"], {"images": xn})
    if not vitkit_engines.installed("openvino"):
        print("openvino not installed: no OpenVINO rows (pip install openvino)")
        return fns, diffs
    core = vitkit_engines.openvino_core()  # the process's one Core, shared with vitkit's own OpenVINO engine
    if bf16 and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        print("OpenVINO: this CPU has no native bf16; no OpenVINO bf16 row")
        return fns, diffs
    cfg = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    compiled = core.compile_model(str(onnx_path), "CPU", cfg)
    request = compiled.create_infer_request()
    key = f"openvino{' bf16' if bf16 else ''}"
    diffs[key] = float(abs(request.infer({0: xn[:4]})[compiled.output(0)] - want).max())
    fns[key] = lambda: request.infer({0: xn})
    return fns, diffs


def make_train(model: nn.Module, opt: torch.optim.Optimizer, bf16: bool, compiled: bool = False):
    fwd = torch.compile(model) if compiled else model
    model.train()

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(logits(fwd, x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def measure(fns: dict[str, Callable[[], object]], seconds: float, rounds: int) -> dict[str, dict]:
    """Round-robin over the contenders (drift hits all alike); per contender the median of its rounds."""
    for fn in fns.values():  # warm-up (and compile)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    mem: dict[str, float] = {k: 0.0 for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            n, t0 = 0, time.perf_counter()
            with PeakRSS() as pk:
                while True:
                    fn()
                    n += 1
                    if time.perf_counter() - t0 >= seconds / rounds:
                        break
            times[k].append((time.perf_counter() - t0) / n)
            mem[k] = max(mem[k], pk.growth_mib)
    return {k: {"s_per_iter": statistics.median(v), "rss_growth_mib": mem[k]} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fmnist,Ti,S,B", help=f"keys of {', '.join(MODELS)}")
    ap.add_argument("--seconds", type=float, default=9.0, help="timed seconds per contender and row")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="inference,train", help="which of inference,train")
    ap.add_argument("--precisions", default="fp32,bf16", help="which of fp32,bf16")
    ap.add_argument("--out", default="speed", help="result name: benchmarks/results/NAME.json and .md")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engines", action=argparse.BooleanOptionalAction, default=True,
                    help="inference rows for ONNX Runtime and OpenVINO on vitkit's ONNX export, where installed")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1
    torch.set_num_threads(args.threads)
    if args.engines:  # auto's verdicts measured afresh in this run, not read from an earlier one
        os.environ["VITKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitkit-speed-cache-")
    gemm = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    peaks = {k: v["peak"] for k, v in gemm.items()}
    hw = runtime.describe()
    out: dict = {"machine": runtime.summary(hw), "hardware": hw, "threads": args.threads, "gemm_peak_gflops": peaks, "gemm_gflops": gemm, "rows": []}
    print(f"GEMM peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s ({gemm})")
    for key in args.models.split(","):
        name, overrides, size, batch = fmnist_spec() if key == "fmnist" else MODELS[key]
        label = f"{name} {size}px" if key != "fmnist" else f"fashion-mnist model {size}px"
        models = build(name, overrides, size)
        x = torch.randn(batch, models["vitkit"].config.in_chans, size, size)
        y = torch.randint(0, models["vitkit"].config.num_classes, (batch,))
        ref = logits(models["vitkit"], x[:4]).detach()
        diffs = {k: (logits(m, x[:4]).detach() - ref).abs().max().item() for k, m in models.items() if k != "vitkit"}
        gf = forward_gflops(models["vitkit"], x)
        engine_dir = Path(tempfile.mkdtemp(prefix="vitkit-speed-"))  # this model's ONNX export, shared by its rows
        for mode in args.modes.split(","):
            for prec in args.precisions.split(","):
                bf16 = prec == "bf16"
                fns: dict[str, Callable] = {}
                compile_s = None
                if mode == "inference":
                    ours = inference_model(models["vitkit"], precision=prec)  # what `vitkit eval --precision` runs
                    fns["vitkit"] = lambda: ours(x)
                    for k, m in models.items():
                        if k != "vitkit":
                            fns[k] = (lambda f: lambda: f(x))(make_infer(m.eval(), bf16))
                            if bf16:
                                twin = build(name, overrides, size)[k]
                                fns[f"{k}, bf16 weights"] = (lambda f: lambda: f(x))(make_infer(twin, bf16, weights_bf16=True))
                    torch.compiler.reset()  # else the recompile limit (8) is hit and later "compiled" rows run eager
                    t = time.perf_counter()
                    fast = inference_model(models["vitkit"], precision=prec, compile=True)
                    fast(x)
                    compile_s = time.perf_counter() - t
                    fns["vitkit, compiled"] = lambda: fast(x)
                    if args.engines:
                        engine_fns, engine_diffs = engines(models["vitkit"], x, bf16, engine_dir)
                        fns.update(engine_fns)
                        diffs.update(engine_diffs)
                        auto = vitkit_engines.choose(models["vitkit"], prec, batch)  # what `vitkit eval` serves
                        fns[f"vitkit auto: {auto.engine}"] = lambda: auto(x)
                        diffs[f"vitkit auto: {auto.engine}"] = float((auto(x[:4]) - ref).abs().max())
                else:
                    copies = {k: build(name, overrides, size)[k] for k in models}  # fresh weights per row
                    accelerate(copies["vitkit"])  # as `vitkit train` runs it: the fast blocks that win here
                    for k, m in copies.items():
                        opt = (build_optimizer(m, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05)) if k == "vitkit"
                               else torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05))
                        fns[k] = (lambda f: lambda: f(x, y))(make_train(m, opt, bf16))
                    m = accelerate(build(name, overrides, size)["vitkit"])
                    torch.compiler.reset()
                    step = make_train(m, build_optimizer(m, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05)), bf16, compiled=True)
                    t = time.perf_counter()
                    step(x, y)
                    compile_s = time.perf_counter() - t
                    fns["vitkit, compiled"] = lambda: step(x, y)
                res = measure(fns, args.seconds, args.rounds)
                flops = gf * (3 if mode == "train" else 1)
                peers = [res[k]["s_per_iter"] for k in res if not k.startswith("vitkit")]
                best_peer = batch / min(peers) if peers else None
                for k, r in res.items():
                    ips = batch / r["s_per_iter"]
                    row = {"model": label, "batch": batch, "mode": mode, "precision": prec, "library": k, "img_per_s": ips,
                           "vs_best_peer": ips / best_peer if best_peer else None, "gflops_per_s": ips * flops,
                           "fraction_of_peak": ips * flops / peaks[prec], "rss_growth_mib": r["rss_growth_mib"],
                           "max_abs_diff_vs_vitkit": diffs.get(k), "compile_s": compile_s if k == "vitkit, compiled" else None}
                    out["rows"].append(row)
                    print(f"{label:<28} {mode:<9} {prec} {k:<17} {ips:8.1f} img/s  x{row['vs_best_peer'] or 0:.2f}  "
                          f"{row['fraction_of_peak']:.0%} of peak  {r['rss_growth_mib']:.0f} MiB", flush=True)
    (HERE / "results" / f"{args.out}.json").write_text(json.dumps(out, indent=2))
    md = table(out)
    (HERE / "results" / f"{args.out}.md").write_text(md + "\n" + summary(out))
    print(md + "\n" + summary(out))


def table(out: dict) -> str:
    g = out.get("gemm_gflops", {})
    detail = "; ".join(f"{p}: " + ", ".join(f"{k} {v:.0f}" for k, v in d.items() if k != "peak") for p, d in g.items())
    lines = [f"GEMM peak measured in the same run: fp32 {out['gemm_peak_gflops']['fp32']:.0f}, "
             f"bf16 {out['gemm_peak_gflops']['bf16']:.0f} GFLOP/s ({detail}); {out['machine']}", "",
             "| model | batch | mode | precision | library | img/s | vs best peer | % of GEMM peak | RSS growth MiB | max abs diff | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        vs = f"{r['vs_best_peer']:.2f}x" if r["vs_best_peer"] else "-"
        diff = f"{r['max_abs_diff_vs_vitkit']:.1e}" if r["max_abs_diff_vs_vitkit"] is not None else "-"
        comp = f"{r['compile_s']:.0f}" if r["compile_s"] is not None else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['precision']} | {r['library']} | {r['img_per_s']:.1f} | "
                     f"{vs} | {r['fraction_of_peak']:.0%} | {r['rss_growth_mib']:.0f} | {diff} | {comp} |")
    return "\n".join(lines) + "\n"


def summary(out: dict) -> str:
    """One line per (model, mode, precision), as in the README: vitkit's better path against the best peer."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in out["rows"]:
        groups.setdefault((r["model"], r["batch"], r["mode"], r["precision"]), {})[r["library"]] = r
    cols = ["vitkit", "vitkit, compiled", "vitkit auto", "timm", "timm, bf16 weights", "transformers", "transformers, bf16 weights",
            "onnxruntime", "openvino"]
    lines = ["| model (batch) | mode | precision | vitkit | vitkit compiled | vitkit auto (engine) | timm | timm bf16 weights | "
             "transformers | transformers bf16 weights | ONNX Runtime | OpenVINO | vitkit's fastest vs best peer | "
             "vitkit's fastest % of GEMM peak |",
             "|---|---|---|" + "---:|" * 11]
    for (model, batch, mode, prec), rows in groups.items():
        rows = {("openvino" if k == "openvino bf16" else "vitkit auto" if k.startswith("vitkit auto") else k): v
                for k, v in rows.items()}
        ips = [f"{rows[c]['img_per_s']:.1f}" if c in rows else "-" for c in cols]
        if "vitkit auto" in rows:
            ips[2] += f" ({rows['vitkit auto']['library'].split(': ')[1]})"
        best = max((rows[c] for c in cols[:3] if c in rows), key=lambda r: r["img_per_s"])
        vs = f"**{best['vs_best_peer']:.2f}x**" if best["vs_best_peer"] else "-"
        lines.append(f"| {model} ({batch}) | {mode} | {prec} | " + " | ".join(ips) + f" | {vs} | {best['fraction_of_peak']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
