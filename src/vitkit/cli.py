"""The `vitkit` command: each verb parses its options and calls one function of the Python API.

Layout: the options several verbs share first; then per verb its handler `cmd_VERB(args)` followed by
`_VERB_parser(sub)`, which defines its arguments; `build_parser` adds them in --help's order."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
import traceback
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from vitkit.config import ARGUMENTS, argument_parser


# --- options and output shared by several verbs ---------------------------------------------------------

ALPHA = 0.5  # predict's overlay: the class colours' opacity
MIN_SCORE = 0.5  # predict's boxes: the lowest score kept (evaluate/predict.py predict_boxes)
NAMES = ("or a published name, downloaded once into the cache: hf-hub:ORG/NAME[@REV], timm's MODEL.TAG, Google's google:PATH "
         "(`vitkit models --pretrained` lists them)")


def _precision_device(p: argparse.ArgumentParser, engine: bool = False) -> None:
    """--precision and --device (and --engine) of the verbs that run a model."""
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (default): bf16 where the hardware has it natively (AVX512_BF16 / AMX CPUs, GPUs of compute "
                        "capability 8.0+), fp16 on older GPUs, else fp32; `vitkit info` says which")
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="auto (default: the GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps")
    if engine:
        p.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                       help="what computes: auto (default: on a GPU torch; on the CPU the fastest engine installed for this "
                            "model, measured once per machine and cached; jobs under 2048 images take torch unless an export "
                            "is cached), torch (vitkit's own path), onnxruntime, openvino (pip install 'vitkit[onnx]' / "
                            "'vitkit[openvino]'); SRC may also be an export of `vitkit export`")


def _directory(text: str) -> str:
    """An argparse `type=` for an output directory: a path that is an existing file is refused."""
    try:
        is_file = Path(text).exists() and not Path(text).is_dir()
    except OSError as err:  # e.g. a name too long for the file system
        raise argparse.ArgumentTypeError(f"{text}: {err.strerror}") from None
    if is_file:
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory: choose another path")
    return text


def _say_engine(res: dict) -> None:
    """One line on stderr: what computed, and how auto chose."""
    e = res.get("engine") or {}
    auto = e.get("auto") or {}
    how = (f"; auto: {auto['why']}" + (" (cached verdict)" if auto.get("cached") else "")) if auto else ""
    print(f"engine: {e.get('engine')}, precision: {e.get('precision')}{how}", file=sys.stderr)


# --- the verbs: each handler, then its arguments ----------------------------------------------------------

def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _filtered(rows: list[dict], text: str | None, fields: tuple[str, ...], what: str, command: str) -> list[dict]:
    """The rows whose `fields` contain `text` (any case); none kept: a line on stderr saying so."""
    if not text:
        return rows
    kept = [r for r in rows if text.lower() in " ".join(str(r[f]) for f in fields).lower()]
    if not kept:
        print(f"no {what} contains {text!r}; run `{command}` for the list", file=sys.stderr)
    return kept


def _json_rows(rows: list[dict]) -> int:
    """No rows: exit status 2; else the rows as JSON (for --json)."""
    if not rows:
        return 2
    print(json.dumps(rows, indent=2))
    return 0


def _pretrained_rows(args: argparse.Namespace) -> int:
    from vitkit import hub

    defaults = {hub.default_for(v) for v in {p.variant for p in hub.published()}}
    rows = [{"name": p.name, "source": p.source, "model": p.variant, "image_size": p.image_size, "data": p.data,
             "labels": p.labels, "paper_top1": p.top1, "paper_ref": p.cite or None, "default": p.name in defaults}
            for p in hub.published()]
    rows = _filtered(rows, args.filter, ("name", "model", "data"), "published name, model or data", "vitkit models --pretrained")
    if not rows or args.json:
        return _json_rows(rows)
    print(f"{'source':<7} {'model':<13} {'size':>4} {'top-1':>6}  {'pre-training -> fine-tuning':<38} name")
    for r in rows:
        top1 = f"{r['paper_top1']:.2f}" if r["paper_top1"] else ""
        print(f"{r['source']:<7} {r['model']:<13} {r['image_size']:>4} {top1:>6}{'*' if r['default'] else ' '} {r['data']:<38} {r['name']}")
    print(f"top-1: ImageNet, as the {hub.PAPER_T5} reports it. *: what create_model(MODEL, pretrained=True) loads.\n"
          "Any verb takes these names as SRC, and any hf-hub:ORG/NAME[@REV] or google:PATH (a file in gs://vit_models).")
    return 0


def _compute_rows(args: argparse.Namespace) -> int:
    """The paper's pre-training runs (its table 6) with their exaFLOPs next to vitkit's count of them."""
    from vitkit.models import compute

    runs = [{"model": r.model, "vitkit": r.vitkit, "run": r} for r in compute.PAPER_RUNS]
    kept = _filtered(runs, args.filter, ("model", "vitkit"), "paper model or vitkit architecture", "vitkit models --compute")
    rows = compute.table([k["run"] for k in kept]) if kept else []  # counts (once, then cached) only the rows kept
    if not rows or args.json:
        return _json_rows(rows)
    print(f"{'paper model':<15} {'epochs':>6} {'paper EF':>9} {'vitkit EF':>10} {'ratio':>6}  vitkit architecture")
    for r in rows:
        print(f"{r['model']:<15} {r['epochs']:>6} {r['paper_exaflops']:>9,.0f} {r['vitkit_exaflops']:>10,.1f} "
              f"{r['ratio']:>6.3f}  {r['vitkit']}")
    print(f"EF: pre-training exaFLOPs on JFT-300M ({compute.JFT_IMAGES / 1e6:.0f}M images x epochs, {compute.PRETRAIN_SIZE} px). "
          "paper: its table 6 (arXiv 2010.11929v2);\nvitkit: training FLOPs per image (forward + backward, "
          "1 multiply-add = 2 FLOPs, as in metrics.json) x images seen; ratio: vitkit / paper.")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from vitkit.models.catalog import table

    if args.pretrained:
        return _pretrained_rows(args)
    if args.compute:
        return _compute_rows(args)
    rows = _filtered(table(), args.filter, ("name",), "model name", "vitkit models")
    if not rows or args.json:
        return _json_rows(rows)
    print(f"{'model':<14} {'params':>13} {'image':>6} {'GFLOPs':>9} {'GMACs':>9}")
    for r in rows:
        print(f"{r['name']:<14} {_fmt_int(r['params']):>13} {r['image_size']:>6} {r['gflops']:>9.2f} {r['gmacs']:>9.2f}")
    print("GFLOPs: one image's forward pass at the default size, 1000 classes (1 MAC = 2 FLOPs).")
    return 0


def _models_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list the model variants with parameters and GFLOPs",
                       description="Every named variant with its parameter count and forward GFLOPs at its default size "
                                   "(224 px, 3 channels, 1000 classes), counted once on the meta device, read back without torch.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--filter", metavar="TEXT", help="only names containing TEXT (e.g. 'R50' or '/16')")
    table = p.add_mutually_exclusive_group()
    table.add_argument("--pretrained", action="store_true",
                       help="the published weights vitkit knows by name (Google's, Hugging Face's, timm's): source, resolution, "
                            "pre-training data and the paper's ImageNet top-1 where it gives one")
    table.add_argument("--compute", action="store_true",
                       help="the paper's pre-training runs (its table 6, figure 5): epochs and exaFLOPs, next to vitkit's "
                            "count of the same models and images (counted once on the meta device, then cached)")
    p.set_defaults(func=cmd_models)


def cmd_info(args: argparse.Namespace) -> int:
    from vitkit import runtime

    info = runtime.describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cpu, chosen = info["cpu"], info["chosen"]
    print(f"CPU: {cpu['model']}")
    print(f"  torch cpu capability {cpu['capability']}; flags: {', '.join(cpu['flags']) or 'none of interest'}")
    kind = {"native-bf16": "native bf16 (AVX512_BF16 or AMX)", "avx512": "AVX-512 without native bf16 (bf16 emulated)",
            "avx2": "AVX2 (bf16 emulated; no oneDNN bf16 kernels)", "other": "no AVX2"}[cpu["kind"]]
    print(f"  kind: {kind}" + (f" (forced by VITKIT_CPU={cpu['forced']})" if cpu["forced"] else ""))
    print(f"cores available to this process: {info['cores']}; torch threads: {info['threads']}")
    omp = ", ".join(f"{k}={v}" for k, v in info["omp"].items() if v is not None) or "none set"
    print(f"  OpenMP: {omp}")
    for a in info["accelerators"]:
        extra = f", compute capability {a['capability'][0]}.{a['capability'][1]}, {a['memory_gib']} GiB" if a["capability"] else ""
        print(f"accelerator: {a['type']}:{a['index']} {a['name']}{extra}, native bf16: {'yes' if a['native_bf16'] else 'no'}")
    if not info["accelerators"]:
        print("accelerator: none (CPU only)")
    print(f"torch {info['torch']}; {info['platform']}")
    print("vitkit chooses:")
    print(f"  precision 'auto' -> {chosen['precision_auto']}")
    for dtype, c in chosen["onednn_dense"].items():
        print(f"  oneDNN dense layers, {dtype}: {'on' if c['on'] else 'off'} ({c['why']})")
    return 0


def _info_parser(sub: Any) -> None:
    p = sub.add_parser("info", help="the hardware and what vitkit chooses for it (precision, kernels, threads)",
                       description="CPU model, torch's cpu capability, native bf16 or not, the cores this process may use, "
                                   "accelerators; and what vitkit picks on this machine: precision 'auto', oneDNN dense layers "
                                   "(measured once, cached), threads. Forcing: VITKIT_CPU, VITKIT_ONEDNN (README).")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)


def _parse_size(text: str | None) -> int | tuple[int, int] | None:
    """convert's --resolution (or --image-size): R or HxW pixels, each >= 1. Parsed here, not by argparse, so that a bad
    one is the verb's error (exit status 2 from main, as earlier releases)."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or not all(ARGUMENTS["resolution"][1].contains(v) for v in sizes):
        raise ValueError(f"--resolution/--image-size {text!r}: give one integer >= 1 (224) or HxW (224x320)")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _number_list(text: str | None, option: str, name: str, example: str) -> list | None:
    """A comma-separated option (--shots, --lr-sweep), each value in the range of the verb argument `name` (ARGUMENTS).
    Parsed by the verb, not argparse, so that a bad one is the verb's error (exit status 2 from main, as earlier
    releases)."""
    if text is None:
        return None
    kind, rng = ARGUMENTS[name]
    try:
        values = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or not all(rng.contains(v) for v in values):
        raise ValueError(f"{option} {text!r}: give comma-separated values, each {rng.describe(kind)}, e.g. {example}")
    return values


def _out(args: argparse.Namespace, what: str) -> str:
    """--out, or the positional output of earlier releases (still accepted, no longer shown)."""
    if args.out and args.old_out and args.out != args.old_out:
        raise ValueError(f"two outputs given ({args.old_out} and --out {args.out}); give --out only")
    out = args.out or args.old_out
    if not out:
        raise ValueError(f"give --out PATH: {what}")
    return out


def cmd_convert(args: argparse.Namespace) -> int:
    from vitkit import progress
    from vitkit.convert import load, save_model

    dst = _out(args, "a directory for vitkit / hf, *.safetensors for timm, *.npz for npz")
    with progress.Stages("convert", [f"reading {args.src}", f"writing {dst} ({args.to})"]) as bar:
        model, card = load(args.src, num_classes=args.num_classes, image_size=_parse_size(args.resolution),
                           format=getattr(args, "from"), model=args.model, drop_pre_logits=args.drop_pre_logits,
                           strict=not args.ignore_unexpected)
        bar.next()
        out = save_model(model, dst, format=args.to, overwrite=args.force, card=card)
        bar.next()
    report = card.report
    if args.json:
        print(json.dumps({"src": args.src, "dst": str(out), "to": args.to, "report": report.to_dict()}, indent=2))
    else:
        print(report)
        print(f"wrote {out} ({args.to})")
    return 0


def _convert_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between vitkit, timm, Hugging Face and Google .npz",
                       description="Read any checkpoint vitkit knows (format detected unless --from says) and write it in "
                                   "another format. Writes are atomic; an existing output is refused unless --force.")
    p.add_argument("src", help=f"checkpoint: vitkit dir/.safetensors, timm .safetensors/.pth, Hugging Face dir, Google .npz; {NAMES}")
    p.add_argument("old_out", nargs="?", metavar="DST", help=argparse.SUPPRESS)  # before --out: `convert SRC DST`
    p.add_argument("--out", metavar="PATH", help="output path (a directory for vitkit/hf, *.safetensors for timm, *.npz for npz)")
    p.add_argument("--from", default="auto", choices=["auto", "vitkit", "timm", "hf", "npz"], help="input format (default: detect)")
    p.add_argument("--to", default="vitkit", choices=["vitkit", "timm", "hf", "npz"], help="output format (default: vitkit)")
    p.add_argument("--model", metavar="NAME", help="variant name when the file cannot tell (timm files do not record heads)")
    p.add_argument("--num-classes", type=argument_parser("num_classes"), metavar="K",
                   help="replace the head with a zero-initialised one of K classes (0: no head)")
    p.add_argument("--resolution", metavar="R", help="resample position embeddings for R (or HxW) pixels")
    p.add_argument("--image-size", dest="resolution", help=argparse.SUPPRESS)  # the earlier spelling
    p.add_argument("--drop-pre-logits", action="store_true", help="remove the pre-logits layer (as for fine-tuning)")
    p.add_argument("--ignore-unexpected", action="store_true",
                   help="leave out tensors the model has no place for (listed in the report) instead of refusing the file")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_convert)


def _sets(args: argparse.Namespace) -> list[str]:
    """--set overrides, with --device as the shorthand for train.device."""
    return (args.set or []) + ([f"train.device={args.device}"] if args.device else [])


def cmd_train(args: argparse.Namespace) -> int:
    from vitkit.config import apply_overrides, load_config
    from vitkit.recipes import build
    from vitkit.train.loop import train

    if args.resume:
        if args.recipe or args.config or args.out:
            raise ValueError("--resume continues a run exactly as it was configured; drop --recipe/--config/--out")
        if args.force:
            raise ValueError("--resume continues a run in place; drop --force")
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            res = train(None, resume=args.resume, overrides=_sets(args))
    else:
        cfg = apply_overrides(load_config(args.config), _sets(args)) if args.config else build(args.recipe or "quickstart", _sets(args))
        if args.print_config:
            print(cfg.to_json())
            return 0
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():  # the log, apart from the JSON
            res = train(cfg, out=args.out, overwrite=args.force)
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


def _train_parser(sub: Any) -> None:
    from vitkit.recipes import RECIPES

    p = sub.add_parser("train", help="train a model from a recipe (default: quickstart on the built-in digits)",
                       description="Train with a named recipe or a config JSON, overriding any key with --set a.b=value. "
                                   "Writes a run directory: config.json, metrics.jsonl, metrics.json, checkpoint/, curves.png.")
    p.add_argument("--recipe", choices=list(RECIPES), help="recipe (default: quickstart)")
    p.add_argument("--config", metavar="FILE", help="a config JSON (e.g. a run's config.json) instead of a recipe")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. optim.lr=3e-3 (repeatable)")
    p.add_argument("--out", type=_directory, metavar="DIR", help="run directory (default: runs/RECIPE-TIME); never reused unless --force")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run directory at --out")
    p.add_argument("--json", action="store_true", help="the final metrics as JSON on stdout (the log goes to stderr)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--device", metavar="DEV", help="train.device: auto (default: the GPU when there is one), cpu, cuda, cuda:N, mps")
    p.set_defaults(func=cmd_train)


def cmd_eval(args: argparse.Namespace) -> int:
    from vitkit.convert.load import read_arch
    from vitkit.evaluate.run import eval_model, plot_confusion

    if read_arch(args.src) == "multitask":
        return _eval_multitask(args)
    if args.task:
        raise ValueError(f"--task names a multitask model's tasks, and {args.src} is no multitask model; drop --task")
    if not args.data:
        raise ValueError(f"--data: name the dataset to evaluate {args.src} on (e.g. --data digits, --data canvas)")
    if args.confusion and (read_arch(args.src) == "detection" or args.data.startswith("coco:")):
        raise ValueError("--confusion draws a classifier's or a segmentation model's confusion matrix; a detector's "
                         "scores are COCO's mAP per class: drop --confusion")
    res = eval_model(args.src, args.data, split=args.split, data_dir=args.data_dir, batch_size=args.batch_size,
                     resolution=args.resolution, precision=args.precision, normalize=args.normalize, compile=args.compile,
                     device=args.device, engine=args.engine, real_labels=args.real_labels)
    _say_engine(res)
    print(f"device: {res['device']}", file=sys.stderr)
    if args.confusion:
        res["confusion_figure"] = str(plot_confusion(res, args.confusion, f"{args.src} on {args.data} ({args.split})"))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    show = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731 - None: nothing to score (no such class or size)
    if "map" in res:  # a detector: COCO's box mAP
        print(f"{args.src} on {args.data} ({args.split}, {res['n']} images): mAP {show(res['map'])}  mAP@50 "
              f"{show(res['map_50'])}  mAP@75 {show(res['map_75'])}  AR@100 {show(res['mar_100'])}")
        print(f"{'class':<20} {'AP':>7} {'AR@100':>7}")
        for name in res["classes"][1:]:  # the background is no class to score
            scores = res["per_class"].get(name, {})
            print(f"{name:<20} {show(scores.get('map')):>7} {show(scores.get('mar_100')):>7}")
        return 0
    if "miou" in res:  # a segmentation model: per-pixel scores
        print(f"{args.src} on {args.data} ({args.split}, {res['n']} images, {res['pixels']:,} pixels scored): mIoU "
              f"{res['miou']:.4f}  pixel acc {res['pixel_acc']:.4f}  mean class acc {res['mean_acc']:.4f}  loss {res['loss']:.4f}")
        print(f"{'class':<20} {'IoU':>7} {'acc':>7}")
        for name in res["classes"]:
            print(f"{name:<20} {show(res['iou'][name]):>7} {show(res['acc'][name]):>7}")
        if args.confusion:
            print(f"confusion matrix: {res['confusion_figure']}")
        return 0
    print(f"{args.src} on {args.data} ({args.split}, {res['n']} images): top-1 {res['top1']:.4f}  top-5 {res['top5']:.4f}  loss {res['loss']:.4f}")
    if "real_top1" in res:
        print(f"ReaL top-1 {res['real_top1']:.4f} ({res['real_n']} images with a ReaL label, {res['real_skipped']} without)")
    print(f"{'class':<20} {'top-1':>7} {'images':>7}")
    for (name, acc), row in zip(res["per_class"].items(), res["confusion"]):
        print(f"{name:<20} {acc:>7.4f} {sum(row):>7}")
    if args.confusion:
        print(f"confusion matrix: {res['confusion_figure']}")
    return 0


def _eval_multitask(args: argparse.Namespace) -> int:
    """`vitkit eval` of a multitask model: each task on its own data (--task / --data choose some)."""
    from vitkit.evaluate.run import eval_multitask

    for given, option in ((args.confusion, "--confusion"), (args.real_labels, "--real-labels"), (args.compile, "--compile"),
                          (args.engine not in (None, "auto", "torch"), "--engine")):
        if given:
            raise ValueError(f"{option} with a multitask model: each task is scored by PyTorch, without it; drop {option}")
    tasks = [t.strip() for t in args.task.split(",") if t.strip()] if args.task else None
    res = eval_multitask(args.src, tasks, args.data, split=args.split, data_dir=args.data_dir, batch_size=args.batch_size,
                         resolution=args.resolution, precision=args.precision, normalize=args.normalize, device=args.device)
    print(f"device: {res['device']}", file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{args.src} ({args.split}): mean of the tasks' scores {res['score']:.4f}")
    print(f"{'task':<16} {'kind':<14} {'data':<16} {'images':>7}  score")
    for name, r in res["tasks"].items():
        score = (f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}" if r["kind"] == "classification"
                 else f"mIoU {r['miou']:.4f}  pixel acc {r['pixel_acc']:.4f}")
        print(f"{name:<16} {r['kind']:<14} {r['data']:<16} {r['n']:>7}  {score}")
    return 0


def _eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="top-1 / top-5 of any loadable model on a dataset split (a segmentation model: mIoU; "
                                    "a detector: COCO mAP)",
                       description="Evaluate any checkpoint load_model reads on a dataset split (resize, no crop). A "
                                   "segmentation model on a segmentation dataset: mIoU, per-class IoU, pixel accuracy; a "
                                   "detector on a detection dataset: COCO's box mAP (map, map_50, map_75, per class) in the "
                                   "images' own pixels (a run directory's own data settings apply when --data names its "
                                   "dataset).")
    p.add_argument("src", help=f"run directory or checkpoint; {NAMES}")
    p.add_argument("--data", help="dataset: digits, fashion-mnist, mnist, cifar10, cifar100, folder:PATH; "
                                  "segmentation: canvas, seg:PATH; detection: canvas, coco:PATH (a multitask model: "
                                  "optional, its tasks on that dataset only; default: every task on its own data)")
    p.add_argument("--task", metavar="NAME[,NAME]", help="a multitask model: these tasks only (default: all)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset files are")
    p.add_argument("--resolution", type=argument_parser("resolution"), metavar="R",
                   help="evaluate at R px (position embeddings resampled)")
    p.add_argument("--batch-size", type=argument_parser("batch_size"), default=256)
    _precision_device(p, engine=True)
    p.add_argument("--normalize", choices=["google", "imagenet"], help="pixel normalisation (default: as trained, else google)")
    p.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix to this PNG")
    p.add_argument("--real-labels", metavar="FILE", help="ImageNet ReaL's real.json: also the ReaL accuracy of a folder of "
                   "ImageNet validation images (ILSVRC2012_val_*.JPEG, matched by number; the paper reports it beside top-1)")
    p.add_argument("--compile", action="store_true", help="torch.compile with frozen weights: a one-off delay, then faster "
                   "batches (pays for small models in bf16; on AMD CPUs fp32 eager is faster: benchmarks/speed.py)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)


def cmd_finetune(args: argparse.Namespace) -> int:
    from vitkit.train.finetune import finetune

    sets = _sets(args) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    sweep = _number_list(args.lr_sweep, "--lr-sweep", "lr", "0.001,0.003,0.01,0.03")
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():  # the log, apart from the JSON
        res = finetune(args.src, args.data, args.resolution, sets, args.out, sweep, overwrite=args.force, protocol=args.protocol)
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


def _finetune_parser(sub: Any) -> None:
    p = sub.add_parser("finetune", help="fine-tune any checkpoint on a dataset (the paper's transfer recipe)",
                       description="New zero-initialised head (pre-logits dropped), position embeddings resampled to "
                                   "--resolution, SGD momentum 0.9, no weight decay, clip 1, warm-up + cosine, batch 512 "
                                   "by accumulation, steps per dataset as the paper's table 4. Same run directory as train.")
    p.add_argument("src", help=f"run directory or checkpoint (vitkit, timm, Hugging Face, Google .npz); {NAMES}")
    p.add_argument("--data", required=True, help="dataset: digits, fashion-mnist, mnist, cifar10, cifar100, folder:PATH")
    p.add_argument("--resolution", type=argument_parser("resolution"), metavar="R", help="fine-tuning resolution (default: the model's)")
    p.add_argument("--lr-sweep", metavar="LRS",
                   help="comma-separated learning rates, e.g. 0.001,0.003,0.01,0.03; the best on the validation split is kept")
    p.add_argument("--protocol", choices=["sweep", "paper", "vtab1k"],
                   help="the paper's protocols: paper (table 4's LR grid, chosen on a dev split of 2%% of ImageNet / 10%% of "
                        "other training sets, then retrained on all of it), vtab1k (1,000 training images; with --lr-sweep "
                        "chosen on 800 / 200 and retrained on the 1,000, else the paper's fixed LR 0.01; 2,500 steps)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset files are")
    p.add_argument("--out", type=_directory, metavar="DIR", help="run directory (default: runs/finetune-TIME)")
    p.add_argument("--force", action="store_true", help="replace an existing run directory at --out")
    p.add_argument("--device", metavar="DEV", help="train.device: auto (default: the GPU when there is one), cpu, cuda, cuda:N, mps")
    p.add_argument("--json", action="store_true", help="the final metrics as JSON on stdout (the log goes to stderr)")
    p.set_defaults(func=cmd_finetune)


def cmd_fewshot(args: argparse.Namespace) -> int:
    from vitkit.evaluate.run import fewshot_model

    shots = _number_list(args.shots, "--shots", "shots", "1,5,10,25")
    res = fewshot_model(args.src, args.data, shots, args.seeds, args.l2, args.data_dir, args.batch_size, args.precision,
                        args.resolution, device=args.device, engine=args.engine)
    _say_engine(res)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"few-shot linear evaluation of {args.src} on {args.data} ({res['test_images']} test images, "
          f"{res['feature_dim']}-d features, l2 {res['l2']:g}, {res['seeds']} seeds)")
    print(f"{'shots':>6} {'top-1':>8} {'+-':>7}")
    for n, r in res["shots"].items():
        print(f"{n:>6} {r['mean']:>8.4f} {r['std']:>7.4f}")
    return 0


def _fewshot_parser(sub: Any) -> None:
    p = sub.add_parser("fewshot", help="few-shot linear evaluation of frozen features (paper section 4.1)",
                       description="Closed-form ridge regression to {-1,1}^K on n images per class of the training split, "
                                   "accuracy on the test split; mean and spread over nested subsets per seed.")
    p.add_argument("src", help=f"run directory or checkpoint; {NAMES}")
    p.add_argument("--data", required=True, help="dataset")
    p.add_argument("--shots", default="1,5,10,25", help="comma-separated shots per class (default 1,5,10,25)")
    p.add_argument("--seeds", type=argument_parser("seeds"), default=3, help="subsets drawn per shot count (default 3)")
    p.add_argument("--l2", type=argument_parser("l2"), help="ridge regularisation, > 0 (default 1024, as big_vision)")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--resolution", type=argument_parser("resolution"), metavar="R")
    p.add_argument("--batch-size", type=argument_parser("batch_size"), default=256)
    _precision_device(p, engine=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fewshot)


def cmd_predict(args: argparse.Namespace) -> int:
    from vitkit import engines
    from vitkit.convert.load import read_arch
    from vitkit.evaluate.predict import check_images, predict_boxes, predict_masks, predict_with

    arch = read_arch(args.src)
    if arch == "multitask":
        raise ValueError(f"{args.src} is a multitask model, with a head per task: `vitkit eval {args.src}` scores each task "
                         f"on its data; to predict with one task, fine-tune a model of it (model.init={args.src})")
    if arch == "detection":  # boxes: a JSON and a drawn PNG per image
        for given, option in ((args.engine not in ("auto", "torch"), f"--engine {args.engine}"), (args.alpha != ALPHA, "--alpha")):
            if given:
                raise ValueError(f"{option} with a detection model: it runs on PyTorch and draws boxes, not a blend; drop {option.split()[0]}")
        res = predict_boxes(args.src, args.images, args.out, overwrite=args.force, min_score=args.min_score,
                            precision=args.precision, device=args.device)
        if args.json:
            print(json.dumps(res, indent=2))
            return 0
        for r in res:
            found = ", ".join(f"{b['class']} {b['score']:.2f}" for b in r["boxes"][:args.top_k]) or f"no box scoring {args.min_score:g} or more"
            print(f"{r['image']}: {len(r['boxes'])} box(es): {found}\n  -> {r['png']}, {r['json']}")
        return 0
    if args.min_score != MIN_SCORE:
        raise ValueError(f"--min-score is for detection models (the boxes kept); {args.src} is not one: drop --min-score")
    if arch == "segmentation":  # a class per pixel: mask and overlay PNGs
        if args.engine not in ("auto", "torch"):
            raise ValueError(f"--engine {args.engine} with a segmentation model: it runs on PyTorch; drop --engine")
        res = predict_masks(args.src, args.images, args.out, overwrite=args.force, alpha=args.alpha,
                            precision=args.precision, device=args.device)
        if args.json:
            print(json.dumps(res, indent=2))
            return 0
        for r in res:
            top = ", ".join(f"{name} {share:.1%}" for name, share in list(r["classes"].items())[:args.top_k])
            print(f"{r['image']}: {top}\n  -> {r['overlay']}, {r['mask']}")
        return 0
    for given, option in ((args.out, "--out"), (args.force, "--force"), (args.alpha != ALPHA, "--alpha")):
        if given:
            raise ValueError(f"{option} is for segmentation and detection models (it places their images); {args.src} is a "
                             f"classifier: drop {option}")
    model = engines.load_engine(args.src, args.engine, args.precision, args.device, batch_size=len(args.images),
                         images=len(check_images(args.images)))
    _say_engine({"engine": model.describe()})
    res = predict_with(model, args.images, args.top_k)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for r in res:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['prob']:7.2%}  {t['class']}")
    return 0


def _predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files (a segmentation model: mask and overlay PNGs; a "
                                       "detector: boxes as JSON and drawn on a PNG)",
                       description="Any image file (JPEG, PNG, grayscale, RGBA, any size), resized as the model was trained. "
                                   "A segmentation model writes per image STEM.mask.png (the class indices, a palette PNG) "
                                   "and STEM.overlay.png (the classes' colours over the image), at the image's size; a "
                                   "detector STEM.boxes.json (class, score, box x0, y0, x1, y1 in the image's pixels) and "
                                   "STEM.boxes.png (the boxes drawn on the image); beside it or in --out; an existing file "
                                   "is refused unless --force.")
    p.add_argument("src", help=f"run directory or checkpoint; {NAMES}")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=argument_parser("top_k"), default=5,
                   help="classes shown (segmentation: by pixel share; detection: boxes named, best first)")
    p.add_argument("--out", type=_directory, metavar="DIR",
                   help="segmentation, detection: write the files here (default: beside each image)")
    p.add_argument("--alpha", type=argument_parser("alpha"), default=ALPHA,
                   help=f"segmentation: the class colours' opacity over the image (default {ALPHA})")
    p.add_argument("--min-score", type=argument_parser("min_score"), default=MIN_SCORE, metavar="S",
                   help=f"detection: the boxes kept, those scoring S or more (default {MIN_SCORE})")
    p.add_argument("--force", action="store_true", help="segmentation, detection: replace existing output files")
    _precision_device(p, engine=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)


def cmd_analyze(args: argparse.Namespace) -> int:
    from vitkit.analysis.report import analyze

    res = analyze(args.src, args.out, data=args.data, images=args.images, num_images=args.num_images, head=args.head,
                  data_dir=args.data_dir, overwrite=args.force, precision=args.precision, device=args.device)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    d = res["attention_distance_by_layer"]
    print(f"analysed {res['num_images']} images: {res['data']}")
    print("mean attention distance (pixels) per layer: min / mean / max over heads")
    for i, (lo, m, hi) in enumerate(zip(d["min"], d["mean"], d["max"])):
        print(f"  layer {i + 1:>2}: {lo:6.1f} {m:6.1f} {hi:6.1f}")
    print(f"figures and report: {Path(args.out) / 'report.html'}")
    return 0


def _analyze_parser(sub: Any) -> None:
    p = sub.add_parser("analyze", help="the paper's figures 6 and 7: filters, position embeddings, attention distance, rollout",
                       description="Embedding filters (28 principal components), position-embedding similarity, mean attention "
                                   "distance per head and layer, attention rollout maps and per-layer class-token attention, "
                                   "as PNGs, JSON and one self-contained report.html.")
    p.add_argument("src", help=f"run directory or checkpoint (ViT or hybrid); {NAMES}")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to analyse (else --data)")
    p.add_argument("--data", help="dataset whose test images to analyse")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--out", type=_directory, required=True, metavar="DIR", help="output directory (refused if not empty, unless --force)")
    p.add_argument("--num-images", type=argument_parser("num_images"), default=128,
                   help="images averaged for attention distance (default 128, as the paper)")
    p.add_argument("--head", type=argument_parser("head"), default=0, help="head (0-based) for the per-layer class-token attention figure")
    _precision_device(p)
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_analyze)


def cmd_export(args: argparse.Namespace) -> int:
    from vitkit.export import export_model

    out = _out(args, "*.onnx, or a directory for --to openvino")
    res = export_model(args.src, out, to=args.to, resolution=args.resolution, opset=args.opset, overwrite=args.force)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    engine = {"onnx": ("ONNX Runtime", "onnxruntime"), "openvino": ("OpenVINO", "openvino")}[res["format"]]
    check = (f"{engine[0]} matches PyTorch: max abs difference {res['max_abs_diff']:.1e}" if res["checked_with"]
             else f"not checked: {engine[1]} is not installed")
    print(f"wrote {res['path']} ({'ONNX opset ' + str(res['opset']) if res['format'] == 'onnx' else 'OpenVINO IR'}, input images "
          f"(N, {res['in_chans']}, {res['image_size'][0]}, {res['image_size'][1]}), outputs logits (N, {res['num_classes']}) "
          f"and pre_logits); {check}")
    return 0


def _export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export any loadable model to ONNX or OpenVINO for serving (checked against PyTorch)",
                       description="A graph with a dynamic batch dimension: input 'images' (N, C, H, W, normalised), outputs "
                                   "'logits' and 'pre_logits'; preprocessing and class names inside. --to onnx (default): one "
                                   "*.onnx file, needs pip install 'vitkit[onnx]'; --to openvino: a directory with "
                                   "openvino_model.xml/.bin (fp32 weights), needs pip install 'vitkit[openvino]'. `vitkit "
                                   "predict` / `eval` / `fewshot` serve either (--engine).")
    p.add_argument("src", help=f"run directory or checkpoint (vitkit, timm, Hugging Face, Google .npz); {NAMES}")
    p.add_argument("old_out", nargs="?", metavar="OUT", help=argparse.SUPPRESS)  # before --out: `export SRC OUT`
    p.add_argument("--out", metavar="PATH", help="*.onnx, or a directory for openvino (refused if it exists, unless --force)")
    p.add_argument("--to", default="onnx", choices=["onnx", "openvino"], help="format (default: onnx)")
    p.add_argument("--resolution", type=argument_parser("resolution"), metavar="R", help="export at R px (position embeddings resampled)")
    p.add_argument("--opset", type=argument_parser("opset"), default=18,
                   help="ONNX opset (default 18); one the installed torch exporter and onnx package write, else refused")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from vitkit.reproduce.run import plan, reproduce, select
    from vitkit.reproduce.plan import Budget

    studies = select(args.only)
    if args.list:
        for study, runs in plan(studies, Budget(quick=args.quick, seeds=args.seeds or 0)):
            print(f"{study.name:<12} {len(runs):>3} runs  {study.title} ({study.source})")
        return 0
    if args.out is None:
        raise ValueError("vitkit reproduce: --out DIR is required (where the runs, results.json and report.html go)")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not ((out / "runs").is_dir() or (out / "results.json").exists()) \
            and not args.force:
        raise ValueError(f"--out {out}: a non-empty directory that holds no reproduce runs; choose another, or --force")
    res = reproduce(out, quick=args.quick, only=args.only, seeds=args.seeds or 0)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for name, s in res["studies"].items():
        print(f"{name:<12} {s['verdict']['outcome']:<13} {s['verdict']['why']}")
    print(f"report: {out / 'report.html'}")
    return 0


def _reproduce_parser(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="the paper's claims in miniature, each with a verdict by a fixed rule",
                       description="Runs the paper's experiments at small scale (digits with --quick, Fashion-MNIST "
                                   "otherwise) and decides, claim by claim, whether it held: held, did not hold or "
                                   "inconclusive, by rules fixed in vitkit/reproduce/verdicts.py. Writes DIR/report.html "
                                   "(self-contained), DIR/results.json and every run under DIR/runs/; rerunning with the "
                                   "same DIR reuses finished runs.")
    p.add_argument("--out", type=_directory, metavar="DIR", help="where the runs and the report go (rerun: resumes)")
    p.add_argument("--quick", action="store_true", help="one seed, short runs on digits: a smoke version, minutes")
    p.add_argument("--only", metavar="NAME[,NAME]", help="run these studies only (--list names them)")
    p.add_argument("--seeds", type=argument_parser("seeds"), help="seeds per arm (default: 1 with --quick, else 3)")
    p.add_argument("--list", action="store_true", help="print the studies and their runs, run nothing")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out that holds no reproduce runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reproduce)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers as in 'An Image is Worth 16x16 Words': models, training, transfer, analysis.",
    )
    parser.add_argument("--version", action="version", version=f"vitkit {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in (_models_parser, _info_parser, _convert_parser, _train_parser, _eval_parser, _finetune_parser,
                _fewshot_parser, _predict_parser, _analyze_parser, _export_parser, _reproduce_parser):  # the order of --help
        add(sub)
    for verb in sub.choices.values():  # options every verb shares
        verb.add_argument("-q", "--quiet", action="store_true", help="no progress bars (they show on a terminal only, as tqdm's)")
    return parser


def _version() -> str:
    from vitkit import __version__

    return __version__


# What a user can cause, as one line: vitkit's own errors (ValueError and its DatasetError / CheckpointError, the
# file errors, VitkitError), a missing extra (ImportError), an estimate of memory beyond the device's (MemoryError);
# any other exception is a bug.
EXPECTED = (ValueError, FileNotFoundError, FileExistsError, PermissionError, ImportError, MemoryError)
# What the system says when writing or reading fails for reasons outside vitkit: the line and what to do.
OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free some space, or write somewhere else",
    errno.EROFS: "a read-only file system: write somewhere else",
    errno.EACCES: "not allowed to write or read there: choose another path, or change its permissions",
    errno.EPERM: "not allowed to write or read there: choose another path, or change its permissions",
    errno.EISDIR: "a directory where a file was expected: name a file",
    errno.ENOTDIR: "a file where a directory was expected: choose another path",
    errno.ENAMETOOLONG: "the name is too long for this file system: choose a shorter path",
    errno.EIO: "an input/output error from the device: check the disk or file system",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer data workers",
}


def error_line(err: BaseException) -> str | None:
    """The one line `main` prints for an error a user can cause (an input, a setting, the machine: a full disk, a
    read-only folder, a GPU out of memory); None for a bug."""
    from vitkit.errors import VitkitError

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(err, torch.OutOfMemoryError):  # outside the training steps (evaluation, verbs)
        first = str(err).splitlines()[0] if str(err) else "out of memory"
        return f"{first}; try a smaller --batch-size (or train.eval_batch_size), or --device cpu"
    if isinstance(err, OSError) and err.errno is not None and err.strerror:  # from the system (vitkit's own: below)
        where = f"{err.filename}: " if err.filename is not None else ""
        hint = OS_HINTS.get(err.errno)
        return f"{where}{err.strerror}" + (f" ({hint})" if hint else "")
    code = _system_errno(err)
    if code is not None:  # the system's answer inside a library's error (safetensors: "I/O error: ... (os error 28)")
        return f"{os.strerror(code)} ({OS_HINTS[code]}): {str(err).strip().splitlines()[0]}"
    if isinstance(err, (VitkitError, *EXPECTED)):
        return " ".join(str(err).split()) or type(err).__name__
    return None


def _system_errno(err: BaseException) -> int | None:
    """The errno of OS_HINTS that `err` carries: an OSError it was raised from, or "os error N" / "[Errno N]" in its
    message (Rust and C++ libraries wrap the system's error in their own type: a full disk is no bug)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in OS_HINTS:
            return e.errno
        m = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(e))
        if m and int(m.group(1) or m.group(2)) in OS_HINTS:
            return int(m.group(1) or m.group(2))
        e = e.__cause__ or e.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from vitkit.runtime import configure_threads_env

    if "torch" not in sys.modules:  # OpenMP reads these once, when torch starts; later they would only leak
        configure_threads_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    if args.quiet:
        from vitkit import progress

        progress.disable()
    try:
        return func(args)
    except KeyboardInterrupt as err:  # Ctrl-C: one line (training says which checkpoint it kept and how to resume)
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets the signal: one line for the job
            print(f"vitkit {args.verb}: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`vitkit models | head`): stop quietly, as other command-line tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush has nowhere to fail
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe's reader closed
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line for what a user can cause
        line = error_line(err)
        if line is None:  # a bug: the traceback, and how to report it
            traceback.print_exc()
            print(f"vitkit {args.verb}: internal error ({type(err).__name__}) in vitkit {_version()}: this is a bug, not "
                  f"something you did; please report it with the command line and the traceback above", file=sys.stderr)
            return 1
        print(f"vitkit {args.verb}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
