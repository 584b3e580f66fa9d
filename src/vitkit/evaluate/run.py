"""`vitkit eval`: any loadable model on any dataset split."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vitkit import progress
from vitkit.config import DataConfig, check_argument
from vitkit.data.datasets import DatasetError, load_dataset
from vitkit.data.loader import eval_stream
from vitkit.data.preprocess import Preprocess
from vitkit.evaluate.classify import evaluate
from vitkit.runtime import model_device


def data_config_for(prep: Preprocess, data: str, data_dir: str | None = None, resolution: int | None = None,
                    normalize: str | None = None) -> DataConfig:
    """The evaluation pipeline of dataset `data` for a model prepared as `prep` (its card's, an Engine's)."""
    if resolution:
        prep = prep.replace(image_size=resolution)
    if normalize:
        prep = prep.replace(normalize=normalize)
    return prep.data_config(data, data_dir, val_fraction=0.1, download=True)


def warn_class_names(src: str | Path, model_names: list[str] | None, data_names: list[str]) -> None:
    """One line on stderr when a checkpoint's class names differ from the dataset's (a class-per-folder tree with
    other names, or in another order): the head's outputs are matched to the data's classes by index."""
    from vitkit.runtime import is_main_process

    if not model_names or list(model_names) == list(data_names) or not is_main_process():
        return
    if sorted(model_names) == sorted(data_names):
        why = "the same names in another order"
    else:
        only = [c for c in data_names if c not in model_names][:5]
        why = f"the data has {only} that the checkpoint does not name" if only else "other names"
    print(f"warning: {src} was trained on classes {_short(model_names)}; the data's classes are {_short(data_names)} "
          f"({why}): outputs are matched to them by index", file=sys.stderr)


def _short(names: list[str], n: int = 6) -> str:
    return "[" + ", ".join(map(repr, names[:n])) + (f", ... ({len(names)} in all)" if len(names) > n else "") + "]"


def _dataset_config(data: str, data_dir: str | None, **kw) -> DataConfig:
    """What load_dataset needs (the splits); the image pipeline comes from the model, once it is loaded."""
    return DataConfig(name=data, data_dir=data_dir, val_fraction=0.1, download=True, **kw)


def eval_model(src: str | Path, data: str, split: str = "test", data_dir: str | None = None, batch_size: int = 256,
               resolution: int | None = None, precision: str = "auto", normalize: str | None = None,
               compile: bool = False, device: str = "auto", engine: str = "auto", real_labels: str | Path | None = None) -> dict:
    """Top-1 / top-5, loss, per-class accuracy and the confusion matrix; `precision` "auto" is what the
    hardware does natively (vitkit.train.precision.resolve), recorded in the result as "precision";
    `device` "auto" is the accelerator when there is one (vitkit.runtime.resolve_device); `engine` (vitkit.engines:
    auto, torch, onnxruntime, openvino) what computes, recorded as "engine". `real_labels`: ImageNet ReaL's real.json,
    for ReaL accuracy of a folder of ImageNet validation images ("real_top1": evaluate/real.py)."""
    from vitkit import engines
    from vitkit.convert.load import read_arch
    from vitkit.data.dense import is_dense
    from vitkit.evaluate.real import RealLabelsError, read_real, real_accuracy

    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r}: choose train, val or test")
    check_argument("batch_size", batch_size)
    check_argument("resolution", resolution)
    arch = read_arch(src)
    if is_dense(data) or arch in ("segmentation", "detection"):  # mIoU (eval_segmentation) or mAP (eval_detection)
        task = "detection" if arch == "detection" or data.startswith("coco:") else "segmentation"
        for given, option in ((real_labels, "--real-labels"), (compile, "--compile"), (engine not in ("auto", "torch"), "--engine")):
            if given:
                raise ValueError(f"{option} with a {task} {'dataset' if is_dense(data) else 'model'}: {task} is "
                                 f"evaluated by PyTorch, without it; drop {option}")
        run = eval_detection if task == "detection" else eval_segmentation
        return run(src, data, split, data_dir, batch_size, resolution, precision, normalize, device)
    real = read_real(real_labels) if real_labels else None  # a bad file is refused before anything is read
    if real is not None and not data.startswith("folder:"):
        raise RealLabelsError(f"--real-labels: ReaL labels ImageNet's validation images; evaluate a folder of them "
                              f"(--data folder:PATH), not {data!r}")
    ds = load_dataset(_dataset_config(data, data_dir, **({"in_memory": False} if real is not None else {})))  # their paths
    part = {"train": ds.train, "val": ds.val, "test": ds.test}[split]
    model = engines.load_engine(src, engine, precision, device, resolution, batch_size, images=len(part), compile=compile)
    cfg = data_config_for(model.preprocess, data, data_dir, resolution, normalize)
    k = model.num_classes
    if k != ds.num_classes:
        raise ValueError(f"{src}: the model has {k} classes but {data} has {ds.num_classes}; fine-tune it first "
                         f"(`vitkit finetune {src} --data {data}`)")
    warn_class_names(src, model.class_names, ds.classes)
    dev = model_device(model)
    stream = eval_stream(part, cfg, model.in_chans, batch_size, pin_memory=dev.type == "cuda")
    res = evaluate(model, progress.bar(stream, total=-(-len(part) // batch_size), desc=f"eval {data} ({split})", unit="batch"),
                   num_classes=ds.num_classes, keep_top1=real is not None)
    if real is not None:
        res.update(real_accuracy([p for p, _ in part.files], res.pop("top1_pred"), real, str(real_labels)))
    res["device"] = str(dev)
    res["classes"] = ds.classes
    res["precision"] = model.precision
    res["engine"] = model.describe()
    conf = res["confusion"]
    res["per_class"] = {c: (conf[i][i] / sum(conf[i]) if sum(conf[i]) else float("nan")) for i, c in enumerate(ds.classes)}
    return res


def _dense_data_config(src: str | Path, data: str, data_dir: str | None) -> DataConfig:
    """The data settings of dataset `data` for evaluation: a run directory's own (its canvas, ignore index, splits)
    when its config.json names the same dataset, else the defaults."""
    import dataclasses

    from vitkit.config import load_config

    run = Path(src) / "config.json"
    if run.is_file():
        try:
            cfg = load_config(run).data
        except ValueError:  # a checkpoint's record, not a run's config
            cfg = None
        if cfg is not None and cfg.name == data:
            return dataclasses.replace(cfg, data_dir=data_dir or cfg.data_dir)
    return _dataset_config(data, data_dir)


def eval_segmentation(src: str | Path, data: str, split: str = "test", data_dir: str | None = None, batch_size: int = 256,
                      resolution: int | None = None, precision: str = "auto", normalize: str | None = None,
                      device: str = "auto") -> dict:
    """mIoU, per-class IoU and accuracy (by class name), pixel accuracy, mean class accuracy, loss and the confusion
    matrix of a segmentation model on a split of a dense dataset (canvas, seg:PATH), scored at the model's input size
    (`resolution`: another, the position embeddings resampled) with the masks resized to it (nearest), as training
    scores them. When `src` is a run directory whose config names `data`, the run's data settings apply (its canvas,
    ignore index and validation carve), so its test split is the run's."""
    import dataclasses

    from vitkit.convert.load import load
    from vitkit.data.dense import is_dense, load_dense
    from vitkit.evaluate.segmentation import evaluate_segmentation
    from vitkit.heads.segmentation import SegmentationModel
    from vitkit.models.fast import accelerate
    from vitkit.runtime import resolve_device
    from vitkit.train.precision import resolve

    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r}: choose train, val or test")
    check_argument("batch_size", batch_size)
    check_argument("resolution", resolution)
    if not is_dense(data):
        raise ValueError(f"{src} is a segmentation model; evaluate it on a segmentation dataset (--data canvas or "
                         f"seg:PATH), not {data!r}")
    dev = resolve_device(device)
    precision = resolve(precision, dev, "--precision")
    model, card = load(src, image_size=resolution)
    if not isinstance(model, SegmentationModel):
        raise ValueError(f"{src}: a {type(model).__name__}, not a segmentation model; {data} scores per-pixel classes: train "
                         f"one with objective=segmentation (`vitkit train --recipe seg-canvas`), or evaluate this one on a "
                         f"classification dataset")
    own = data_config_for(card.preprocess, data, data_dir, normalize=normalize)  # the model's size and normalisation
    cfg = dataclasses.replace(_dense_data_config(src, data, data_dir), image_size=own.image_size, normalize=own.normalize)
    ds = load_dense(cfg, only=split)  # the canvas draws the scored split alone
    if model.num_classes != ds.num_classes:
        raise ValueError(f"{src}: the model has {model.num_classes} classes but {data} has {ds.num_classes}; train it on "
                         f"{data} (model.init={src} with objective=segmentation)")
    warn_class_names(src, card.class_names, ds.classes)
    part = {"train": ds.train, "val": ds.val, "test": ds.test}[split]
    accelerate(model.to(dev))  # the fast blocks, as training evaluates
    stream = eval_stream(part, cfg, model.config.in_chans, batch_size, pin_memory=dev.type == "cuda")
    bar = progress.bar(stream, total=-(-len(part) // batch_size), desc=f"eval {data} ({split})", unit="batch")
    res = evaluate_segmentation(model, bar, ds.num_classes, ds.ignore_index, precision, ds.classes)
    res.update({"device": str(dev), "classes": ds.classes, "precision": precision,
                "engine": {"engine": "torch", "precision": precision}})
    return res


def eval_detection(src: str | Path, data: str, split: str = "test", data_dir: str | None = None, batch_size: int = 256,
                   resolution: int | None = None, precision: str = "auto", normalize: str | None = None,
                   device: str = "auto") -> dict:
    """COCO's box mAP (map, map_50, map_75, by object size, recall at 1 / 10 / 100 detections, per class by name:
    evaluate/detection.py) of a detector on a split of a detection dataset (canvas, coco:PATH), each image at its own
    size (the detector resizes it to its input size, `resolution` for another, the position embeddings resampled, and
    gives its boxes back in the image's pixels), as training scores it. When `src` is a run directory whose config
    names `data`, the run's data settings apply (its canvas, validation carve), so its test split is the run's.
    `normalize` overrides the normalisation the detector was built with."""
    import dataclasses

    from vitkit.convert.load import load
    from vitkit.data.dense import is_dense, load_dense
    from vitkit.data.loader import detection_stream
    from vitkit.data.transforms import norm_stats
    from vitkit.evaluate.detection import evaluate_detection
    from vitkit.models.fast import accelerate
    from vitkit.runtime import resolve_device
    from vitkit.train.precision import resolve

    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r}: choose train, val or test")
    check_argument("batch_size", batch_size)
    check_argument("resolution", resolution)
    if not (data == "canvas" or data.startswith("coco:")):
        what = "a segmentation dataset (per-pixel masks)" if is_dense(data) else "a classification dataset"
        raise ValueError(f"{src} is a detection model; evaluate it on a detection dataset (--data canvas or coco:PATH), "
                         f"not {data!r}, {what}")
    dev = resolve_device(device)
    precision = resolve(precision, dev, "--precision")
    model, card = load(src, image_size=resolution)
    if getattr(model.config, "arch", None) != "detection":
        raise ValueError(f"{src}: a {type(model).__name__}, not a detection model; {data} scores boxes: train one with "
                         f"objective=detection (`vitkit train --recipe det-canvas`)")
    if normalize:
        mean, std = norm_stats(normalize, model.config.in_chans)
        model.transform.image_mean, model.transform.image_std = list(mean), list(std)
    cfg = dataclasses.replace(_dense_data_config(src, data, data_dir), image_size=model.config.image_size)
    ds = load_dense(cfg, "detection", only=split)
    if model.num_classes != ds.num_classes:
        raise ValueError(f"{src}: the model has {model.num_classes - 1} object classes but {data} has {ds.num_classes - 1}; "
                         f"train it on {data} (model.init={src} with objective=detection)")
    warn_class_names(src, card.class_names, ds.classes)
    part = {"train": ds.train, "val": ds.val, "test": ds.test}[split]
    if hasattr(part, "size"):  # a COCO folder's training split is read at the training size: score it at its own
        part.size = None
    accelerate(model.to(dev))  # the fast blocks, as training evaluates
    stream = detection_stream(part, batch_size, pin_memory=dev.type == "cuda")
    bar = progress.bar(stream, total=-(-len(part) // batch_size), desc=f"eval {data} ({split})", unit="batch")
    res = evaluate_detection(model, bar, ds.classes, precision)
    res.update({"device": str(dev), "classes": ds.classes, "precision": precision,
                "engine": {"engine": "torch", "precision": precision}})
    return res


def plot_confusion(res: dict, path: str | Path, title: str = "") -> Path:
    """A confusion-matrix figure (rows: true class, columns: predicted; row-normalised colours, counts written)."""
    import numpy as np

    from vitkit.figures import figure, save_png

    conf = np.asarray(res["confusion"], dtype=float)
    rates = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    k = len(conf)
    fig = figure(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = res.get("classes") or [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title or f"top-1 {res['top1']:.4f} on {res['n']} images", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def fewshot_model(src: str | Path, data: str, shots: list[int], seeds: int = 3, l2: float | None = None,
                  data_dir: str | None = None, batch_size: int = 256, precision: str = "auto",
                  resolution: int | None = None, device: str = "auto", engine: str = "auto") -> dict:
    """Few-shot linear evaluation of a model's frozen pre-logits features: the training split's and the
    test split's features are computed once and reused for every shot count and seed."""
    from vitkit import engines
    from vitkit.evaluate.fewshot import DEFAULT_L2, check_fewshot, extract_features, fewshot_eval

    check_fewshot(shots, seeds, l2)
    check_argument("batch_size", batch_size)
    check_argument("resolution", resolution)
    ds = load_dataset(_dataset_config(data, data_dir))
    if ds.num_classes < 2:  # a probe that tells one class from nothing scores 100%
        raise DatasetError(f"{data}: one class ({ds.classes[0]!r}); few-shot classification needs two classes at least")
    model = engines.load_engine(src, engine, precision, device, resolution, batch_size, images=len(ds.train) + len(ds.test))
    cfg = data_config_for(model.preprocess, data, data_dir, resolution)
    warn_class_names(src, model.class_names, ds.classes)
    feats = {}
    for name, part in (("train", ds.train), ("test", ds.test)):
        stream = eval_stream(part, cfg, model.in_chans, batch_size)
        feats[name] = extract_features(model, progress.bar(stream, total=-(-len(part) // batch_size),
                                                           desc=f"features of {data} ({name})", unit="batch"))
    (train_x, train_y), (test_x, test_y) = feats["train"], feats["test"]
    res = fewshot_eval(train_x, train_y, test_x, test_y, shots, seeds, DEFAULT_L2 if l2 is None else l2)
    res.update({"model": str(src), "data": data, "precision": model.precision, "device": str(model_device(model)),
                "engine": model.describe()})
    return res


def eval_multitask(src: str | Path, tasks: list[str] | None = None, data: str | None = None, split: str = "test",
                   data_dir: str | None = None, batch_size: int = 256, resolution: int | None = None,
                   precision: str = "auto", normalize: str | None = None, device: str = "auto") -> dict:
    """Each task of a multitask model scored on its own data's split (top-1 and top-5 for a classification, mIoU and
    per-class IoU for a segmentation: what `eval_model` and `eval_segmentation` report for one task), by task name, and
    "score", the mean of their main scores. `tasks`: these only (default: all); `data`: the tasks trained on that
    dataset only. When `src` is a run directory, the run's data settings apply (its canvas, ignore index, validation
    carve), so its test splits are the run's."""
    import dataclasses

    from vitkit.config import Config, load_config
    from vitkit.convert.load import load
    from vitkit.data.datasets import load_dataset
    from vitkit.data.dense import load_dense
    from vitkit.evaluate.segmentation import evaluate_segmentation
    from vitkit.heads.multitask import MultitaskModel, TaskView
    from vitkit.models.fast import accelerate
    from vitkit.objectives.multitask import MAIN, TaskPlan, task_data
    from vitkit.runtime import resolve_device
    from vitkit.train.precision import resolve

    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r}: choose train, val or test")
    check_argument("batch_size", batch_size)
    check_argument("resolution", resolution)
    dev = resolve_device(device)
    precision = resolve(precision, dev, "--precision")
    model, card = load(src, image_size=resolution)
    if not isinstance(model, MultitaskModel):
        raise ValueError(f"{src}: a {type(model).__name__}, not a multitask model; --task names a multitask model's tasks")
    names = [t.name for t in model.tasks]
    chosen = [t for t in model.tasks if (not tasks or t.name in tasks) and (data is None or t.data == data)]
    unknown = [t for t in tasks or [] if t not in names]
    if unknown or not chosen:
        what = f"--task {','.join(unknown)}" if unknown else f"--data {data}"
        raise ValueError(f"{what}: {src} has no such task; its tasks are "
                         + ", ".join(f"{t.name} ({t.kind} on {t.data or 'unrecorded data'})" for t in model.tasks))
    from vitkit.rundir import RunDir

    run_cfg = Config()
    base = Path(src)
    if base.name == RunDir.CHECKPOINT and (base.parent / "config.json").is_file():  # RUN/checkpoint: the run's settings
        base = base.parent
    config = base / "config.json"
    if config.is_file():
        try:
            loaded = load_config(config)
            run_cfg = loaded if loaded.objective == "multitask" else run_cfg
        except ValueError:  # a checkpoint's record, not a run's config
            pass
    own = data_config_for(card.preprocess, "digits", data_dir, normalize=normalize)  # the model's size and normalisation
    run_cfg = dataclasses.replace(run_cfg, data=dataclasses.replace(
        run_cfg.data, image_size=own.image_size, normalize=own.normalize, data_dir=data_dir or run_cfg.data.data_dir))
    accelerate(model.to(dev))
    out: dict[str, Any] = {}
    for t in chosen:
        if not t.data:
            raise ValueError(f"{src}: task {t.name!r} records no data to score it on")
        cfg = task_data(run_cfg, TaskPlan(t.name, t.data, t.kind, 1.0, 1.0))
        ds = load_dense(cfg, only=split) if t.kind == "segmentation" else load_dataset(cfg)
        if ds.num_classes != t.num_classes:
            raise ValueError(f"{src}: task {t.name!r} has {t.num_classes} classes but {t.data} has {ds.num_classes}")
        warn_class_names(f"{src} ({t.name})", t.classes, ds.classes)
        part = {"train": ds.train, "val": ds.val, "test": ds.test}[split]
        stream = eval_stream(part, cfg, model.config.in_chans, batch_size, pin_memory=dev.type == "cuda")
        bar = progress.bar(stream, total=-(-len(part) // batch_size), desc=f"eval {t.name} on {t.data} ({split})", unit="batch")
        view = TaskView(model, t.name)
        if t.kind == "segmentation":
            res = evaluate_segmentation(view, bar, t.num_classes, ds.ignore_index, precision, ds.classes)
        else:
            res = evaluate(view, bar, precision)
            conf = res["confusion"] or [[0] * len(ds.classes) for _ in ds.classes]  # an empty split: no counts
            res["per_class"] = {c: (conf[i][i] / sum(conf[i]) if sum(conf[i]) else float("nan")) for i, c in enumerate(ds.classes)}
        res.update({"kind": t.kind, "data": t.data, "classes": ds.classes})
        out[t.name] = res
    mains = [out[t.name][MAIN[t.kind]] for t in chosen]
    return {"tasks": out, "score": sum(mains) / len(mains), "n": sum(r["n"] for r in out.values()), "device": str(dev),
            "precision": precision, "engine": {"engine": "torch", "precision": precision}}
