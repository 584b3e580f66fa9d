"""vitkit against the official JAX code (google-research/vision_transformer, `vit_jax/models_vit.py`): an
independent check that vitkit reads Google's .npz weights and computes the official model's logits.

For each config below the official `models_vit.VisionTransformer` (flax.linen, the official model configs of
`vit_jax/configs/models.py`, depth reduced where the row says so) is built and initialised with jax.random; every
parameter the official init leaves zero or constant (head kernel and bias, class token, every bias, every LayerNorm
and GroupNorm scale, e.g. the zero-initialised gn3 scales of the hybrid's ResNet units) is replaced by random normal
values so that a swapped or dropped tensor cannot hide. The official logits of a few random NHWC images in [-1, 1]
(`model.apply({'params': params}, images, train=False)`, JAX on the CPU) are compared with vitkit's logits
(`vitkit.load(path)`, PyTorch fp32 on the CPU, NCHW) of the same parameters saved as .npz in two namings:

- "linen": the names today's official code gives them (`flax.traverse_util.flatten_dict(params, sep='/')`, which is
  what `vit_jax/checkpoint.py` save() writes with np.savez);
- "released": the released files' flax.nn names, the inverse of flax's `convert_pre_linen` (which vit_jax's load()
  applies): within each `encoderblock_i`, MultiHeadDotProductAttention_0 -> _1, LayerNorm_1 -> LayerNorm_2,
  MlpBlock_0 -> MlpBlock_3 (flax.nn numbered submodules globally, linen per class), and the hybrid's GroupNorm
  scale / bias stored (1, 1, 1, C) as old flax wrote them (vit_jax's `_fix_groupnorm` squeezes them). Before use the
  script checks that flax's `convert_pre_linen` (plus that squeeze) turns this tree back into the linen one exactly.

Each comparison runs twice: with the GELU vitkit reads .npz files with (the tanh approximation, Flax's nn.gelu
default that the official MlpBlock calls) and with vitkit forced to the exact GELU (`vitkit.load(path, gelu="exact")`),
to show what the GELU alone makes. Rows "@384" load the 224 file with `vitkit.load(path, image_size=384)` against the
official model built at 384 whose position embedding is the official interpolation of the 224 one (restated below:
`vit_jax/checkpoint.py` needs tensorflow). Reported per row: max |official - vitkit| over all logits, and that divided
by max |official logit| (the "scale"). A control row per resampled config loads with vitkit's bicubic resampling
instead (resample_mode="bicubic"), to show that the @384 rows would see a resampling that is not the official one.
For the hybrids, "float64_diagnostics" compares both sides with the official model run on float64 parameters and
images (its ResNet then computes in float64): it tells fp32 rounding in either implementation from a mismatch.

    python benchmarks/official_parity.py --vit-jax DIR     # DIR: a checkout of google-research/vision_transformer

(`pip install jax flax ml_collections` first; the official code is imported from DIR, never copied here.) About four
minutes on 2 cores. Writes benchmarks/results/official_parity.json and prints the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NUM_CLASSES = 1000

# Within an encoder block: linen's per-class numbering -> the released files' flax.nn global numbering
# (children in call order: LayerNorm, MultiHeadDotProductAttention, LayerNorm, MlpBlock). The inverse of flax's
# flax.training.checkpoints.convert_pre_linen, which renumbers each class 0, 1, ... in natural-sort order.
LINEN_TO_RELEASED = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
GN_RE = re.compile(r"gn(\d+|_root|_proj)$")  # the GroupNorm modules of the official ResNet (vit_jax/checkpoint.py _fix_groupnorm)


@dataclasses.dataclass
class Case:
    name: str
    getter: str  # the official config function in vit_jax/configs/models.py
    depth: int | None = None  # transformer.num_layers override (None: the official depth)
    representation_size: int | None = None  # override (None: the official config's, None for all of these)
    resample_to: int | None = None  # also compare at this resolution (position embeddings interpolated)


CASES = [
    Case("ViT-Ti/16", "get_ti16_config", resample_to=384),
    Case("ViT-B/16 (depth 3)", "get_b16_config", depth=3),
    Case("ViT-L/16 (depth 2)", "get_l16_config", depth=2),
    Case("ViT-B/16 GAP (depth 2)", "get_b16_gap_norep_config", depth=2, resample_to=384),
    Case("ViT-B/16 pre-logits 768 (depth 2)", "get_b16_config", depth=2, representation_size=768),
    Case("R50+ViT-B/16 (depth 2)", "get_r50_b16_config", depth=2),
    Case("R+ViT-Ti/16", "get_r_ti16_config"),
]

VITKIT_ERRORS: tuple[type[BaseException], ...] = (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError)


def interpolate_posembed(posemb: np.ndarray, num_tokens: int, has_class_token: bool) -> np.ndarray:
    """The official algorithm restated: vit_jax/checkpoint.py `interpolate_posembed` (that module imports tensorflow).
    The class-token row is kept; the grid is zoomed with scipy.ndimage.zoom(grid, (gs_new/gs_old, gs_new/gs_old, 1), order=1)."""
    import scipy.ndimage

    assert posemb.shape[0] == 1
    if has_class_token:
        posemb_tok, posemb_grid = posemb[:, :1], posemb[0, 1:]
        num_tokens -= 1
    else:
        posemb_tok, posemb_grid = posemb[:, :0], posemb[0, 0:]
    gs_old, gs_new = int(np.sqrt(len(posemb_grid))), int(np.sqrt(num_tokens))
    assert gs_old**2 == len(posemb_grid) and gs_new**2 == num_tokens
    posemb_grid = posemb_grid.reshape(gs_old, gs_old, -1)
    posemb_grid = scipy.ndimage.zoom(posemb_grid, (gs_new / gs_old, gs_new / gs_old, 1), order=1)
    posemb_grid = posemb_grid.reshape(1, gs_new * gs_new, -1)
    return np.concatenate([posemb_tok, posemb_grid], axis=1)


def official_config(mc: Any, case: Case) -> Any:
    cfg = getattr(mc, case.getter)()  # a fresh, unlocked ConfigDict
    if case.depth is not None:
        cfg.transformer.num_layers = case.depth
    if case.representation_size is not None:
        cfg.representation_size = case.representation_size
    return cfg


def describe(cfg: Any, image_size: int) -> dict[str, Any]:
    resnet = cfg.get("resnet")
    return {
        "official_config": cfg.model_name, "image_size": image_size, "hidden_size": cfg.hidden_size,
        "num_layers": cfg.transformer.num_layers, "num_heads": cfg.transformer.num_heads, "mlp_dim": cfg.transformer.mlp_dim,
        "patches": list(cfg.patches.size), "classifier": cfg.classifier, "representation_size": cfg.representation_size,
        "resnet": None if resnet is None else {"num_layers": list(resnet.num_layers), "width_factor": resnet.width_factor},
        "num_classes": NUM_CLASSES,
    }


def randomize(params: Any, key: Any) -> dict[str, np.ndarray]:
    """The official init with every zero / constant parameter replaced by random normal values; flat linen names."""
    import jax
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(params, sep="/")
    out = {}
    for i, name in enumerate(sorted(flat)):
        v = np.asarray(flat[name], dtype=np.float32)
        k = jax.random.fold_in(key, i)
        noise = lambda: np.asarray(jax.random.normal(k, v.shape, jax.numpy.float32))  # noqa: E731
        leaf = name.rsplit("/", 1)[-1]
        if name == "head/kernel":
            v = noise() / np.sqrt(v.shape[0])
        elif leaf == "bias":  # head, dense, attention, embedding, LayerNorm, GroupNorm biases: zero or ~1e-6 at init
            v = 0.1 * noise()
        elif leaf == "scale":  # LayerNorm / GroupNorm scales: one (gn3: zero) at init
            v = 1.0 + 0.1 * noise()
        elif name == "cls":
            v = 0.5 * noise()
        out[name] = v
    return out


def released_naming(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Linen names -> the released files' flax.nn names (and (1, 1, 1, C) GroupNorm parameters)."""
    out = {}
    for name, v in flat.items():
        parts = name.split("/")
        if len(parts) > 2 and parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
            parts[2] = LINEN_TO_RELEASED.get(parts[2], parts[2])
        if len(parts) > 1 and GN_RE.match(parts[-2]) and parts[-1] in ("scale", "bias"):
            v = v.reshape(1, 1, 1, -1)
        out["/".join(parts)] = v
    return out


def check_released(released: dict[str, np.ndarray], linen: dict[str, np.ndarray]) -> None:
    """flax's convert_pre_linen (what vit_jax's load() applies) + the GroupNorm squeeze give back the linen tree exactly."""
    from flax.training.checkpoints import convert_pre_linen
    from flax.traverse_util import flatten_dict, unflatten_dict

    tree = convert_pre_linen(unflatten_dict({tuple(k.split("/")): v for k, v in released.items()}))
    back = {"/".join(k): v for k, v in flatten_dict(tree).items()}
    back = {k: (v.squeeze() if len(k.split("/")) > 1 and GN_RE.match(k.split("/")[-2]) else v) for k, v in back.items()}
    if back.keys() != linen.keys():
        raise AssertionError(f"convert_pre_linen does not invert the released naming: {sorted(back.keys() ^ linen.keys())[:8]}")
    for k, v in linen.items():
        if back[k].shape != v.shape or not np.array_equal(back[k], v):
            raise AssertionError(f"convert_pre_linen round trip changed {k}: {back[k].shape} vs {v.shape}")


def official_logits(models_vit: Any, cfg: Any, flat: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    import jax
    from flax.traverse_util import unflatten_dict

    model = models_vit.VisionTransformer(num_classes=NUM_CLASSES, **cfg)
    params = unflatten_dict({tuple(k.split("/")): jax.numpy.asarray(v) for k, v in flat.items()})
    return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, images), dtype=np.float64)


def vitkit_logits(path: Path, images: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
    import torch

    import vitkit

    model, card = vitkit.load(path, **kwargs)
    model.eval()
    with torch.inference_mode():
        y = model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float())
    c = model.config
    info = {"gelu": c.gelu, "pool": c.pool, "image_size": c.image_size, "depth": c.depth, "width": c.width, "heads": c.heads,
            "notes": list(card.report.notes), "resampled": list(card.report.resampled)}
    return y.double().numpy(), info


def compare(rows: list[dict], base: dict[str, Any], path: Path, ref: np.ndarray, images: np.ndarray, gelus: tuple[str, ...] = ("tanh", "exact"),
            **kwargs: Any) -> None:
    from vitkit import CheckpointError

    for gelu in gelus:
        row = {**base, "gelu_requested": "default (npz: tanh)" if gelu == "tanh" else "exact", "max_abs_official": float(np.abs(ref).max())}
        t = time.perf_counter()
        try:
            y, info = vitkit_logits(path, images, **kwargs, **({"gelu": "exact"} if gelu == "exact" else {}))
        except (CheckpointError, *VITKIT_ERRORS) as err:
            row.update(gelu=gelu, max_abs_diff=None, rel_diff=None, error=f"{type(err).__name__}: {err}")
        else:
            diff = float(np.abs(y - ref).max()) if y.shape == ref.shape else None
            row.update(gelu=info.pop("gelu"), max_abs_diff=diff, rel_diff=None if diff is None else diff / row["max_abs_official"],
                       error=None if diff is not None else f"shape {list(y.shape)} vs official {list(ref.shape)}", vitkit=info)
        row["vitkit_s"] = round(time.perf_counter() - t, 2)
        rows.append(row)
        print(f"  {base['config']:<34} @{base['image_size']:<4} {base['naming']:<9} {row['gelu']:<6} {base['resample_mode'] or '':<18}"
              + (f"rel {row['rel_diff']:.2e}" if row["error"] is None else f"ERROR {row['error']}"), flush=True)


def float64_diagnostics(models_vit: Any, hybrids: list[tuple]) -> list[dict[str, Any]]:
    """Where the hybrids' fp32 differences come from: the official model once more with float64 parameters and images
    (jax_enable_x64): its ResNet, patch embedding, encoder_norm and head then compute in float64 (their flax modules take
    the inputs' dtype), its encoder blocks stay float32 (models_vit fixes their dtype). vitkit runs in fp32 and float64."""
    import jax
    import torch
    from flax.traverse_util import unflatten_dict

    import vitkit

    jax.config.update("jax_enable_x64", True)
    out = []
    try:
        for name, cfg, flat, images, ref32, path in hybrids:
            model = models_vit.VisionTransformer(num_classes=NUM_CLASSES, **cfg)
            p64 = unflatten_dict({tuple(k.split("/")): jax.numpy.asarray(v, jax.numpy.float64) for k, v in flat.items()})
            x64 = jax.numpy.asarray(images, jax.numpy.float64)
            ref64 = np.asarray(jax.jit(lambda p, x, m=model: m.apply({"params": p}, x, train=False))(p64, x64), dtype=np.float64)
            net = vitkit.load(path)[0].eval()
            xt = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            with torch.inference_mode():
                y32 = net(xt).double().numpy()
                y64 = net.double()(xt.double()).numpy()
            scale = float(np.abs(ref64).max())
            rel = lambda a, b: float(np.abs(a - b).max()) / scale  # noqa: E731
            out.append({"config": name, "reference": "official, float64 params and images (ResNet etc. in float64, encoder blocks float32)",
                        "official_fp32_vs_reference": rel(ref32, ref64), "vitkit_fp32_vs_reference": rel(y32, ref64),
                        "vitkit_float64_vs_reference": rel(y64, ref64), "vitkit_fp32_vs_official_fp32": rel(y32, ref32)})
            print(f"  {name}: rel to the official float64-ResNet logits: official fp32 {out[-1]['official_fp32_vs_reference']:.2e}, "
                  f"vitkit fp32 {out[-1]['vitkit_fp32_vs_reference']:.2e}, vitkit float64 {out[-1]['vitkit_float64_vs_reference']:.2e}", flush=True)
    finally:
        jax.config.update("jax_enable_x64", False)
    return out


def sh(*cmd: str) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> str | None:
    out = sh("lscpu")
    m = re.search(r"^Model name:\s*(.+)$", out or "", re.M)
    return m.group(1).strip() if m else platform.processor() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vit-jax", required=True, type=Path, help="a checkout of google-research/vision_transformer (holds vit_jax/)")
    ap.add_argument("--vit-jax-commit", help="its commit, when DIR is not a git checkout (e.g. a `git archive` export)")
    ap.add_argument("--images", type=int, default=4, help="random images per comparison (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated substrings: run the configs whose names contain one")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "official_parity.json")
    args = ap.parse_args()

    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported
    src = args.vit_jax.resolve()
    if not (src / "vit_jax" / "models_vit.py").is_file():
        ap.error(f"--vit-jax {src}: no vit_jax/models_vit.py there")
    sys.path.insert(0, str(src))
    import flax
    import jax
    import scipy
    import torch

    import vitkit  # noqa: F401  (fail early if missing)
    from vit_jax import models_vit  # the official model (imports flax and jax only; models_resnet for the hybrids)
    from vit_jax.configs import models as official_configs  # imports ml_collections only

    jax.config.update("jax_default_matmul_precision", "highest")  # full fp32 products (already the CPU's default)
    torch.manual_seed(args.seed)
    cases = [c for c in CASES if not args.only or any(s.strip() in c.name for s in args.only.split(","))]
    rows: list[dict] = []
    hybrids: list[tuple] = []  # (name, cfg, params, images, official logits, file) for float64_diagnostics
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="official_parity_") as tmp:
        for ci, case in enumerate(cases):
            cfg = official_config(official_configs, case)
            print(f"{case.name}: official {cfg.model_name}", flush=True)
            key = jax.random.fold_in(jax.random.PRNGKey(args.seed), ci)
            k_init, k_rand, k_img, k_img2 = jax.random.split(key, 4)
            model = models_vit.VisionTransformer(num_classes=NUM_CLASSES, **cfg)
            x0 = jax.numpy.zeros((1, 224, 224, 3), jax.numpy.float32)
            params = jax.jit(lambda k, m=model, x=x0: m.init(k, x, train=False))(k_init)["params"]
            linen = randomize(params, k_rand)
            released = released_naming(linen)
            check_released(released, linen)
            files = {}
            for naming, arrays in (("linen", linen), ("released", released)):
                files[naming] = Path(tmp) / f"{ci}_{naming}.npz"
                np.savez(files[naming], **arrays)
            resolutions = [224] + ([case.resample_to] if case.resample_to else [])
            for size in resolutions:
                images = np.asarray(jax.random.uniform(k_img if size == 224 else k_img2, (args.images, size, size, 3),
                                                       jax.numpy.float32, -1.0, 1.0))
                flat = linen
                if size != 224:
                    pe_key = "Transformer/posembed_input/pos_embedding"
                    x = jax.ShapeDtypeStruct((1, size, size, 3), jax.numpy.float32)
                    shapes = jax.eval_shape(lambda k, x, m=model: m.init(k, x, train=False), k_init, x)["params"]
                    n_new = shapes["Transformer"]["posembed_input"]["pos_embedding"].shape[1]  # the official model's at this size
                    flat = {**linen, pe_key: interpolate_posembed(linen[pe_key], n_new, cfg.classifier == "token").astype(np.float32)}
                t = time.perf_counter()
                ref = official_logits(models_vit, cfg, flat, images)
                official_s = round(time.perf_counter() - t, 2)
                if cfg.get("resnet") is not None and size == 224:
                    hybrids.append((case.name, cfg, linen, images, ref, files["linen"]))
                for naming, path in files.items():
                    base = {"config": case.name, **describe(cfg, size), "naming": naming, "resample_mode": "bilinear" if size != 224 else None,
                            "official_s": official_s, "params": int(sum(v.size for v in linen.values()))}
                    compare(rows, base, path, ref, images, **({"image_size": size} if size != 224 else {}))
                if size != 224:  # a control: vitkit's bicubic resampling (transformers') must visibly miss the official bilinear zoom
                    base = {**base, "naming": "linen", "resample_mode": "bicubic (control)"}
                    compare(rows, base, files["linen"], ref, images, gelus=("tanh",), image_size=size, resample_mode="bicubic")
        if hybrids:
            print("float64 diagnostics (hybrids):", flush=True)
        diagnostics = float64_diagnostics(models_vit, hybrids) if hybrids else []
    total = round(time.perf_counter() - t0, 1)

    checks = [r for r in rows if r["rel_diff"] is not None and "control" not in (r["resample_mode"] or "")]
    tanh = [r["rel_diff"] for r in checks if r["gelu"] == "tanh"]
    exact = [r["rel_diff"] for r in checks if r["gelu"] == "exact"]
    result = {
        "what": "vitkit.load of the official JAX code's parameters (.npz, two namings) vs the official models_vit.VisionTransformer logits",
        "command": "python benchmarks/official_parity.py --vit-jax DIR" + (f" --only {args.only}" if args.only else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "python": platform.python_version(),
        "versions": {"jax": jax.__version__, "jaxlib": sh(sys.executable, "-c", "import jaxlib; print(jaxlib.__version__)"),
                     "flax": flax.__version__, "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                     "vitkit_commit": sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
                     "vitkit_src_modified": (sh("git", "-C", str(REPO), "diff", "--name-only", "HEAD", "--", "src") or "").split()},
        "vit_jax_commit": args.vit_jax_commit or sh("git", "-C", str(src), "rev-parse", "HEAD"),
        "setup": {"images": args.images, "seed": args.seed, "num_classes": NUM_CLASSES, "jax_platforms": os.environ["JAX_PLATFORMS"],
                  "jax_default_matmul_precision": "highest", "torch": "fp32, CPU", "torch_threads": torch.get_num_threads(),
                  "inputs": "uniform [-1, 1], NHWC for the official model, transposed to NCHW for vitkit"},
        "summary": {"worst_rel_diff_tanh": max(tanh, default=None), "worst_rel_diff_exact": max(exact, default=None),
                    "failed_rows": sum(r["error"] is not None for r in rows), "rows": len(rows)},
        "float64_diagnostics": diagnostics,
        "seconds": total,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print("\n| config | px | naming | GELU | resample | max abs diff | max abs logit | rel diff |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = "error: " + r["error"] if r["error"] else f"{r['max_abs_diff']:.2e}"
        rel = "" if r["error"] else f"{r['rel_diff']:.2e}"
        cells = [r["config"], r["image_size"], r["naming"], r["gelu"], r["resample_mode"] or "", d, f"{r['max_abs_official']:.3g}", rel]
        print("| " + " | ".join(map(str, cells)) + " |")
    summ = result["summary"]
    print(f"\nworst rel diff (resample controls left out): tanh {summ['worst_rel_diff_tanh']:.2e}, exact {summ['worst_rel_diff_exact']:.2e}; "
          f"{summ['failed_rows']} failed rows; {total} s. Wrote {args.out}")


if __name__ == "__main__":
    main()
