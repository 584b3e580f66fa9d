"""The canvas task: real Fashion-MNIST and digits items placed at random on a black canvas, with per-pixel class masks
and tight boxes, for segmentation and detection offline (issue 26).

A canvas is a pure function of (seed, split, index): item i draws from its own numpy Generator, so it is the same in any
order, in any DataLoader worker, on any machine. Each canvas holds 1-4 items (by default), each a source image resized
to a random side within its source's bounds and placed at a random position where its box overlaps no earlier item's
box by more than `max_overlap` of the smaller box (a few tries, else the item is left out). Later items lie on top.

Class indices: 0 is the background, then the Fashion-MNIST classes (1-10) and the digits (after them: 11-20 with both
sources). A pixel is an item's where the item's resized pixel is "ink" (>= `ink`); the mask takes the class of the
topmost item with ink there, the image the item's pixel (and elsewhere the brighter of what lies below and the item's
faint fringe), so mask > 0 exactly where the image is >= `ink`. Boxes are tight around each item's visible ink
(x0, y0, x1, y1) on pixel edges, COCO's convention; an item hidden entirely by later ones is left out.

Splits take their items from the source's own splits as `load_dataset` makes them (its fixed validation carve from
train), so no item of a test canvas is in any training canvas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from vitkit.data.datasets import FASHION_CLASSES, ArrayData
from vitkit.data.masks import DenseData, DenseDataset

CANVAS_SOURCES = ("fashion-mnist", "digits")
DIGIT_CLASSES = [f"digit {i}" for i in range(10)]
SOURCE_CLASSES = {"fashion-mnist": FASHION_CLASSES, "digits": DIGIT_CLASSES}
SPLITS = ("train", "val", "test")
PLACEMENT_TRIES = 20  # positions tried per item before it is left out


@dataclass(frozen=True)
class CanvasSpec:
    """What a canvas looks like. Sides in pixels; `fashion_size` / `digits_size`: the side an item is resized to (from
    28 and 8 px), drawn uniformly within the bounds and never above the canvas."""

    size: int = 96
    sources: tuple[str, ...] = CANVAS_SOURCES
    items: tuple[int, int] = (1, 4)
    fashion_size: tuple[int, int] = (24, 48)
    digits_size: tuple[int, int] = (16, 32)
    max_overlap: float = 0.2  # of the smaller of two boxes; 0: items never overlap
    ink: int = 32  # the threshold of an item's pixel (0-255) to count as the item's
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        bad = [s for s in self.sources if s not in CANVAS_SOURCES]
        if not self.sources or bad or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"canvas sources={self.sources!r}: name each of {CANVAS_SOURCES} at most once, one at least")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"canvas size={self.size}: a side of 8-1024 pixels (the task is meant for 64-128)")
        for name in ("items", "fashion_size", "digits_size"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"canvas {name}=({lo}, {hi}): bounds 1 <= low <= high")
        if self.items[1] > 255:
            raise ValueError(f"canvas items={self.items}: at most 255 items (instance maps are uint8)")
        if not 0 <= self.max_overlap <= 1:
            raise ValueError(f"canvas max_overlap={self.max_overlap}: a fraction in [0, 1]")
        if not 1 <= self.ink <= 255:
            raise ValueError(f"canvas ink={self.ink}: a pixel threshold in 1-255")


def canvas_classes(sources: tuple[str, ...] = CANVAS_SOURCES) -> list[str]:
    """["background", then each source's classes in the order of CANVAS_SOURCES]: index = mask value = box label."""
    return ["background"] + [name for s in CANVAS_SOURCES if s in sources for name in SOURCE_CLASSES[s]]


def _class_offsets(sources: tuple[str, ...]) -> dict[str, int]:
    """The class index of a source's label 0."""
    out, k = {}, 1
    for s in CANVAS_SOURCES:
        if s in sources:
            out[s], k = k, k + len(SOURCE_CLASSES[s])
    return out


def _resize(item: np.ndarray, side: int) -> np.ndarray:
    """uint8 (h, w) -> (side, side), PIL's bilinear (antialiased when shrinking)."""
    from PIL import Image

    if item.shape == (side, side):
        return item
    return np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection of boxes a and b over the smaller one's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / small


class CanvasTask:
    """The canvas task over source items: `pools[split][source]` is an ArrayData of uint8 (N, 1, h, w) images and
    their labels. `CanvasTask.load(spec)` takes them from vitkit's datasets; tests may hand in their own."""

    def __init__(self, spec: CanvasSpec, pools: dict[str, dict[str, ArrayData]]):
        self.spec = spec
        for split in SPLITS:
            for s in spec.sources:
                pool = pools.get(split, {}).get(s)
                if pool is None or len(pool) == 0:
                    raise ValueError(f"canvas task: no {s} items for the {split} split")
        self.pools = {split: {s: pools[split][s] for s in spec.sources} for split in SPLITS}
        self._arrays = {split: {s: p.images[:, 0].numpy() for s, p in self.pools[split].items()} for split in SPLITS}
        self._labels = {split: {s: p.labels.numpy() for s, p in self.pools[split].items()} for split in SPLITS}
        self.offsets = _class_offsets(spec.sources)
        self.classes = canvas_classes(spec.sources)

    @classmethod
    def load(cls, spec: CanvasSpec | None = None, data_dir: str | None = None, download: bool = False) -> "CanvasTask":
        """Items from `load_dataset`'s splits of each source (train, its fixed validation carve, test)."""
        from vitkit.config import DataConfig
        from vitkit.data.datasets import load_dataset

        spec = spec or CanvasSpec()
        pools: dict[str, dict[str, ArrayData]] = {split: {} for split in SPLITS}
        for s in spec.sources:
            ds = load_dataset(DataConfig(name=s, data_dir=data_dir, download=download))
            for split in SPLITS:
                pools[split][s] = getattr(ds, split)
        return cls(spec, pools)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _rng(self, split: str, i: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, SPLITS.index(split), int(i)])

    def draw(self, split: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Canvas i of `split` as numpy: image uint8 (S, S), mask uint8 (S, S), instances uint8 (S, S), boxes float32
        (n, 4), labels int64 (n,)."""
        if split not in SPLITS:
            raise ValueError(f"canvas split {split!r} is not one of {SPLITS}")
        spec, S = self.spec, self.spec.size
        rng = self._rng(split, i)
        image = np.zeros((S, S), np.uint8)
        mask = np.zeros((S, S), np.uint8)
        inst = np.zeros((S, S), np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        classes: list[int] = []
        for _ in range(int(rng.integers(spec.items[0], spec.items[1] + 1))):
            source = spec.sources[int(rng.integers(len(spec.sources)))]
            arrays = self._arrays[split][source]
            j = int(rng.integers(len(arrays)))
            lo, hi = spec.fashion_size if source == "fashion-mnist" else spec.digits_size
            side = min(int(rng.integers(lo, hi + 1)), S)
            item = _resize(arrays[j], side)
            ink = item >= spec.ink
            rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
            if not len(rows):
                continue  # no ink at this size
            item, ink = item[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            h, w = item.shape
            for _try in range(PLACEMENT_TRIES):
                y, x = int(rng.integers(S - h + 1)), int(rng.integers(S - w + 1))
                box = (x, y, x + w, y + h)
                if all(_overlap(box, b) <= spec.max_overlap for b in placed):
                    break
            else:
                continue  # no room for it
            region = (slice(y, y + h), slice(x, x + w))
            image[region] = np.where(ink, item, np.maximum(image[region], item))
            mask[region][ink] = self.offsets[source] + int(self._labels[split][source][j])
            inst[region][ink] = len(placed) + 1
            placed.append(box)
            classes.append(self.offsets[source] + int(self._labels[split][source][j]))
        return (image, mask, *self._boxes(inst, classes))

    @staticmethod
    def _boxes(inst: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes tight around each instance's visible pixels; instances hidden entirely dropped and the rest renumbered."""
        boxes, labels, renumber = [], [], np.zeros(len(classes) + 1, np.uint8)
        for k, c in enumerate(classes, start=1):
            on = inst == k
            rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
            if not len(rows):
                continue
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
            labels.append(c)
            renumber[k] = len(labels)
        return renumber[inst], np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)

    def sample(self, split: str, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Canvas i as (uint8 image (1, S, S), {"mask" int64 (S, S), "boxes" (n, 4), "labels" (n,), "instances"})."""
        image, mask, inst, boxes, labels = self.draw(split, i)
        return torch.from_numpy(image)[None], {"mask": torch.from_numpy(mask).long(), "boxes": torch.from_numpy(boxes),
                                               "labels": torch.from_numpy(labels), "instances": torch.from_numpy(inst)}

    def materialise(self, split: str, n: int, start: int = 0, progress: bool = False) -> DenseData:
        """Canvases start..start+n-1 of `split` as one DenseData (boxes padded to the most items a canvas can hold);
        `progress`: a progress bar (on the main process, for a thousand canvases or more)."""
        from vitkit import progress as bars
        from vitkit.runtime import is_main_process

        S, M = self.spec.size, self.spec.items[1]
        images = np.zeros((n, 1, S, S), np.uint8)
        masks = np.zeros((n, S, S), np.uint8)
        insts = np.zeros((n, S, S), np.uint8)
        boxes = np.zeros((n, M, 4), np.float32)
        labels = np.zeros((n, M), np.int64)
        for k in bars.bar(range(n), desc=f"drawing {split} canvases", unit="canvas",
                          enabled=progress and n >= 1000 and is_main_process()):
            images[k, 0], masks[k], insts[k], b, y = self.draw(split, start + k)
            boxes[k, :len(y)], labels[k, :len(y)] = b, y
        t = torch.from_numpy
        return DenseData(t(images), t(masks), t(boxes), t(labels), t(insts))


class CanvasDataset(TorchDataset):
    """Canvases 0..n-1 of a split drawn on demand (for more canvases than memory holds, or DataLoader workers): item i is
    `task.sample(split, i)`."""

    def __init__(self, task: CanvasTask, split: str, n: int):
        self.task, self.split, self.n = task, split, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not 0 <= i < self.n:
            raise IndexError(f"canvas {i} of {self.n}")
        return self.task.sample(self.split, i)


def canvas_dataset(spec: CanvasSpec | None = None, train: int = 5000, val: int = 500, test: int = 1000,
                   data_dir: str | None = None, download: bool = False, task: CanvasTask | None = None,
                   progress: bool = False) -> DenseDataset:
    """The canvas task's splits in memory: `train` / `val` / `test` canvases each (`progress`: bars while drawing)."""
    task = task or CanvasTask.load(spec, data_dir, download)
    spec = task.spec
    splits = [task.materialise(split, n, progress=progress) for split, n in zip(SPLITS, (train, val, test))]
    sizes = {s: "-".join(str(v) for v in (spec.fashion_size if s == "fashion-mnist" else spec.digits_size)) for s in spec.sources}
    source = (f"canvas task: {' + '.join(spec.sources)} items on {spec.size} px canvases "
              f"({spec.items[0]}-{spec.items[1]} items, sides {', '.join(f'{s} {v}' for s, v in sizes.items())} px, seed {spec.seed})")
    return DenseDataset("canvas", *splits, task.classes, 1, source)
