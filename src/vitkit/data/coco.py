"""COCO-format detection folders: a user's annotations JSON and its images, as torchvision detection targets.

Layouts, the first that fits:

    ROOT/annotations.json + ROOT/images/ (or the images beside it)      one pool (20% held out as the test split);
                                                                          also Roboflow's name, _annotations.coco.json
    ROOT/annotations/instances_{train,val,test}*.json + ROOT/train2017/  COCO's own (images in ROOT/<the json's suffix>,
                                                                          ROOT/images/<suffix>, ROOT/images or ROOT)
    ROOT/{train,val|valid,test}/annotations.json + images there or in images/   splits as folders
    ROOT itself an annotations .json file                               one pool, images beside it or in images/

What is read (COCO's object-detection format, cocodataset.org/#format-data): "images" (id, file_name, width, height),
"annotations" (image_id, category_id, bbox [x, y, w, h] in pixels, iscrowd, area) and "categories" (id, name).
Category ids (any integers; COCO's run 1-90 with gaps) map to labels 1..K in increasing id order, 0 being the
background: `classes[label]` is the category's name and `category_ids[label]` its id (for writing results back in
COCO's form). Boxes become (x0, y0, x1, y1) = (x, y, x + w, y + h) on pixel edges, the canvas task's convention.

Crowd annotations (iscrowd 1: one box around a group of objects) are kept out of the training targets, as detectron2
trains, and kept apart ("crowd_boxes", "crowd_labels") for evaluation, which uses them as COCO's does: a detection in a
crowd region counts neither right nor wrong. "area" (COCO's: the object's segmentation area, w * h when absent) goes
with the boxes: it is what COCO's small / medium / large ranges read. Images without annotations are kept (negatives).

Checks, each error naming the file and the key: JSON that does not parse (with its line), missing or mistyped keys,
duplicate ids, an annotation of an unknown image or category, a bbox that is not four finite numbers, of width or
height <= 0, or reaching more than `OVERHANG` px past its image (a box within it is clipped to the image: annotation
tools round), a missing image file, an image whose pixels are not the width x height its entry says. Nothing is
unpickled: JSON and image files only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset as TorchDataset

from vitkit.data.datasets import SPLIT_SEED, DatasetError, load_image
from vitkit.data.masks import DenseDataset
from vitkit.data.transforms import resize_batch

ANNOTATION_NAMES = ("annotations.json", "_annotations.coco.json")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
OVERHANG = 1.0  # px a box may reach past its image's edge before it is an error (then clipped)


@dataclass
class CocoImage:
    """One image's entry and its annotations: boxes float32 (n, 4) x0, y0, x1, y1 in the image's pixels, labels int64
    (n,) in 1..K, area float32 (n,), crowd bool (n,)."""

    path: Path
    image_id: int
    width: int
    height: int
    boxes: torch.Tensor
    labels: torch.Tensor
    area: torch.Tensor
    crowd: torch.Tensor


@dataclass
class CocoFile:
    """An annotations file read and checked: its images, and its categories as (id, name) in label order 1..K."""

    path: Path
    images: list[CocoImage]
    categories: list[tuple[int, str]]


# --- reading one annotations file ----------------------------------------------------------------------------------


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _list(doc: dict, key: str, path: Path, required: bool = True) -> list:
    if key not in doc:
        if required:
            raise DatasetError(f"{path}: no {key!r} list; a COCO annotations file holds 'images', 'annotations' and 'categories'")
        return []
    if not isinstance(doc[key], list):
        raise DatasetError(f"{path}: {key!r} is a {type(doc[key]).__name__}, not a list")
    return doc[key]


def _entry(items: list, k: int, key: str, path: Path, needs: tuple[str, ...]) -> dict:
    item = items[k]
    if not isinstance(item, dict):
        raise DatasetError(f"{path}: {key}[{k}] is a {type(item).__name__}, not an object")
    missing = [n for n in needs if n not in item]
    if missing:
        raise DatasetError(f"{path}: {key}[{k}] has no {', '.join(repr(n) for n in missing)}")
    return item


def _image_file(file_name: str, dirs: list[Path]) -> Path | None:
    if Path(file_name).is_absolute():
        return Path(file_name) if Path(file_name).is_file() else None
    for d in dirs:
        if (d / file_name).is_file():
            return d / file_name
    return None


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{path}: cannot read this image ({err}); replace or remove the file") from err


def read_coco(path: str | Path, image_dirs: list[str | Path] | None = None) -> CocoFile:
    """One COCO annotations JSON, checked (module docstring); `image_dirs`: where the images' file_name is looked up,
    in order (default: PATH's folder/images, then PATH's folder)."""
    path = Path(path).expanduser()
    dirs = [Path(d) for d in image_dirs] if image_dirs is not None else [path.parent / "images", path.parent]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read this annotations file ({err})") from err
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: the top level is a {type(doc).__name__}; a COCO annotations file is an object with "
                           f"'images', 'annotations' and 'categories'")
    images, anns, cats = (_list(doc, k, path) for k in ("images", "annotations", "categories"))

    labels: dict[int, int] = {}  # category id -> label 1..K
    names: dict[int, str] = {}
    for k in range(len(cats)):
        c = _entry(cats, k, "categories", path, ("id", "name"))
        if not _is_int(c["id"]) or not isinstance(c["name"], str):
            raise DatasetError(f"{path}: categories[{k}]: id {c['id']!r} must be an integer and name {c['name']!r} a string")
        if c["id"] in names:
            raise DatasetError(f"{path}: categories[{k}]: id {c['id']} is also the id of {names[c['id']]!r}; give each category its own id")
        names[c["id"]] = c["name"]
    if not names:
        raise DatasetError(f"{path}: 'categories' is empty; name the object classes (id, name) the boxes use")
    for label, cid in enumerate(sorted(names), start=1):
        labels[cid] = label

    entries: dict[int, dict] = {}  # image id -> its fields, then its annotations
    missing: list[str] = []
    for k in range(len(images)):
        im = _entry(images, k, "images", path, ("id", "file_name"))
        iid, name = im["id"], im["file_name"]
        if not _is_int(iid) or not isinstance(name, str):
            raise DatasetError(f"{path}: images[{k}]: id {iid!r} must be an integer and file_name {name!r} a string")
        if iid in entries:
            raise DatasetError(f"{path}: images[{k}]: id {iid} is also the id of {entries[iid]['file_name']!r}; give each image its own id")
        file = _image_file(name, dirs)
        if file is None:
            missing.append(name)
            continue
        if "width" in im or "height" in im:
            w, h = im.get("width"), im.get("height")
            if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
                raise DatasetError(f"{path}: images[{k}] ({name}): width {w!r} and height {h!r} must be positive integers")
        else:
            w, h = _header_size(file)
        entries[iid] = {"file": file, "file_name": name, "width": w, "height": h, "boxes": [], "labels": [], "area": [], "crowd": []}
    if missing:
        raise DatasetError(f"{path}: {len(missing)} image file(s) named in 'images' not found, the first {missing[0]!r} "
                           f"(looked in {', '.join(str(d) for d in dirs)}); add them or drop their entries")

    for k in range(len(anns)):
        a = _entry(anns, k, "annotations", path, ("image_id", "category_id", "bbox"))
        where = f"{path}: annotations[{k}]" + (f" (id {a['id']})" if "id" in a else "")
        if a["image_id"] not in entries:
            raise DatasetError(f"{where}: image_id {a['image_id']!r} is no image's id in 'images'")
        if a["category_id"] not in labels:
            raise DatasetError(f"{where}: category_id {a['category_id']!r} is not among the categories' ids {sorted(labels)}")
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DatasetError(f"{where}: bbox {box!r} is not [x, y, width, height], four finite numbers")
        e = entries[a["image_id"]]
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: bbox {box} of {e['file_name']} has width {w:g} and height {h:g}; both must be > 0 "
                               f"(a point or a line is no box: fix or drop it)")
        W, H = e["width"], e["height"]
        if x < -OVERHANG or y < -OVERHANG or x + w > W + OVERHANG or y + h > H + OVERHANG:
            raise DatasetError(f"{where}: bbox {box} (x0, y0, x1, y1 = {x:g}, {y:g}, {x + w:g}, {y + h:g}) lies outside its image "
                               f"{e['file_name']} of {W}x{H} px by more than {OVERHANG:g} px; boxes are [x, y, width, height] "
                               f"in the image's pixels")
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise DatasetError(f"{where}: iscrowd {crowd!r} must be 0 or 1")
        area = a.get("area", w * h)
        if not _is_number(area) or area < 0:
            raise DatasetError(f"{where}: area {area!r} must be a number >= 0")
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
        e["boxes"].append((x0, y0, x1, y1))
        e["labels"].append(labels[a["category_id"]])
        e["area"].append(float(area) or w * h)  # 0: none given (torchmetrics' rule too)
        e["crowd"].append(bool(crowd))

    out = [CocoImage(e["file"], iid, e["width"], e["height"], torch.tensor(e["boxes"], dtype=torch.float32).reshape(-1, 4),
                     torch.tensor(e["labels"], dtype=torch.int64), torch.tensor(e["area"], dtype=torch.float32),
                     torch.tensor(e["crowd"], dtype=torch.bool)) for iid, e in entries.items()]
    return CocoFile(path, out, [(cid, names[cid]) for cid in sorted(names)])


# --- the dataset ---------------------------------------------------------------------------------------------------


class CocoDetection(TorchDataset):
    """A split read image by image: item i is (uint8 image (C, H, W), target) with target as torchvision's detectors
    take it, "boxes" (n, 4) float32 and "labels" (n,) int64 of the non-crowd annotations, and for evaluation "area",
    "crowd_boxes", "crowd_labels", "crowd_area" and "image_id". With `size`, images are resized to size x size
    (antialiased bilinear, aspect ratio not kept) and boxes and areas scaled with them, so that a batch stacks; scores
    are then in the resized pixels (COCO's small / medium / large ranges too): leave it None for COCO's numbers."""

    def __init__(self, images: list[CocoImage], classes: list[str], category_ids: list[int | None], channels: int = 3,
                 size: int | None = None):
        self.images, self.classes, self.category_ids, self.channels, self.size = images, classes, category_ids, channels, size

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: torch.Tensor) -> "CocoDetection":
        return CocoDetection([self.images[i] for i in idx.tolist()], self.classes, self.category_ids, self.channels, self.size)

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        """Image i's target (class docstring), without reading the image."""
        im = self.images[i]
        boxes, area = im.boxes, im.area
        if self.size is not None:
            sx, sy = self.size / im.width, self.size / im.height
            boxes, area = boxes * torch.tensor([sx, sy, sx, sy]), area * (sx * sy)
        c = im.crowd
        return {"boxes": boxes[~c], "labels": im.labels[~c], "area": area[~c], "crowd_boxes": boxes[c],
                "crowd_labels": im.labels[c], "crowd_area": area[c], "image_id": torch.tensor(im.image_id)}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        im = self.images[i]
        x = load_image(im.path, self.channels)  # (C, H, W) uint8
        if tuple(x.shape[-2:]) != (im.height, im.width):
            raise DatasetError(f"{im.path}: the image is {x.shape[2]}x{x.shape[1]} px but its annotations entry (image id "
                               f"{im.image_id}) says {im.width}x{im.height} (width x height); the boxes are in the entry's "
                               f"pixels: fix the entry's width and height (an EXIF rotation turns a photo as viewers show it)")
        if self.size is not None:
            x = resize_batch(x[None], self.size)[0]
        return x, self.targets(i)


def detection_collate(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor | list[torch.Tensor], list[dict]]:
    """A DataLoader's batch of (image, target) items of any detection split (CocoDetection's, the canvas's DenseData):
    the images stacked (B, C, H, W) when of one size, else a list, as torchvision's detectors take either; the targets
    as a list."""
    images = [x for x, _ in items]
    same = len({tuple(x.shape) for x in images}) == 1
    return (torch.stack(images) if same else images), [t for _, t in items]


# --- finding the files ---------------------------------------------------------------------------------------------


def _split_of(stem: str) -> str | None:
    """instances_train2017 -> "train", instances_val -> "val"; None for another name."""
    rest = stem[len("instances_"):] if stem.startswith("instances_") else ""
    for prefix, split in SPLIT_FOLDERS.items():
        if rest.startswith(prefix):
            return split
    return None


def find_coco_layout(root: Path) -> tuple[str, dict[str, tuple[Path, list[Path]]]]:
    """(layout, {split: (annotations file, image folders)}) for a COCO-format folder or annotations file."""
    if root.is_file():
        return "file", {"train": (root, [root.parent / "images", root.parent])}
    for name in ANNOTATION_NAMES:
        if (root / name).is_file():
            return "single", {"train": (root / name, [root / "images", root])}
    found: dict[str, tuple[Path, list[Path]]] = {}
    for folder in (root / "annotations", root):
        for f in sorted(folder.glob("instances_*.json")) if folder.is_dir() else []:
            split = _split_of(f.stem)
            if split is None:
                continue
            if split in found:
                raise DatasetError(f"{f}: a second {split} annotations file besides {found[split][0]}; keep one per split")
            suffix = f.stem[len("instances_"):]
            found[split] = (f, [root / suffix, root / "images" / suffix, root / "images", root])
    if found:
        return "coco", found
    for folder, split in SPLIT_FOLDERS.items():
        d = root / folder
        if not d.is_dir():
            continue
        files = [d / n for n in ANNOTATION_NAMES if (d / n).is_file()] + sorted(d.glob("instances*.json"))
        if len(files) > 1:
            raise DatasetError(f"{d}: several annotations files ({', '.join(f.name for f in files)}); keep one per split")
        if files:
            if split in found:
                raise DatasetError(f"{d}: a second {split} split besides {found[split][0].parent}; keep one")
            found[split] = (files[0], [d / "images", d])
    if found:
        return "splits", found
    raise DatasetError(f"{root}: not a COCO-format folder; lay it out as ROOT/annotations.json + ROOT/images/, COCO's "
                       f"ROOT/annotations/instances_train2017.json + ROOT/train2017/ (+ val), or ROOT/{{train,val,test}}/"
                       f"annotations.json with their images; or give the annotations .json file itself")


def coco_folder(root: str | Path, size: int | None = None, channels: int = 3) -> DenseDataset:
    """The train / val / test splits of a COCO-format folder (module docstring) as CocoDetection splits, in the
    canvas task's form: `classes[0]` "background", then the categories. Without a test split, val is the test split;
    with neither, 20% of the images are held out (a fixed draw, as segmentation folders are). Every split's
    categories must be the train file's."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such directory or file")
    layout, files = find_coco_layout(root)
    if "train" not in files:
        raise DatasetError(f"{root}: no train annotations (found {', '.join(str(f) for f, _ in files.values())}); name the "
                           f"training file instances_train*.json, or put it in ROOT/train/")
    read = {split: read_coco(path, dirs) for split, (path, dirs) in files.items()}
    train = read["train"]
    for f in read.values():
        if f.categories != train.categories:
            raise DatasetError(f"{f.path}: its categories {f.categories} are not those of {train.path} {train.categories}; "
                               f"every split needs the same (id, name) list for the labels to mean one thing")
    notes = []
    val, test = read.get("val"), read.get("test")
    if test is None and val is not None:
        test, val = val, None
        notes.append("no test split: val is used as the test split")
    if test is None:
        perm = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(SPLIT_SEED + 1)).tolist()
        n_test = max(1, len(train.images) // 5)
        test = replace(train, images=[train.images[i] for i in perm[:n_test]])
        train = replace(train, images=[train.images[i] for i in perm[n_test:]])
        notes.append(f"no train/test split: 20% ({n_test} images) held out as the test split")
    classes = ["background"] + [name for _, name in train.categories]
    ids: list[int | None] = [None] + [cid for cid, _ in train.categories]
    splits = [CocoDetection(f.images if f is not None else [], classes, ids, channels, size) for f in (train, val, test)]
    crowd = sum(int(im.crowd.sum()) for f in read.values() for im in f.images)
    if crowd:
        notes.append(f"{crowd} crowd annotations kept out of training, used in evaluation (COCO's rule)")
    return DenseDataset(f"coco:{root}", *splits, classes, channels, f"COCO-format folder {root} ({layout})", notes=notes)
