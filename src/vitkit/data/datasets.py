"""Datasets: where the files are, how they are read, and the train / val / test splits.

Small datasets (digits, MNIST, Fashion-MNIST, CIFAR, small folders) are held in memory as uint8
tensors (N, C, H, W) and augmented a batch at a time; large image folders are read per image.
Nothing here unpickles untrusted data: IDX and CIFAR binaries are parsed, CIFAR's python pickles go
through an unpickler that admits numpy arrays and plain containers only.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vitkit.config import DataConfig
from vitkit.errors import VitkitError

if TYPE_CHECKING:  # PIL is imported where images are read
    from PIL import Image

FOLDER = "folder:"  # folder:PATH, a class-per-folder tree
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEBIAN_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
IN_MEMORY_MAX_FILES = 20_000
SPLIT_SEED = 0  # the validation split does not move with the training seed


class DatasetError(VitkitError, ValueError):
    """A dataset that is missing, empty or unreadable; the message names the file and what to do."""


@dataclass
class ArrayData:
    """An in-memory split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> "ArrayData":
        return ArrayData(self.images[idx], self.labels[idx])

    def of_classes(self, keep: list[int]) -> "ArrayData":
        """Only the images of classes `keep`, relabelled 0..len(keep)-1 in that order."""
        new = torch.full((int(self.labels.max()) + 1 if len(self.labels) else 1,), -1, dtype=torch.long)
        new[torch.tensor(keep)] = torch.arange(len(keep))
        idx = torch.nonzero(new[self.labels] >= 0).flatten()
        return ArrayData(self.images[idx], new[self.labels[idx]])


@dataclass
class FileData:
    """A split read image by image from disk: (path, label) pairs."""

    files: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.files], dtype=torch.long)

    def take(self, idx: torch.Tensor) -> "FileData":
        return FileData([self.files[i] for i in idx.tolist()])

    def of_classes(self, keep: list[int]) -> "FileData":
        """Only the files of classes `keep`, relabelled 0..len(keep)-1 in that order."""
        new = {c: i for i, c in enumerate(keep)}
        return FileData([(p, new[y]) for p, y in self.files if y in new])


Split = ArrayData | FileData


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    classes: list[str]
    channels: int  # native channels: 1 for grayscale sources, 3 otherwise
    source: str  # where the data came from, for reports
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- readers ---------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read ({err}); is the file complete?") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape} but the file holds {body.size} bytes; is it truncated?")
    return body.reshape(shape)


class _SafeUnpickler(pickle.Unpickler):
    """Admits numpy arrays and builtin containers only (CIFAR's python batches); anything else is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_cifar_py(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise DatasetError(f"{path}: not a CIFAR python batch ({err})") from err


def _read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + 3072
    if raw.size % rec:
        raise DatasetError(f"{path}: size {raw.size} is not a whole number of CIFAR records; is it truncated?")
    raw = raw.reshape(-1, rec)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_bytes - 1].astype(np.int64)


# --- where files are -------------------------------------------------------------------------------


def search_dirs(cfg: DataConfig, name: str) -> list[Path]:
    dirs = []
    if cfg.data_dir:
        dirs.append(Path(cfg.data_dir))
    if os.environ.get("VITKIT_DATA"):
        dirs.append(Path(os.environ["VITKIT_DATA"]))
    if name in DEBIAN_DIRS:
        dirs.append(Path(DEBIAN_DIRS[name]))
    dirs.append(Path.home() / ".cache" / "vitkit")
    return dirs


def _find(dirs: list[Path], names: list[str], subdirs: list[str]) -> dict[str, Path] | None:
    """The first directory (or known sub-directory of it) that holds all `names` (raw or .gz)."""
    for d in dirs:
        for sub in ["", *subdirs]:
            base = d / sub if sub else d
            found = {}
            for n in names:
                for cand in (base / n, base / f"{n}.gz"):
                    if cand.exists():
                        found[n] = cand
                        break
            if len(found) == len(names):
                return found
    return None


def _download_dir(cfg: DataConfig) -> Path:
    return Path(cfg.data_dir) if cfg.data_dir else Path(os.environ.get("VITKIT_DATA", Path.home() / ".cache" / "vitkit"))


def _missing(name: str, dirs: list[Path], why: str) -> DatasetError:
    where = ", ".join(str(d) for d in dirs)
    hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    return DatasetError(f"dataset {name!r}: files not found in {where}; {why}. Put them in --data-dir (or $VITKIT_DATA){hint}")


def _mnist_like(cfg: DataConfig, name: str) -> tuple[ArrayData, ArrayData, str]:
    files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    tv_name = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[name]
    dirs = search_dirs(cfg, name)
    found = _find(dirs, files, [name, f"{tv_name}/raw"])
    if found is None:
        if not cfg.download:
            raise _missing(name, dirs, "download is off (data.download=false)")
        import torchvision

        root = _download_dir(cfg)
        try:
            getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
            getattr(torchvision.datasets, tv_name)(str(root), train=False, download=True)
        except Exception as err:  # noqa: BLE001 - any network failure means the same to the user
            raise _missing(name, dirs, f"the download failed ({type(err).__name__}: {err})") from err
        found = _find([root], files, [f"{tv_name}/raw"])
        if found is None:
            raise _missing(name, dirs + [root], "the download left no IDX files")
    x_tr, y_tr = read_idx(found[files[0]]), read_idx(found[files[1]])
    x_te, y_te = read_idx(found[files[2]]), read_idx(found[files[3]])
    mk = lambda x, y: ArrayData(torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)))  # noqa: E731
    return mk(x_tr, y_tr), mk(x_te, y_te), str(found[files[0]].parent)


def _cifar(cfg: DataConfig, name: str) -> tuple[ArrayData, ArrayData, list[str], str]:
    dirs = search_dirs(cfg, name)
    ten = name == "cifar10"
    bin_names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"] if ten else ["train.bin", "test.bin"]
    py_names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if ten else ["train", "test"]
    bin_dir = "cifar-10-batches-bin" if ten else "cifar-100-binary"
    py_dir = "cifar-10-batches-py" if ten else "cifar-100-python"
    found_bin = _find(dirs, bin_names, [bin_dir])
    found_py = None if found_bin else _find(dirs, py_names, [py_dir])
    if found_bin is None and found_py is None:
        if not cfg.download:
            raise _missing(name, dirs, "download is off (data.download=false)")
        import torchvision

        root = _download_dir(cfg)
        try:
            (torchvision.datasets.CIFAR10 if ten else torchvision.datasets.CIFAR100)(str(root), train=True, download=True)
        except Exception as err:  # noqa: BLE001
            raise _missing(name, dirs, f"the download failed ({type(err).__name__}: {err})") from err
        found_py = _find([root], py_names, [py_dir])
    if found_bin:
        parts = [_read_cifar_bin(found_bin[n], 1 if ten else 2) for n in bin_names]
        where = found_bin[bin_names[0]].parent
    else:
        key = "labels" if ten else "fine_labels"
        parts = []
        for n in py_names:
            d = _read_cifar_py(found_py[n])
            parts.append((np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[key], dtype=np.int64)))
        where = found_py[py_names[0]].parent
    train = ArrayData(torch.from_numpy(np.concatenate([p[0] for p in parts[:-1]])), torch.from_numpy(np.concatenate([p[1] for p in parts[:-1]])))
    test = ArrayData(torch.from_numpy(parts[-1][0].copy()), torch.from_numpy(parts[-1][1]))
    classes = CIFAR10_CLASSES if ten else [str(i) for i in range(100)]
    meta = (where / "meta") if not ten else None
    if meta is not None and meta.exists():
        classes = list(_read_cifar_py(meta).get("fine_label_names", classes))
    return train, test, classes, str(where)


def _digits() -> tuple[ArrayData, ArrayData]:
    """scikit-learn's digits (UCI, CC BY 4.0), shipped with vitkit; split in halves as scikit-learn's example."""
    with np.load(Path(__file__).with_name("digits.npz"), allow_pickle=False) as f:
        x, y = torch.from_numpy(f["images"])[:, None], torch.from_numpy(f["labels"].astype(np.int64))
    half = len(y) // 2
    return ArrayData(x[:half], y[:half]), ArrayData(x[half:], y[half:])


def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{root}: no class folders; an image folder holds one sub-folder of images per class")
    return dirs


def _scan_folder(root: Path, classes: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image, class index) pairs of a class-per-folder tree, by torchvision's scan (make_dataset: any depth, any
    case of suffix, links followed); hidden folders are not classes. `classes`: the training classes to index by."""
    from torchvision.datasets.folder import make_dataset

    dirs = _class_dirs(root)
    names = [d.name for d in dirs] if classes is None else classes
    for d in dirs:
        if d.name not in names:
            raise DatasetError(f"{d}: class {d.name!r} is not among the training classes {names}")
    found = make_dataset(root, {d.name: names.index(d.name) for d in dirs}, extensions=tuple(sorted(IMAGE_SUFFIXES)),
                         allow_empty=True)
    present = {label for _, label in found}
    for d in dirs:
        if names.index(d.name) not in present:
            raise DatasetError(f"{d}: class folder without images ({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder")
    return sorted((Path(path), label) for path, label in found), names  # by path, as before (splits are drawn from it)


SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}  # PIL's 16-bit integer modes; "I" (32-bit) is read as one when it fits


def _eight_bit(im: Image.Image, path: Path) -> Image.Image:
    """A 16-bit or float image as 8-bit grayscale (PIL's convert("L") clips them: 16-bit PNGs come out white, float
    TIFFs in [0, 1] black); any other mode as it is."""
    if im.mode not in SIXTEEN_BIT | {"I", "F"}:
        return im
    from PIL import Image

    v = np.asarray(im)
    finite = bool(np.isfinite(v).all())
    lo, hi = (float(v.min()), float(v.max())) if v.size and finite else (0.0, 0.0)
    if im.mode == "F":
        if not finite or lo < 0 or hi > 255:
            found = f"values in [{lo:g}, {hi:g}]" if finite else "NaN or infinite values"
            raise DatasetError(f"{path}: a float image (PIL mode 'F') with {found}; vitkit reads float images in [0, 1] or "
                               f"[0, 255]: rescale it to one of them, or save it as an 8-bit image")
        out = np.floor(v.astype(np.float64) * (255 if hi <= 1 else 1) + 0.5)
    else:
        if lo < 0 or hi > 65535:
            raise DatasetError(f"{path}: a 32-bit integer image (PIL mode 'I') with values in [{lo:g}, {hi:g}]; vitkit reads integer "
                               f"images of 8 or 16 bits: rescale it to 0..65535 or 0..255 and save it as such")
        out = (v.astype(np.int64) + 128) // 257  # round(v * 255 / 65535), exactly: 255 / 65535 = 1 / 257, never a tie
    return Image.fromarray(out.astype(np.uint8))


def _upright(im: Image.Image) -> Image.Image:
    """`im` turned as its EXIF orientation says; an EXIF block PIL cannot parse (a phone's or an editor's bug) is no
    orientation: the pixels themselves are fine, and refusing them would refuse photos that read before."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except (SyntaxError, struct.error):
        return im


def load_image(path: Path, channels: int, size: int | None = None) -> torch.Tensor:
    """Any image file PIL opens as uint8 (C, H, W), optionally resized to size x size; the one reader of every verb.

    Upright as shown: the EXIF orientation (phones store the sensor's pixels and a rotation tag) is applied first
    (an unparsable EXIF block counts as none).
    16-bit integer images (PIL modes I;16*, and I with values in 0..65535) map their full range onto 0..255 as
    round(v * 255 / 65535); float images (mode F, e.g. float TIFF) in [0, 1] are scaled by 255, in [0, 255] taken as
    they are (rounded), and anything else (negative, above 255, NaN) is refused: a float image's range is a
    convention, not in the file, and a guess would feed the model a different picture. A dark float image whose
    values all lie in [0, 1] is therefore read as [0, 1]. Transparent pixels become white (as a browser or viewer
    shows them on a white page), not the colour PIL's convert("RGB") keeps under a zero alpha. Palette, 1-bit,
    CMYK, YCbCr, LAB and HSV go through PIL's conversion; multi-frame files (GIF, TIFF) give their first frame.
    An image of more than PIL.Image.MAX_IMAGE_PIXELS pixels (89,478,485 by default: where PIL suspects a
    decompression bomb, a small file that decodes to gigabytes) is refused, by its size, before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL warns above the limit, refuses at twice it
            with Image.open(path) as im:
                im.load()
                im = _eight_bit(_upright(im), path)
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))  # transparent pixels become white
                    im = Image.alpha_composite(bg, im.convert("RGBA"))
                im = im.convert("L" if channels == 1 else "RGB")
                if size is not None:
                    im = im.resize((size, size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DatasetError(f"{path}: refused as a possible decompression bomb ({str(err).rstrip('.')}); downscale the image "
                           f"(vitkit resizes it to the model's size anyway) or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read this image ({err}); replace or remove the file") from err
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


def _folder_root(name: str, option: str = "data.name") -> Path:
    root = Path(name[len(FOLDER):])
    try:
        root = root.expanduser()
        why = None if root.is_dir() else "no such directory"
    except RuntimeError as err:  # ~user of no such user
        why = str(err)
    except OSError as err:  # e.g. a name too long for the file system
        why = err.strerror
    if why:
        raise DatasetError(f"{option} 'folder:{root}': {why}")
    return root


def check_classes(name: str, option: str = "data.name") -> None:
    """A classifier needs two classes at least: a class-per-folder tree of one class (or its train/ folder) is refused
    before training, naming the folder (it would train to 100% on nothing). Built-in datasets have ten or more."""
    if not name.startswith(FOLDER):
        return
    root = _folder_root(name, option)
    tree = root / "train" if (root / "train").is_dir() else root
    dirs = _class_dirs(tree)
    if len(dirs) < 2:
        raise DatasetError(f"{tree}: one class folder ({dirs[0].name!r}); a classifier needs two classes at least: add a "
                           f"folder of images per class (self-supervised pre-training, objective=mpp, takes one)")


def _folder(cfg: DataConfig, root: Path) -> tuple[Split, Split | None, Split, list[str], str, list[str]]:
    notes = []
    if (root / "train").is_dir():
        train_files, classes = _scan_folder(root / "train")
        test_root = root / "test" if (root / "test").is_dir() else None
        val_root = root / "val" if (root / "val").is_dir() else None
        if test_root is None and val_root is not None:
            test_root, val_root = val_root, None
            notes.append("no test/ folder: val/ is used as the test split")
        test_files = _scan_folder(test_root, classes)[0] if test_root else None
        val_files = _scan_folder(val_root, classes)[0] if val_root else None
    else:
        train_files, classes = _scan_folder(root)
        test_files = val_files = None
    if test_files is None:
        perm = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(SPLIT_SEED + 1))
        n_test = max(1, len(train_files) // 5)
        test_files = [train_files[i] for i in perm[:n_test].tolist()]
        train_files = [train_files[i] for i in perm[n_test:].tolist()]
        notes.append(f"no train/test folders: 20% ({n_test} images) held out as the test split")
    channels = 3
    splits = [FileData(train_files), FileData(val_files) if val_files else None, FileData(test_files)]
    total = sum(len(s) for s in splits if s is not None)
    in_memory = cfg.in_memory if cfg.in_memory is not None else total <= IN_MEMORY_MAX_FILES
    if in_memory:
        from vitkit import progress
        from vitkit.runtime import is_main_process

        loaded = []
        for s in splits:
            if s is None:
                loaded.append(None)
                continue
            files = progress.bar(s.files, desc="reading images", enabled=total >= 2000 and is_main_process())
            imgs = [load_image(p, channels, cfg.image_size) for p, _ in files]
            loaded.append(ArrayData(torch.stack(imgs), s.labels))
        splits = loaded
    return splits[0], splits[1], splits[2], classes, str(root), notes


# --- the entry point -------------------------------------------------------------------------------


def _stratified_take(labels: torch.Tensor, per_class: int, gen: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(len(labels), generator=gen)
    keep = []
    for c in labels.unique().tolist():
        keep.append(perm[labels[perm] == c][:per_class])
    return torch.cat(keep).sort().values


# The registry: dataset name -> reader(cfg) -> (train, val or None, test, classes, channels, source, notes).
Reader = Callable[[DataConfig], tuple]


def _read_digits(cfg: DataConfig) -> tuple:
    train, test = _digits()
    return train, None, test, [str(i) for i in range(10)], 1, "scikit-learn digits (UCI, CC BY 4.0), shipped with vitkit", []


def _read_mnist_like(name: str) -> Reader:
    def read(cfg: DataConfig) -> tuple:
        train, test, where = _mnist_like(cfg, name)
        classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
        return train, None, test, classes, 1, f"{name} IDX files in {where}", []
    return read


def _read_cifar(name: str) -> Reader:
    def read(cfg: DataConfig) -> tuple:
        train, test, classes, where = _cifar(cfg, name)
        return train, None, test, classes, 3, f"{name} in {where}", []
    return read


def _read_folder(cfg: DataConfig) -> tuple:
    train, val, test, classes, where, notes = _folder(cfg, _folder_root(cfg.name))
    return train, val, test, classes, 3, f"image folder {where}", notes


DATASETS: dict[str, Reader] = {
    "digits": _read_digits,
    "fashion-mnist": _read_mnist_like("fashion-mnist"),
    "mnist": _read_mnist_like("mnist"),
    "cifar10": _read_cifar("cifar10"),
    "cifar100": _read_cifar("cifar100"),
}
SOURCES = (*DATASETS, f"{FOLDER}PATH")


def reader(name: str, option: str = "data.name") -> Reader:
    """The reader of a dataset name (a registered one, or folder:PATH), else DatasetError naming the option."""
    if name in DATASETS:
        return DATASETS[name]
    if name.startswith(FOLDER) and len(name) > len(FOLDER):
        return _read_folder
    raise DatasetError(f"{option}: unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")


def check_source(name: str, option: str = "data.name") -> None:
    """A dataset name load_dataset knows, else DatasetError naming the option and the choices."""
    reader(name, option)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The train / val / test splits of `cfg.name`; val is carved from train (a fixed split, seed 0)."""
    name = cfg.name
    train, val, test, classes, channels, source, notes = reader(name)(cfg)
    notes = list(notes)
    if cfg.classes:  # a subset of the classes, relabelled in the order given (transfer to held-out classes)
        keep = _class_indices(cfg.classes, classes, name)
        train, test = train.of_classes(keep), test.of_classes(keep)
        val = val.of_classes(keep) if val is not None else None
        classes = [classes[i] for i in keep]
        notes.append(f"classes {', '.join(classes)} only")
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    carve = val is None and cfg.val_size == 0  # val_size: carved below, from the training images kept
    if carve and cfg.val_fraction > 0:
        perm = torch.randperm(len(train), generator=gen)
        n_val = max(1, int(round(len(train) * cfg.val_fraction)))
        val, train = train.take(perm[:n_val].sort().values), train.take(perm[n_val:].sort().values)
    if val is None and cfg.val_size == 0:
        val = train.take(torch.arange(0))
    if cfg.labels_per_class > 0:
        train = train.take(_stratified_take(train.labels, cfg.labels_per_class, gen))
        notes.append(f"{cfg.labels_per_class} labelled images per class ({len(train)} in all)")
    if cfg.train_subset > 0 and cfg.train_subset < len(train):
        per = max(1, cfg.train_subset // len(classes))
        train = train.take(_stratified_take(train.labels, per, gen))
        notes.append(f"training subset of {len(train)} images")
    if val is None:  # val_size: exactly that many of the training images kept, the rest trains
        if cfg.val_size >= len(train):
            raise DatasetError(f"data.val_size={cfg.val_size}: the training split has only {len(train)} images; hold out fewer")
        perm = torch.randperm(len(train), generator=gen)
        val, train = train.take(perm[:cfg.val_size].sort().values), train.take(perm[cfg.val_size:].sort().values)
        notes.append(f"{cfg.val_size} of them held out for validation")
    if len(train) == 0:
        raise DatasetError(f"dataset {name!r}: the training split is empty")
    return Dataset(name, train, val, test, classes, channels, source, notes)


def _class_indices(text: str, classes: list[str], name: str) -> list[int]:
    """data.classes ("0,1,2" or class names, comma-separated) -> indices into `classes`, else DatasetError naming it."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if part in classes:
            out.append(classes.index(part))
        elif part.isdigit() and int(part) < len(classes):
            out.append(int(part))
        else:
            raise DatasetError(f"data.classes={text!r}: {part!r} is not a class of {name!r}; its classes are "
                               f"{', '.join(classes)} (or their indices 0-{len(classes) - 1})")
    if len(set(out)) != len(out) or len(out) < 2:
        raise DatasetError(f"data.classes={text!r}: name two different classes at least, each once")
    return out


def describe_dataset(ds: Dataset) -> str:
    return f"{ds.name}: {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test, {ds.num_classes} classes, from {ds.source}"

