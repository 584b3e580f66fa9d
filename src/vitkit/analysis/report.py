"""`vitkit analyze`: the paper's figures 6 and 7 for any model vitkit loads, as PNGs, JSON and one
self-contained HTML page."""
from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import torch

from vitkit import progress
from vitkit.analysis.attention import (attention_rollout, class_token_attention, collect_attention, mean_attention_distance,
                                       rollout_maps, token_stride)
from vitkit.analysis.embeddings import embedding_filters, posemb_similarity
from vitkit.analysis.plots import (plot_attention_distance, plot_class_attention, plot_filters, plot_posemb_similarity,
                                   plot_rollout)
from vitkit.atomic import refuse_existing, write_json, write_text
from vitkit.config import check_argument
from vitkit.convert.load import load
from vitkit.data.preprocess import Preprocess
from vitkit.models.fast import cast_copy
from vitkit.runtime import resolve_device
from vitkit.train.precision import DTYPES, resolve
from vitkit.data.datasets import load_dataset, load_image
from vitkit.data.loader import eval_stream
from vitkit.data.transforms import eval_transform, norm_stats
from vitkit.evaluate.run import data_config_for
from vitkit.models.vit import VisionTransformer


def _unnormalize(x: torch.Tensor, kind: str) -> torch.Tensor:
    mean, std = norm_stats(kind, x.shape[1])
    return (x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)).clamp(0, 1)


def load_images(prep: Preprocess, data: str | None, images: list[str], num_images: int, data_dir: str | None,
                batch_size: int = 32) -> tuple[list[torch.Tensor], str, str]:
    """Image batches prepared as `prep`, the normalisation used, and where the images came from."""
    cfg = data_config_for(prep, data or "digits", data_dir)
    chans = prep.in_chans
    if images:
        t = eval_transform(cfg, chans)
        xs = [t(load_image(Path(p), chans)) for p in images]
        return list(torch.stack(xs).split(batch_size)), cfg.normalize, f"{len(xs)} image file(s): " + ", ".join(Path(p).name for p in images[:8])
    if not data:
        raise ValueError("give --data NAME or one or more IMAGE files to analyse")
    ds = load_dataset(cfg)
    out, n = [], 0
    for x, _ in eval_stream(ds.test, cfg, chans, batch_size):
        out.append(x[: num_images - n])
        n += len(out[-1])
        if n >= num_images:
            break
    return out, cfg.normalize, f"the first {n} test images of {ds.name} ({ds.source})"


def analyze(src: str, out: str | Path, data: str | None = None, images: list[str] | None = None, num_images: int = 128,
            head: int = 0, data_dir: str | None = None, overwrite: bool = False, precision: str = "auto",
            device: str = "auto") -> dict:
    """Write filters.png, posemb_similarity.png, attention_distance.png (+ .json), rollout.png,
    class_attention.png and report.html into `out`; return the numbers. The files are made in a temporary
    folder inside `out` and moved in at the end: a failure leaves `out` as it was (or absent, as it was). Heads are numbered from 0."""
    check_argument("num_images", num_images)
    check_argument("head", head)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: a file, not a directory; name a directory for the figures and report")
    if out.exists() and any(out.iterdir()) and not overwrite:
        refuse_existing(out, overwrite)
    model, card = load(src)
    model.eval()
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{src}: a {type(model).__name__} has no attention to analyse; analyze takes ViTs and hybrids")
    cfg = model.config
    if not 0 <= head < cfg.heads:
        raise ValueError(f"--head {head}: the model has {cfg.heads} heads per layer, numbered 0 to {cfg.heads - 1}")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".analyze.", dir=out))  # inside `out`: the renames never cross file systems
    try:
        result = _analyze(model, card, work, src, data, images, num_images, head, data_dir, precision, device)
        for item in work.iterdir():
            os.replace(item, out / item.name)
    except BaseException:
        if made:  # nothing of the user's is in a folder this call made
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _analyze(model: VisionTransformer, card, out: Path, src: str, data: str | None, images: list[str] | None,
             num_images: int, head: int, data_dir: str | None, precision: str, device: str) -> dict:
    cfg = model.config
    batches, normalize, source = load_images(card.preprocess, data, images or [], num_images, data_dir)
    figures: dict[str, str] = {}
    result: dict = {"model": str(src), "data": source, "image_size": cfg.image_size, "grid": list(cfg.grid)}

    if cfg.resnet is None:
        filters, var = embedding_filters(model)
        figures["Embedding filters"] = plot_filters(filters, var, out / "filters.png").name
    else:
        result["filters_note"] = "hybrid: the embedding projects ResNet features, not pixels; no filter images"
    try:
        sim, kind = posemb_similarity(model)
        note = "" if kind == "learned" else "sin-cos 2-D embeddings are fixed, so the similarity shows the table, not learning"
        figures["Position embedding similarity"] = plot_posemb_similarity(sim, kind, out / "posemb_similarity.png", note).name
        result["posemb"] = kind
    except ValueError as err:
        result["posemb_note"] = str(err)

    dev = resolve_device(device)
    prec = resolve(precision, dev)  # the attention maps are computed in it (bf16 / fp16: a cast copy of the weights)
    result["precision"], result["device"] = prec, str(dev)
    attn = collect_attention((model if prec == "fp32" else cast_copy(model, DTYPES[prec])).to(dev),
                             progress.bar(batches, desc="attention maps", unit="batch"))
    px = token_stride(model)
    dist = mean_attention_distance(attn, cfg.grid, px, model.num_prefix_tokens)
    size = cfg.image_size if isinstance(cfg.image_size, int) else max(cfg.image_size)
    figures["Mean attention distance"] = plot_attention_distance(dist, out / "attention_distance.png", size).name
    result["attention_distance_px"] = [[round(v, 3) for v in row] for row in dist.tolist()]
    result["attention_distance_by_layer"] = {"min": dist.min(1).values.tolist(), "mean": dist.mean(1).tolist(),
                                             "max": dist.max(1).values.tolist()}
    images01 = _unnormalize(torch.cat(batches)[:16], normalize)
    maps = rollout_maps(attention_rollout([a[:16] for a in attn], model.num_prefix_tokens), cfg.grid, model.num_prefix_tokens)
    import torch.nn.functional as F

    maps_up = F.interpolate(maps[:, None], size=images01.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    figures["Attention rollout"] = plot_rollout(images01, maps_up, out / "rollout.png").name
    per_layer = class_token_attention([a[:6] for a in attn], cfg.grid, head, model.num_prefix_tokens)
    what = "Class-token attention" if model.num_prefix_tokens else "Mean attention of the patches (no class token)"
    figures[f"{what}, head {head}"] = plot_class_attention(images01, per_layer, f"{what} of head {head}, per layer",
                                                           out / "class_attention.png").name
    result["num_images"] = sum(len(b) for b in batches)
    write_json(out / "attention_distance.json", result)
    write_report(out, model, result, figures)
    result["figures"] = figures
    return result


def write_report(out: Path, model, result: dict, figures: dict[str, str]) -> Path:
    """report.html: one page, images embedded as data URIs, no outside resources."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in [
        ("checkpoint", result["model"]), ("architecture", cfg.name or "ViT"), ("parameters", f"{params:,}"),
        ("image size", cfg.image_size), ("patch", cfg.patch_size), ("token grid", "x".join(map(str, cfg.grid))),
        ("width / depth / heads", f"{cfg.width} / {cfg.depth} / {cfg.heads}"), ("pooling", cfg.pool),
        ("position embedding", cfg.posemb), ("hybrid ResNet", cfg.resnet.layers if cfg.resnet else "none"),
        ("images analysed", f"{result['num_images']}: {result['data']}")])
    d = result["attention_distance_by_layer"]
    dist_rows = "".join(f"<tr><td>{i + 1}</td><td>{lo:.1f}</td><td>{m:.1f}</td><td>{hi:.1f}</td></tr>"
                        for i, (lo, m, hi) in enumerate(zip(d["min"], d["mean"], d["max"])))
    sections = []
    for title, name in figures.items():
        data = base64.b64encode((out / name).read_bytes()).decode()
        sections.append(f"<section><h2>{html.escape(title)}</h2><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{data}\"></section>")
    notes = "".join(f"<p class=note>{html.escape(result[k])}</p>" for k in ("filters_note", "posemb_note") if k in result)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vitkit analysis: {html.escape(result['model'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
img{{max-width:100%;border:1px solid #eee}}.note{{color:#666}}</style></head><body>
<h1>Looking inside {html.escape(cfg.name or 'a ViT')}</h1>
<p>The analyses of section 4.5 of "An Image is Worth 16x16 Words" (figures 6 and 7), made by vitkit
on {datetime.now():%Y-%m-%d %H:%M}.</p>
<table>{rows}</table>{notes}
{''.join(sections)}
<section><h2>Mean attention distance per layer (pixels)</h2>
<p>Weighted by the attention weights, averaged over query patches and images; class token dropped.
The paper (ViT-L/16): some heads of the lowest layers attend locally, others globally; higher layers are global.</p>
<table><tr><th>layer</th><th>min over heads</th><th>mean</th><th>max</th></tr>{dist_rows}</table></section>
</body></html>
"""
    return write_text(out / "report.html", page)
