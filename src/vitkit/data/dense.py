"""The dense tasks' data by name, as datasets.py names classification's: data.name=canvas (the canvas task,
data/canvas.py, set by data.canvas: masks for segmentation, boxes for detection), seg:PATH (a folder of images and PNG
masks of class indices, data/masks.py) or coco:PATH (a COCO-format annotations JSON and its images, data/coco.py).

`check_data` refuses a bad name or setting before a run directory exists; `load_dense` reads the splits into a
DenseDataset (a folder at data.image_size; the canvas at its own size, resized with the batches). A folder without a
validation split gets one carved from train (data.val_fraction, a fixed draw), as classification's datasets do.
A COCO folder's training split is read at data.image_size (a batch needs one size; boxes scaled with the images), its
validation and test splits at the images' own sizes, so that their scores are COCO's own, in the images' pixels (the
detector resizes each image itself and gives its boxes back in the input's pixels).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from vitkit.config import CanvasConfig, DataConfig
from vitkit.data.canvas import CANVAS_SOURCES, CanvasSpec, canvas_classes, canvas_dataset
from vitkit.data.datasets import FOLDER, SPLIT_SEED, DatasetError
from vitkit.data.masks import DenseDataset, find_layout, segmentation_folder

CANVAS = "canvas"
SEG = "seg:"  # seg:PATH, a segmentation folder (told apart from folder:PATH, a class-per-folder tree)
COCO = "coco:"  # coco:PATH, a COCO-format detection folder or annotations file
DENSE_SOURCES = (CANVAS, f"{SEG}PATH")
DETECTION_SOURCES = (CANVAS, f"{COCO}PATH")
# classification's data options, which pick or blend images by their class label (a dense image has none) or change
# the image alone (RandAugment's rotations, shears and translations, random erasing: its mask or boxes left as they were)
CLASSIFICATION_ONLY = {
    "classes": "it keeps images of some classes; a dense task's image holds several",
    "labels_per_class": "it keeps images per class label; a dense task's image has none",
    "train_subset": "it keeps images stratified by class label; set the canvas task's data.canvas.train instead",
    "val_size": "it holds out images stratified by class label; use data.val_fraction (or data.canvas.val)",
    "mixup": "it blends two images' labels into soft ones; a dense task's classes are per pixel or per box",
    "cutmix": "it blends two images' labels into soft ones; a dense task's classes are per pixel or per box",
    "randaugment": "its rotations, shears and translations would move the image and not its mask or boxes",
    "random_erasing": "it would erase part of the image and not of its mask or boxes",
}
# what detection refuses besides: segmentation's mask options
DETECTION_REFUSES = {
    "ignore_index": "it marks unlabelled mask pixels, and detection has no masks",
    "reduce_zero_label": "it shifts mask values, and detection has no masks",
}


def is_dense(name: str) -> bool:
    """A dense task's data name (canvas, seg:PATH, coco:PATH)."""
    return name == CANVAS or name.startswith((SEG, COCO))


def canvas_spec(c: CanvasConfig) -> CanvasSpec:
    """The CanvasSpec of data.canvas; a bad setting is a ValueError naming its key."""
    sources = tuple(s.strip() for s in c.sources.split(",") if s.strip())
    if not sources or any(s not in CANVAS_SOURCES for s in sources) or len(set(sources)) != len(sources):
        raise ValueError(f"data.canvas.sources={c.sources!r}: name {' and/or '.join(CANVAS_SOURCES)}, comma-separated, "
                         f"each once")
    if c.items_min > c.items_max:
        raise ValueError(f"data.canvas.items_min={c.items_min} is above data.canvas.items_max={c.items_max}")
    return CanvasSpec(size=c.size, sources=sources, items=(c.items_min, c.items_max), max_overlap=c.max_overlap, seed=c.seed)


def seg_root(name: str, option: str = "data.name") -> Path:
    """The folder of seg:PATH, which must exist."""
    root = Path(name[len(SEG):]).expanduser()
    if not name[len(SEG):] or not root.is_dir():
        raise DatasetError(f"{option} {name!r}: no such directory; seg:PATH names a folder of images and masks "
                           f"(ROOT/images + ROOT/masks, split folders, Pascal VOC or ADE20K)")
    return root


def coco_root(name: str, option: str = "data.name") -> Path:
    """The folder or annotations file of coco:PATH, which must exist."""
    root = Path(name[len(COCO):]).expanduser()
    if not name[len(COCO):] or not root.exists():
        raise DatasetError(f"{option} {name!r}: no such directory or file; coco:PATH names a COCO-format folder "
                           f"(ROOT/annotations.json + ROOT/images, COCO's annotations/instances_*.json, split folders) "
                           f"or an annotations .json file")
    return root


def _check_detection(cfg: DataConfig) -> None:
    from vitkit.data.coco import find_coco_layout

    name = cfg.name
    if name != CANVAS and not name.startswith(COCO):
        hint = ("; a segmentation folder has masks, not boxes" if name.startswith(SEG)
                else f"; a COCO-format folder is data.name=coco:{name[len(FOLDER):]}" if name.startswith(FOLDER) else "")
        raise DatasetError(f"data.name={name!r} with objective=detection: detection learns from boxes; choose one of "
                           f"{', '.join(DETECTION_SOURCES)}{hint}")
    default = DataConfig()
    for key, why in {**CLASSIFICATION_ONLY, **DETECTION_REFUSES}.items():
        if getattr(cfg, key) != getattr(default, key):
            raise ValueError(f"data.{key}={getattr(cfg, key)!r} with objective=detection: {why}; leave it at "
                             f"{getattr(default, key)!r}")
    if name == CANVAS:
        canvas_spec(cfg.canvas)
    else:
        find_coco_layout(coco_root(name))


def check_data(cfg: DataConfig, objective: str = "segmentation") -> None:
    """A dense task's data settings, checked before anything is written: the name, the canvas or the folder's layout,
    no classification-only option (nor one that changes an image without its mask or boxes), an ignore index that is
    no class of the canvas (a folder's classes and masks are read by `load_dense`, which train/loop.py calls before
    the run directory exists)."""
    if objective == "detection":
        return _check_detection(cfg)
    name = cfg.name
    if name.startswith(COCO):
        raise DatasetError(f"data.name={name!r} with objective=segmentation: a COCO-format folder holds boxes (read here "
                           f"without masks); train a detector on it (objective=detection), or segment a mask folder "
                           f"(data.name=seg:PATH)")
    if not is_dense(name):
        hint = (f"; a folder of images and masks is data.name=seg:{name[len(FOLDER):]}" if name.startswith(FOLDER)
                else "")
        raise DatasetError(f"data.name={name!r} with objective=segmentation: segmentation learns from per-pixel masks; "
                           f"choose one of {', '.join(DENSE_SOURCES)}{hint}")
    default = DataConfig()
    for key, why in CLASSIFICATION_ONLY.items():
        if getattr(cfg, key) != getattr(default, key):
            raise ValueError(f"data.{key}={getattr(cfg, key)!r} with objective=segmentation: {why}; leave it at "
                             f"{getattr(default, key)!r}")
    if name == CANVAS:
        k = len(canvas_classes(canvas_spec(cfg.canvas).sources))
        if cfg.ignore_index < k:
            raise ValueError(f"data.ignore_index={cfg.ignore_index} is one of the canvas task's {k} classes (0-{k - 1}); "
                             f"choose {k} or above (the default 255)")
    else:
        find_layout(seg_root(name))


def load_dense(cfg: DataConfig, objective: str = "segmentation", only: str | None = None) -> DenseDataset:
    """The train / val / test splits of data.name (canvas, seg:PATH, or for detection coco:PATH). `only` (a split's
    name, vitkit eval's): the canvas draws that split alone, the others empty (each canvas is drawn from its split and
    index alone, so it is the same split); a folder's are all read (its validation carve comes from train)."""
    check_data(cfg, objective)
    if cfg.name.startswith(COCO):
        return _coco(cfg)
    if cfg.name == CANVAS:
        c = cfg.canvas
        n = {s: k if only in (None, s) else 0 for s, k in (("train", c.train), ("val", c.val), ("test", c.test))}
        ds = canvas_dataset(canvas_spec(c), n["train"], n["val"], n["test"], cfg.data_dir, cfg.download, progress=True)
        return dataclasses.replace(ds, ignore_index=cfg.ignore_index)
    ds = segmentation_folder(seg_root(cfg.name), size=cfg.image_size, ignore_index=cfg.ignore_index,
                             reduce_zero_label=cfg.reduce_zero_label, in_memory=cfg.in_memory)
    if ds.ignore_index < ds.num_classes:
        raise DatasetError(f"data.ignore_index={ds.ignore_index} is one of {cfg.name}'s {ds.num_classes} classes "
                           f"(0-{ds.num_classes - 1}); set the value its masks mark unlabelled pixels with")
    return _carve_val(ds, cfg)


def _carve_val(ds: DenseDataset, cfg: DataConfig) -> DenseDataset:
    """`ds` with a validation split carved from train when it has none (data.val_fraction; a fixed draw, as
    load_dataset carves classification's)."""
    if len(ds.val) or cfg.val_fraction == 0:
        return ds
    n_val = max(1, int(round(len(ds.train) * cfg.val_fraction)))
    if n_val >= len(ds.train):
        raise DatasetError(f"{cfg.name}: {len(ds.train)} training image(s), too few to hold out data.val_fraction="
                           f"{cfg.val_fraction:g} for validation; add images or set data.val_fraction=0")
    perm = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = ds.train.take(perm[:n_val].sort().values), ds.train.take(perm[n_val:].sort().values)
    return dataclasses.replace(ds, train=train, val=val, notes=ds.notes + [f"{n_val} training images held out for validation"])


def _coco(cfg: DataConfig) -> DenseDataset:
    """A COCO-format folder's splits (module docstring: training at data.image_size, the others at their own sizes);
    without a validation split, one carved from train (data.val_fraction, a fixed draw)."""
    from vitkit.data.coco import coco_folder

    ds = coco_folder(coco_root(cfg.name), size=None)
    ds.train.size = cfg.image_size  # a batch of one size; boxes and areas scaled with the images
    ds = _carve_val(ds, cfg)
    ds.val.size = None  # scored in the images' own pixels
    return ds
