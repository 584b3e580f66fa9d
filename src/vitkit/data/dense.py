"""The dense tasks' data by name, as datasets.py names classification's: data.name=canvas (the canvas task,
data/canvas.py, set by data.canvas) or seg:PATH (a folder of images and PNG masks of class indices, data/masks.py).

`check_data` refuses a bad name or setting before a run directory exists; `load_dense` reads the splits into a
DenseDataset (a folder at data.image_size; the canvas at its own size, resized with the batches). A folder without a
validation split gets one carved from train (data.val_fraction, a fixed draw), as classification's datasets do.
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
DENSE_SOURCES = (CANVAS, f"{SEG}PATH")
# classification's data options, which pick or blend images by their class label (a dense image has none) or move
# the image alone (RandAugment's rotations, shears and translations would leave its mask behind)
CLASSIFICATION_ONLY = {
    "classes": "it keeps images of some classes; a segmentation image holds several",
    "labels_per_class": "it keeps images per class label; a segmentation image has none",
    "train_subset": "it keeps images stratified by class label; set the canvas task's data.canvas.train instead",
    "val_size": "it holds out images stratified by class label; use data.val_fraction (or data.canvas.val)",
    "mixup": "it blends two images' labels into soft ones; a mask's classes are per pixel",
    "cutmix": "it blends two images' labels into soft ones; a mask's classes are per pixel",
    "randaugment": "its rotations, shears and translations would move the image and not its mask",
}


def is_dense(name: str) -> bool:
    """A dense task's data name (canvas, seg:PATH)."""
    return name == CANVAS or name.startswith(SEG)


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


def check_data(cfg: DataConfig) -> None:
    """A dense task's data settings, checked before anything is written: the name, the canvas or the folder's layout,
    no classification-only option, an ignore index that is no class."""
    name = cfg.name
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


def load_dense(cfg: DataConfig) -> DenseDataset:
    """The train / val / test splits of data.name (canvas or seg:PATH)."""
    check_data(cfg)
    if cfg.name == CANVAS:
        c = cfg.canvas
        ds = canvas_dataset(canvas_spec(c), c.train, c.val, c.test, cfg.data_dir, cfg.download, progress=True)
        return dataclasses.replace(ds, ignore_index=cfg.ignore_index)
    ds = segmentation_folder(seg_root(cfg.name), size=cfg.image_size, ignore_index=cfg.ignore_index,
                             reduce_zero_label=cfg.reduce_zero_label, in_memory=cfg.in_memory)
    if ds.ignore_index < ds.num_classes:
        raise DatasetError(f"data.ignore_index={ds.ignore_index} is one of {cfg.name}'s {ds.num_classes} classes "
                           f"(0-{ds.num_classes - 1}); set the value its masks mark unlabelled pixels with")
    if len(ds.val) == 0 and cfg.val_fraction > 0:  # a fixed draw, as load_dataset carves classification's
        n_val = max(1, int(round(len(ds.train) * cfg.val_fraction)))
        if n_val >= len(ds.train):
            raise DatasetError(f"{cfg.name}: {len(ds.train)} training image(s), too few to hold out data.val_fraction="
                               f"{cfg.val_fraction:g} for validation; add images or set data.val_fraction=0")
        perm = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(SPLIT_SEED))
        val, train = ds.train.take(perm[:n_val].sort().values), ds.train.take(perm[n_val:].sort().values)
        ds = dataclasses.replace(ds, train=train, val=val, notes=ds.notes + [f"{n_val} training images held out for validation"])
    return ds
