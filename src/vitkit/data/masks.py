"""Per-pixel class masks: the in-memory split of a dense task (images, masks, boxes) and the folder reader.

A mask holds one class index per pixel; `ignore_index` (255 by default, VOC's object borders) marks pixels that no
loss or metric counts. Folders are laid out as users have them:

    ROOT/images/NAME.jpg + ROOT/masks/NAME.png                    one pool (20% held out as the test split)
    ROOT/{train,val,test}/images/... + .../masks/...              splits as folders (val alone: used as the test split)
    ROOT/JPEGImages + ROOT/SegmentationClass                      Pascal VOC (ImageSets/Segmentation/{train,val}.txt)
    ROOT/images/{training,validation} + ROOT/annotations/...      ADE20K (ADEChallengeData2016)

A mask is the image's stem with a lossless suffix (PNG as a rule), at any depth matching the image's. Palette PNGs
(mode "P": the stored index is the class, the palette only colours it) and grayscale ones (mode "L") both read as
indices; 16-bit PNGs too. Class names come from ROOT/classes.txt (one per line, line i names class i), VOC's own
names for the VOC layout, else the mask values found. Nothing here unpickles anything: PNG / JPEG and text only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset as TorchDataset

from vitkit.data.datasets import IMAGE_SUFFIXES, IN_MEMORY_MAX_FILES, SPLIT_SEED, DatasetError, load_image
from vitkit.data.transforms import resize_batch

IGNORE_INDEX = 255
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}  # compression moves the class indices at every edge
INDEX_MODES = {"P", "L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I"}  # PIL modes whose pixel values are the indices
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


# --- the in-memory split -------------------------------------------------------------------------------------------


@dataclass
class DenseData:
    """An in-memory dense split: uint8 images (N, C, H, W), class-index masks (N, H, W) (uint8 when the classes and the
    ignore index fit, else int32), and optionally up to M boxes per image: boxes float32 (N, M, 4) as (x0, y0, x1, y1)
    on pixel edges (COCO's convention: the box of pixel columns a..b is [a, b + 1)), labels int64 (N, M) in the masks'
    class indices with 0 for an empty slot, and instances (N, H, W): 0 off every object, j + 1 on box j's pixels."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    instances: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: torch.Tensor) -> "DenseData":
        opt = lambda t: None if t is None else t[idx]  # noqa: E731
        return DenseData(self.images[idx], self.masks[idx], opt(self.boxes), opt(self.labels), opt(self.instances))

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        """Image i's target as torchvision's detectors and losses take it: "mask" (H, W) int64, and where there are
        boxes, "boxes" (n, 4) float32 and "labels" (n,) int64 without the empty slots."""
        out = {"mask": self.masks[i].long()}
        if self.boxes is not None:
            keep = self.labels[i] > 0
            out["boxes"], out["labels"] = self.boxes[i][keep], self.labels[i][keep]
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[i], self.targets(i)


def dense_collate(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """A DataLoader's batch of (image, target) items: images (B, C, H, W), masks (B, H, W), the targets as a list
    (their box counts differ)."""
    images = torch.stack([x for x, _ in items])
    masks = torch.stack([t["mask"] for _, t in items])
    return images, masks, [t for _, t in items]


def mask_dtype(num_classes: int, ignore_index: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 and 0 <= ignore_index <= 255 else torch.int32


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Class-index maps (N, H, W) -> (N, size, size) by nearest neighbour on pixel centres (PIL's NEAREST; torch's
    plain "nearest" shifts by half a pixel), in their own dtype: an index is never blended."""
    if masks.shape[-2:] == (size, size):
        return masks
    out = [F.interpolate(chunk[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0] for chunk in masks.split(4096)]
    return torch.cat(out).to(masks.dtype)


def resize_dense(data: DenseData, size: int) -> DenseData:
    """A dense split at size x size: images antialiased bilinear (`resize_batch`), masks and instances nearest, boxes
    scaled with them."""
    H, W = data.images.shape[-2:]
    boxes = data.boxes
    if boxes is not None and (H, W) != (size, size):
        boxes = boxes * torch.tensor([size / W, size / H, size / W, size / H], dtype=boxes.dtype)
    instances = None if data.instances is None else resize_masks(data.instances, size)
    return DenseData(resize_batch(data.images, size), resize_masks(data.masks, size), boxes, data.labels, instances)


@dataclass
class DenseDataset:
    """The splits of a dense task, as `datasets.Dataset` is for classification; `classes[0]` is the background where
    the task has one (the canvas task, VOC)."""

    name: str
    train: "DenseData | MaskFiles"
    val: "DenseData | MaskFiles"
    test: "DenseData | MaskFiles"
    classes: list[str]
    channels: int
    source: str
    ignore_index: int = IGNORE_INDEX
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- reading one pair ----------------------------------------------------------------------------------------------


def read_mask(path: Path, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX,
              reduce_zero_label: bool = False) -> torch.Tensor:
    """A mask file as class indices (H, W) int64. `reduce_zero_label` (ADE20K's convention, as mmseg's): value 0
    ("other") becomes ignore_index and every other value v becomes v - 1. With `num_classes`, a value outside
    0..num_classes-1 that is not ignore_index is an error naming the file."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() in LOSSY_SUFFIXES:
        raise DatasetError(f"{path}: a mask saved with lossy compression ({path.suffix}) has its class indices changed along "
                           f"every edge; save masks as PNG")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in INDEX_MODES:
                raise DatasetError(f"{path}: a {im.mode} mask; vitkit reads masks of class indices, a palette ('P') or grayscale "
                                   f"('L') PNG whose pixel values are the classes (as VOC's SegmentationClass PNGs): map the "
                                   f"colours to their indices and save those")
            m = torch.from_numpy(np.asarray(im).astype(np.int64))  # "P": the indices themselves, the palette aside
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read this mask ({err}); replace or remove the file") from err
    if reduce_zero_label:
        m = torch.where(m == 0, ignore_index, torch.where(m == ignore_index, ignore_index, m - 1))
    if num_classes is not None:
        bad = (m != ignore_index) & ((m < 0) | (m >= num_classes))
        if bool(bad.any()):
            values = sorted(set(m[bad].unique().tolist()))
            shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            raise DatasetError(f"{path}: mask values {shown} are outside the {num_classes} classes 0-{num_classes - 1} and are not "
                               f"the ignore index {ignore_index}; name more classes (ROOT/classes.txt) or set the ignore index")
    return m


def read_pair(image: Path, mask: Path, channels: int = 3, size: int | None = None, num_classes: int | None = None,
              ignore_index: int = IGNORE_INDEX, reduce_zero_label: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (uint8 (C, H, W), read as every verb reads images: `load_image`, EXIF orientation applied) and its mask
    (int64 (H, W)), checked to be of one size, then optionally resized to size x size: image bilinear, mask nearest."""
    x = load_image(image, channels)
    m = read_mask(mask, num_classes, ignore_index, reduce_zero_label)
    if tuple(x.shape[-2:]) != tuple(m.shape):
        raise DatasetError(f"{mask}: mask is {m.shape[1]}x{m.shape[0]} pixels but its image {image} is "
                           f"{x.shape[2]}x{x.shape[1]} (width x height); a mask labels its image's pixels one for one")
    if size is not None:
        x, m = resize_batch(x[None], size)[0], resize_masks(m[None], size)[0]
    return x, m


class MaskFiles(TorchDataset):
    """A split read pair by pair from disk: item i is (uint8 image (C, H, W), int64 mask (H, W)), resized to
    size x size when `size` is given (a batch needs one size); `load()` reads them all into a DenseData."""

    def __init__(self, pairs: list[tuple[Path, Path]], num_classes: int, ignore_index: int = IGNORE_INDEX,
                 reduce_zero_label: bool = False, channels: int = 3, size: int | None = None):
        self.pairs, self.num_classes, self.ignore_index = pairs, num_classes, ignore_index
        self.reduce_zero_label, self.channels, self.size = reduce_zero_label, channels, size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pairs[i]
        return read_pair(image, mask, self.channels, self.size, self.num_classes, self.ignore_index, self.reduce_zero_label)

    def take(self, idx: torch.Tensor) -> "MaskFiles":
        return MaskFiles([self.pairs[i] for i in idx.tolist()], self.num_classes, self.ignore_index, self.reduce_zero_label,
                         self.channels, self.size)

    def load(self) -> DenseData:
        if self.size is None and len({_image_size(p) for p, _ in self.pairs}) > 1:
            raise DatasetError(f"{self.pairs[0][0].parent}: images of several sizes; give a size to hold them in memory")
        xs, ms = zip(*(self[i] for i in range(len(self)))) if len(self) else ((), ())
        dtype = mask_dtype(self.num_classes, self.ignore_index)
        if not xs:
            s = self.size or 1
            return DenseData(torch.zeros(0, self.channels, s, s, dtype=torch.uint8), torch.zeros(0, s, s, dtype=dtype))
        return DenseData(torch.stack(xs), torch.stack(ms).to(dtype))


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# --- finding the pairs ---------------------------------------------------------------------------------------------


def _files(root: Path) -> dict[Path, list[Path]]:
    """Image-like files under `root`, keyed by their path relative to root without the suffix."""
    out: dict[Path, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts):
            out.setdefault(p.relative_to(root).with_suffix(""), []).append(p)
    return out


def _pairs(images: Path, masks: Path, stems: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of an images folder and a masks folder, matched by relative stem; every image needs its mask
    and every mask its image (`stems`: only those, VOC's lists; an image without a mask is then no error)."""
    imgs, msks = _files(images), _files(masks)
    for what, found in (("images", imgs), ("masks", msks)):
        for key, paths in found.items():
            if len(paths) > 1:
                raise DatasetError(f"{paths[0]}: {len(paths)} {what} named {key} ({', '.join(p.name for p in paths)}); keep one")
    keys = [Path(s) for s in stems] if stems is not None else sorted(imgs)
    out = []
    for key in keys:
        if key not in imgs:  # only with `stems`
            raise DatasetError(f"{images}: no image {key} (named in the split's list); add it or drop it from the list")
        if key not in msks:
            raise DatasetError(f"{imgs[key][0]}: no mask for this image (looked for {masks / key}.png); add its mask or "
                               f"remove the image")
        out.append((imgs[key][0], msks[key][0]))
    if stems is None:
        for key in sorted(set(msks) - set(imgs)):
            raise DatasetError(f"{msks[key][0]}: a mask without an image (looked for {images / key}.*); add the image or "
                               f"remove the mask")
    if not out:
        raise DatasetError(f"{images}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) with masks in {masks}")
    return out


def _voc_root(root: Path) -> Path | None:
    for cand in (root, root / "VOC2012", *sorted(root.glob("VOCdevkit/VOC20*"))):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    return None


def _voc_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def find_layout(root: Path) -> tuple[str, dict[str, list[tuple[Path, Path]]], list[str]]:
    """(layout, pairs per split found: "train" and optionally "val" / "test", notes) for a segmentation folder."""
    notes = []
    voc = _voc_root(root)
    if voc is not None:
        lists = voc / "ImageSets" / "Segmentation"
        images, masks = voc / "JPEGImages", voc / "SegmentationClass"
        if (lists / "train.txt").is_file():
            splits = {"train": _pairs(images, masks, _voc_list(lists / "train.txt"))}
            if (lists / "val.txt").is_file():
                splits["val"] = _pairs(images, masks, _voc_list(lists / "val.txt"))
            if (lists / "test.txt").is_file():
                try:  # VOC's test list names images whose masks were never released
                    splits["test"] = _pairs(images, masks, _voc_list(lists / "test.txt"))
                except DatasetError:
                    notes.append("ImageSets/Segmentation/test.txt names images without masks: not used")
            return "voc", splits, notes
        masked = {p.stem for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        return "voc", {"train": _pairs(images, masks, sorted(masked))}, notes
    if (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir():
        splits = {"train": _pairs(root / "images" / "training", root / "annotations" / "training")}
        if (root / "images" / "validation").is_dir():
            splits["val"] = _pairs(root / "images" / "validation", root / "annotations" / "validation")
        return "ade20k", splits, notes
    if (root / "train" / "images").is_dir():
        splits = {"train": _pairs(root / "train" / "images", root / "train" / "masks")}
        for name in ("val", "test"):
            if (root / name / "images").is_dir():
                splits[name] = _pairs(root / name / "images", root / name / "masks")
        return "splits", splits, notes
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "flat", {"train": _pairs(root / "images", root / "masks")}, notes
    raise DatasetError(f"{root}: not a segmentation folder; lay it out as ROOT/images + ROOT/masks (a mask per image, "
                       f"same name, PNG of class indices), ROOT/train/{{images,masks}} (+ val/, test/), Pascal VOC's "
                       f"JPEGImages + SegmentationClass, or ADE20K's images/training + annotations/training")


def _classes(root: Path, layout: str, splits: dict, ignore_index: int, reduce_zero_label: bool) -> tuple[list[str], list[str]]:
    """The class names, and a note when they were read off the masks."""
    for cand in (root / "classes.txt", root / "class_names.txt"):
        if cand.is_file():
            names = [line.strip() for line in cand.read_text().splitlines() if line.strip()]
            if not names:
                raise DatasetError(f"{cand}: no class names; one per line, line i naming class i")
            return names, []
    if layout == "voc":
        return list(VOC_CLASSES), []
    top = -1
    for pairs in splits.values():
        for _, mask in pairs:
            m = read_mask(mask, None, ignore_index, reduce_zero_label)
            valid = m[m != ignore_index]
            if valid.numel():
                if int(valid.min()) < 0:
                    raise DatasetError(f"{mask}: negative mask value {int(valid.min())}; class indices count from 0")
                top = max(top, int(valid.max()))
    if top < 0:
        raise DatasetError(f"{root}: every mask pixel is the ignore index {ignore_index}; nothing to learn")
    offset = 1 if reduce_zero_label else 0  # a name is the mask value it comes from
    names = [str(k + offset) for k in range(top + 1)]
    return names, [f"{top + 1} classes read off the masks (values {offset}-{top + offset}); name them in {root / 'classes.txt'}"]


def segmentation_folder(root: str | Path, size: int | None = None, channels: int = 3, ignore_index: int = IGNORE_INDEX,
                        reduce_zero_label: bool | None = None, in_memory: bool | None = None) -> DenseDataset:
    """The train / val / test splits of a segmentation folder (module docstring). Without a test split, val is the
    test split (VOC's val is its benchmark); with neither, 20% of the pairs are held out (a fixed draw, as class
    folders are). `reduce_zero_label` None: on for the ADE20K layout only (mmseg's default for it). `in_memory` None:
    held as tensors when a size is given and the folder is small (as class folders are)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    layout, splits, notes = find_layout(root)
    reduce = layout == "ade20k" if reduce_zero_label is None else reduce_zero_label
    if reduce:
        notes.append("mask value 0 ignored, the others shifted down by one (reduce_zero_label)")
    classes, more = _classes(root, layout, splits, ignore_index, reduce)
    notes += more
    train, val, test = splits["train"], splits.get("val"), splits.get("test")
    if test is None and val is not None:
        test, val = val, None
        notes.append("no test split: val is used as the test split")
    if test is None:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED + 1)).tolist()
        n_test = max(1, len(train) // 5)
        test, train = [train[i] for i in perm[:n_test]], [train[i] for i in perm[n_test:]]
        notes.append(f"no train/test split: 20% ({n_test} images) held out as the test split")
    files = [MaskFiles(p or [], len(classes), ignore_index, reduce, channels, size) for p in (train, val, test)]
    total = sum(len(f) for f in files)
    keep = (size is not None and total <= IN_MEMORY_MAX_FILES) if in_memory is None else in_memory
    out = [f.load() for f in files] if keep else files
    return DenseDataset(f"folder:{root}", out[0], out[1], out[2], classes, channels, f"segmentation folder {root} ({layout})",
                        ignore_index, notes)
