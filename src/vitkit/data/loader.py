"""Batches as a pure function of the step: which images, and every random draw of their augmentation,
follow from (seed, step). A resumed run therefore sees exactly the batches an uninterrupted one would,
with no loader state to save, and each rank of a distributed run takes its own slice of the same
global batch."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate

from vitkit.config import DataConfig
from vitkit.data.coco import CocoDetection, detection_collate
from vitkit.data.datasets import ArrayData, DatasetError, FileData, Split, load_image
from vitkit.data.masks import DenseData, MaskFiles, resize_dense
from vitkit.data.transforms import BatchAugment, eval_batch, eval_transform, match_channels, mix_batch, resize_batch, train_transform


def to_device(x: Any, device: torch.device | str) -> Any:
    """A batch on `device`: pinned and copied without blocking when it goes from the CPU to a GPU; a list or dict of
    tensors (detection's per-image targets) moved item by item."""
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu" and torch.cuda.is_available() and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=device.type == "cuda")


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2**63 - 1)


def prepare_arrays(split: ArrayData, cfg: DataConfig, channels: int) -> ArrayData:
    """In-memory images at the model's size and channel count, once, so batches only augment."""
    return ArrayData(resize_batch(match_channels(split.images, channels), cfg.image_size), split.labels)


def prepare_dense(split: DenseData, cfg: DataConfig, channels: int) -> DenseData:
    """An in-memory dense split at the model's size (masks nearest, DenseData's `resize_dense`) and channel count,
    once, so batches only augment."""
    d = resize_dense(split, cfg.image_size)
    return DenseData(match_channels(d.images, channels), d.masks, d.boxes, d.labels, d.instances)


class EpochOrder:
    """The global batch of a step: a fresh permutation per epoch (seeded by seed and epoch), the last
    partial batch dropped; rank r of w takes the r-th contiguous slice."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0:
            raise ValueError("cannot draw batches from an empty split")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.steps_per_epoch = max(1, n // self.batch_size)
        self._cache: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            gen = torch.Generator().manual_seed(step_seed(self.seed, epoch, salt=1))
            self._cache = (epoch, torch.randperm(self.n, generator=gen))
        idx = self._cache[1][b * self.batch_size:(b + 1) * self.batch_size]
        per = len(idx) // world
        return idx[rank * per:(rank + 1) * per]


class StepBatches(TorchDataset):
    """Item `step` is that step's augmented batch (x normalised float, y labels or soft labels; for a dense split
    (DenseData, MaskFiles) y is the masks (B, H, W) int64, moved with their images by the same crop and flip; for
    detection (`boxes`, or a CocoDetection split) x is float in [0, 1], which the detector normalises itself, and y
    a list of per-image targets {"boxes", "labels"} moved with their images, BatchAugment.detection)."""

    def __init__(self, split: Split | DenseData | MaskFiles | CocoDetection, cfg: DataConfig, channels: int,
                 num_classes: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu", boxes: bool = False):
        """`device`: where in-memory images live and are augmented (a GPU for GPU training: the whole batch is
        augmented there; the random draws are made on the CPU generator, so the batches are the same); `boxes`: a
        dense split's boxes are the targets (detection), not its masks."""
        if isinstance(split, ArrayData):
            self.split = prepare_arrays(split, cfg, channels)
        elif isinstance(split, DenseData):
            self.split = prepare_dense(split, cfg, channels)
        else:
            self.split = split
        if torch.device(device).type != "cpu":
            if isinstance(self.split, ArrayData):
                self.split = ArrayData(self.split.images.to(device), self.split.labels.to(device))
            elif isinstance(self.split, DenseData):  # boxes stay on the CPU, moved there (BatchAugment.detection)
                d = self.split
                self.split = DenseData(d.images.to(device), d.masks.to(device), d.boxes, d.labels, d.instances)
        self.boxes = boxes or isinstance(split, CocoDetection)
        if self.boxes and isinstance(self.split, DenseData) and self.split.boxes is None:
            raise ValueError("detection needs boxes, and this dense split has none (a mask folder's); use the canvas task "
                             "or a COCO-format folder (data.name=canvas or coco:PATH)")
        self.cfg, self.channels, self.num_classes, self.seed = cfg, channels, num_classes, seed
        self.rank, self.world = rank, world
        self.order = EpochOrder(len(split), batch_size, seed)
        # dense files: per image, by BatchAugment
        batched = isinstance(self.split, (ArrayData, DenseData, MaskFiles, CocoDetection))
        self.augment = BatchAugment(cfg) if batched else None
        self.transform = None if batched else train_transform(cfg, channels)

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    def __len__(self) -> int:  # not used for iteration; steps are requested explicitly
        return 2**62

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the step's global batch, augmented exactly as in a one-process run: in-memory
        batches are augmented whole (they are cheap) and sliced; files are read per rank, each image's
        augmentation seeded by its place in the global batch (Mixup/CutMix then pair images within the rank). A
        dense split's masks take their images' crops and flips."""
        state = torch.get_rng_state()
        try:
            if isinstance(self.split, (ArrayData, DenseData)):
                idx = self.order.indices(step)
                torch.manual_seed(step_seed(self.seed, step, salt=2))
                if self.boxes:  # images and boxes moved together
                    x, y = self.augment.detection(self.split.images[idx], [_boxes(self.split.targets(i)) for i in idx.tolist()])
                elif isinstance(self.split, DenseData):  # images and masks moved together
                    x, y = self.augment.dense(self.split.images[idx], self.split.masks[idx], self.cfg.ignore_index)
                else:
                    x, y = mix_batch(self.augment(self.split.images[idx]), self.split.labels[idx], self.num_classes, self.cfg)
                per = len(idx) // self.world
                return x[self.rank * per:(self.rank + 1) * per], y[self.rank * per:(self.rank + 1) * per]
            idx = self.order.indices(step, self.rank, self.world)
            offset = self.rank * len(idx)
            xs, ys = [], []
            for j, i in enumerate(idx.tolist()):
                torch.manual_seed(step_seed(self.seed, step, salt=1000 + offset + j))
                x, y = self._file(i)
                xs.append(x)
                ys.append(y)
            if isinstance(self.split, CocoDetection):
                return torch.stack(xs), ys
            if isinstance(self.split, MaskFiles):
                return torch.stack(xs), torch.stack(ys)
            torch.manual_seed(step_seed(self.seed, step, salt=2 + self.rank))
            return mix_batch(torch.stack(xs), torch.tensor(ys, dtype=torch.long), self.num_classes, self.cfg)
        finally:
            torch.set_rng_state(state)

    def _file(self, i: int) -> tuple[torch.Tensor, Any]:
        """Image i of a split on disk, augmented: (C, H, W) and its label, or its mask (H, W) or its boxes moved with it."""
        if isinstance(self.split, CocoDetection):
            image, target = self.split[i]  # at data.image_size (the training split's size), boxes scaled with it
            x, y = self.augment.detection(match_channels(image, self.channels)[None], [_boxes(target)])
            return x[0], y[0]
        if isinstance(self.split, MaskFiles):
            image, mask = self.split[i]  # at data.image_size (MaskFiles' size)
            x, y = self.augment.dense(match_channels(image, self.channels)[None], mask[None], self.cfg.ignore_index)
            return x[0], y[0]
        path, label = self.split.files[i]
        return self.transform(load_image(path, self.channels)), label


def _boxes(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a detector trains on of a target: its boxes and labels (the canvas's mask, COCO's areas and crowds aside)."""
    return {"boxes": target["boxes"], "labels": target["labels"]}


@dataclass
class _Failure:
    """A worker's DatasetError, sent back as data: DataLoader would re-raise it with the worker's traceback as its
    message, and the one line naming the file would be lost in it."""

    message: str


class _Carrying(TorchDataset):
    """`dataset` whose items are a _Failure where reading raised DatasetError (in a DataLoader worker)."""

    def __init__(self, dataset: TorchDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.dataset[i]
        except DatasetError as err:
            return _Failure(str(err))


class _Collate:
    """`collate` (default_collate), or the first _Failure of the batch."""

    def __init__(self, collate: Any = default_collate):
        self.collate = collate

    def __call__(self, items: list) -> Any:
        return next((x for x in items if isinstance(x, _Failure)), None) or self.collate(items)


def _loader(dataset: TorchDataset, workers: int, collate: Any = default_collate, **kwargs: Any) -> Iterator:
    """DataLoader(dataset, ...) iterated (batches by `collate`); a DatasetError in a worker is raised here as itself:
    one line, naming the file."""
    for item in DataLoader(_Carrying(dataset), num_workers=workers,
                           collate_fn=_Collate(collate) if kwargs.get("batch_size") else None, **kwargs):
        if isinstance(item, _Failure):
            raise DatasetError(item.message)
        yield item


def train_stream(batches: StepBatches, start: int, stop: int, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches for steps start..stop-1, prepared by `workers` processes ahead of the training step (data held
    on a GPU is augmented in this process); `pin_memory` for copies to a GPU that overlap compute."""
    if workers <= 0 or isinstance(batches.split, (ArrayData, DenseData)) and batches.split.images.device.type != "cpu":
        for step in range(start, stop):
            yield batches[step]
        return
    yield from _loader(batches, workers, batch_size=None, sampler=range(start, stop), prefetch_factor=2,
                       persistent_workers=False, pin_memory=pin_memory)


class _EvalFiles(TorchDataset):
    def __init__(self, split: FileData, cfg: DataConfig, channels: int):
        self.split, self.transform, self.channels = split, eval_transform(cfg, channels), channels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.split.files[i]
        return self.transform(load_image(path, self.channels)), label


class _EvalMasks(TorchDataset):
    def __init__(self, split: MaskFiles, cfg: DataConfig, channels: int):
        self.split, self.cfg, self.channels = split, cfg, channels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.split[i]  # at data.image_size (MaskFiles' size)
        return eval_batch(match_channels(image, self.channels)[None], self.cfg)[0], mask


def eval_stream(split: Split | DenseData | MaskFiles, cfg: DataConfig, channels: int, batch_size: int, workers: int = 0,
                rank: int = 0, world: int = 1, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every image of a split once, in order, resized (no crop) and normalised; rank r of w gets
    every w-th batch. A dense split's targets are its masks at the same size (nearest), int64."""
    if isinstance(split, (ArrayData, DenseData)):
        dense = isinstance(split, DenseData)
        data = prepare_dense(split, cfg, channels) if dense else prepare_arrays(split, cfg, channels)
        for b, start in enumerate(range(0, len(data), batch_size)):
            if b % world == rank:
                y = data.masks[start:start + batch_size].long() if dense else data.labels[start:start + batch_size]
                yield eval_batch(data.images[start:start + batch_size], cfg), y
        return
    # this rank's batches by index: only its own images are read and decoded
    mine = [i for b, start in enumerate(range(0, len(split), batch_size)) if b % world == rank
            for i in range(start, min(start + batch_size, len(split)))]
    files = _EvalMasks(split, cfg, channels) if isinstance(split, MaskFiles) else _EvalFiles(split, cfg, channels)
    yield from _loader(Subset(files, mine), workers, batch_size=batch_size, shuffle=False, pin_memory=pin_memory)


def detection_stream(split: DenseData | CocoDetection, batch_size: int, workers: int = 0, rank: int = 0, world: int = 1,
                     pin_memory: bool = False) -> Iterator[tuple[torch.Tensor | list[torch.Tensor], list[dict]]]:
    """Every image of a detection split once, in order, as the detector takes it: uint8 (B, C, H, W) at the split's own
    size (a list where the sizes differ: a COCO folder's), with its targets (boxes in those pixels; a COCO folder's
    areas and crowd regions too, for COCO's scoring); rank r of w gets every w-th batch. No resize: the detector
    resizes each image itself and gives its boxes back in the image's pixels, so the scores are in the data's own."""
    if isinstance(split, DenseData):
        if split.boxes is None:
            raise ValueError("detection needs boxes, and this dense split has none (a mask folder's)")
        for b, start in enumerate(range(0, len(split), batch_size)):
            if b % world == rank:
                stop = min(start + batch_size, len(split))
                yield split.images[start:stop], [_boxes(split.targets(i)) for i in range(start, stop)]
        return
    mine = [i for b, start in enumerate(range(0, len(split), batch_size)) if b % world == rank
            for i in range(start, min(start + batch_size, len(split)))]
    yield from _loader(Subset(split, mine), workers, detection_collate, batch_size=batch_size, shuffle=False,
                       pin_memory=pin_memory)
