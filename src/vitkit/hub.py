"""Published weights by name -> files in the user's cache; every verb's SRC and `vitkit.load` accept these names.

The kinds of name:
- `hf-hub:ORG/NAME[@REVISION]`: any Hugging Face ViT repository, in transformers' format (config.json naming a
  model_type) or timm's (config.json naming an architecture). Downloaded by huggingface_hub: its cache
  (HF_HUB_CACHE / HF_HOME), revisions, HF_ENDPOINT, HF_HUB_OFFLINE and tokens (HF_TOKEN or `hf auth login`)
  for gated repositories.
- timm's names, `MODEL.TAG` ("vit_base_patch16_224.augreg2_in21k_ft_in1k") or `MODEL` alone (timm's default tag):
  resolved through timm's pretrained configs when timm is installed, else to the Hub repository `timm/MODEL.TAG`.
  Hugging Face's names of Google's ViTs ("google/vit-base-patch16-224") are Hub repositories of that name.
- `google:PATH`: Google's released .npz files, https://storage.googleapis.com/vit_models/PATH.npz, e.g.
  `google:imagenet21k/ViT-B_16`, `google:imagenet21k+imagenet2012/ViT-B_16`, `google:augreg/<the file's stem>`
  (AugReg's index.csv names them all), `google:sam/ViT-B_16`. Downloaded into vitkit's cache (VITKIT_CACHE_DIR,
  default ~/.cache/vitkit), resumably (a partial file is resumed only while the server's ETag is the one it began
  with), checked against the size and the MD5 Google Storage reports for the object (x-goog-hash), and against a
  `Published.sha256` where one is pinned: none is yet (they were listed on machines without internet); the sha256 of
  each download is recorded beside it (FILE.json).
A local path that exists always wins over a name. Offline (HF_HUB_OFFLINE=1 or VITKIT_OFFLINE=1): cached names load
with no network call; others fail in one line naming the name, the cache directory and how to get the file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vitkit.errors import VitkitError

GOOGLE_ENDPOINT = "https://storage.googleapis.com"  # VITKIT_GOOGLE_ENDPOINT overrides it (a mirror; the tests' server)
GOOGLE_BUCKET = "vit_models"
SCHEMES = ("hf-hub:", "google:")
# what a name never ends in: a checkpoint's or an export's file suffix (a missing file is a path, not a timm tag)
FILE_SUFFIXES = ("pth", "pt", "bin", "ckpt", "safetensors", "npz", "json", "onnx", "xml")


class DownloadError(VitkitError, OSError):
    """A published name that could not be fetched or is not cached (the message says which, where and what to do)."""


# --- the names vitkit knows, for `vitkit models --pretrained` ---------------------------------------------------------

@dataclass(frozen=True)
class Published:
    """One published checkpoint: its name (as any verb takes it), architecture, and what the paper says of it."""

    name: str
    variant: str  # vitkit's name of the architecture
    image_size: int
    data: str  # pre-training data, then what it was fine-tuned on
    labels: str | None  # the label set of its head (data/labels.py), None: no head or other classes
    top1: float | None = None  # ImageNet top-1 (%) the paper reports for this model
    cite: str = ""  # where the paper reports it
    sha256: str | None = None  # pinned content hash, where known

    @property
    def source(self) -> str:
        return "google" if self.name.startswith("google:") else "timm" if "." in self.name and "/" not in self.name else "hf-hub"


# The paper's Table 5 (ImageNet top-1 after fine-tuning at 384 px): ImageNet-21k pre-training.
PAPER_T5 = "paper Table 5 (ImageNet-21k pre-training, fine-tuned at 384)"
PAPER_TOP1 = {"ViT-B/16": 83.97, "ViT-B/32": 81.28, "ViT-L/16": 85.15, "ViT-L/32": 80.99}

_I21K, _FT = "ImageNet-21k", "ImageNet-21k -> ImageNet-1k"


def _google_releases() -> list[Published]:
    """The paper's own files (vit_jax's README), the SAM ones, and the AugReg files timm's tags stand for."""
    # the raw ImageNet-21k files: Google zeroed their heads (vision_transformer issues 10, 32): no class names
    out = [Published(f"google:imagenet21k/{v.replace('/', '_')}", v, 224, _I21K, None)
           for v in ("ViT-B/16", "ViT-B/32", "ViT-L/16", "ViT-L/32", "ViT-H/14")]
    out.append(Published("google:imagenet21k/R50+ViT-B_16", "R50+ViT-B/16", 224, _I21K, None))
    for v in ("ViT-B/16", "ViT-B/32", "ViT-L/16", "ViT-L/32"):
        out.append(Published(f"google:imagenet21k+imagenet2012/{v.replace('/', '_')}", v, 384, _FT, "imagenet1k", PAPER_TOP1[v], PAPER_T5))
    for v in ("ViT-B/16", "ViT-L/16"):
        out.append(Published(f"google:imagenet21k+imagenet2012/{v.replace('/', '_')}-224", v, 224, _FT, "imagenet1k"))
    out.append(Published("google:imagenet21k+imagenet2012/R50+ViT-B_16", "R50+ViT-B/16", 384, _FT, "imagenet1k"))
    for v in ("ViT-B/16", "ViT-B/32"):
        out.append(Published(f"google:sam/{v.replace('/', '_')}", v, 224, "ImageNet-1k (SAM optimiser)", "imagenet1k"))
    for stem in AUGREG:
        info = parse_augreg(stem)
        if info is not None:
            out.append(Published(f"google:augreg/{stem}", info["variant"], info["image_size"], info["data"], info["labels"]))
    return out


# The AugReg files ("How to train your ViT", gs://vit_models/augreg) that timm's augreg tags were converted from: the
# best upstream recipe per model, and its ImageNet-1k fine-tunings (index.csv lists every other file).
AUGREG = (
    "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384",
    "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
    "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0",
    "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1",
    "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
    "R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.03-res_224",
    "R26_S_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0",
    "R26_S_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "R50_L_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0",
    "R50_L_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384",
    "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
    "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384",
    "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
    "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
)
TASKS = {"imagenet2012": "ImageNet-1k", "cifar100": "CIFAR-100", "oxford_iiit_pet": "Oxford-IIIT Pet", "resisc45": "RESISC45"}
_AUGREG_MODEL = re.compile(r"(?:(R_|R26_|R50_))?(Ti|S|B|L|H)_(\d+)-(i21k|i1k)-")


def parse_augreg(stem: str) -> dict[str, Any] | None:
    """What an AugReg file's name says: the variant, image size, data and label set (None: not an AugReg name)."""
    m = _AUGREG_MODEL.match(stem)
    if m is None:
        return None
    resnet, size, patch, upstream = m.groups()
    prefix = {"R_": "R+", "R26_": "R26+", "R50_": "R50+"}.get(resnet or "", "")
    variant = f"{prefix}ViT-{size}/{patch}"
    up = {"i21k": "ImageNet-21k", "i1k": "ImageNet-1k"}[upstream]
    down = stem.partition("--")[2]
    if not down:
        return {"variant": variant, "image_size": 224, "data": f"{up} (AugReg)", "labels": "imagenet21k" if upstream == "i21k" else "imagenet1k"}
    task = down.split("-")[0]
    res = re.search(r"res_(\d+)", down)
    return {"variant": variant, "image_size": int(res.group(1)) if res else 224, "data": f"{up} (AugReg) -> {TASKS.get(task, task)}",
            "labels": "imagenet1k" if task == "imagenet2012" else None}


def published() -> list[Published]:
    """Every published name vitkit knows: Google's files, Hugging Face's google/ repositories, timm's default tags."""
    from vitkit.models.registry import HF_NAMES, TIMM_NAMES

    out = _google_releases()
    for repo, (variant, size, classes, _) in HF_NAMES.items():
        fine_tuned = classes == 1000
        top1 = PAPER_TOP1.get(variant) if fine_tuned and size == 384 else None
        out.append(Published(repo, variant, size, _FT if fine_tuned else _I21K, "imagenet1k" if fine_tuned else None,
                             top1, PAPER_T5 if top1 else ""))
    for base, (variant, size, tag) in TIMM_NAMES.items():
        if tag == "untrained":
            continue
        top1 = PAPER_TOP1.get(variant) if tag == "orig_in21k_ft_in1k" and size == 384 else None
        out.append(Published(f"{base}.{tag}", variant, size, _timm_data(tag), _timm_labels(tag), top1, PAPER_T5 if top1 else ""))
    return out


def default_for(variant: str, image_size: int | None = None) -> str:
    """The published name `create_model(variant, pretrained=True)` loads: of the files at `image_size` if there are any,
    the paper's ImageNet-21k -> ImageNet-1k file (the one with the paper's top-1) where there is one, else Google's first
    file of an ImageNet-1k head, else any of Google's, else timm's default tag."""
    pubs = [p for p in published() if p.variant == variant]
    ranked = sorted(pubs, key=lambda p: (image_size is not None and p.image_size != image_size,
                                         p.source != "google" or p.top1 is None, p.source != "google" or p.labels != "imagenet1k",
                                         p.source != "google", "-i1k-" in p.name, p.source != "timm"))
    if not ranked:
        raise ValueError(f"{variant}: vitkit knows no published weights for it; `vitkit models --pretrained` lists those it knows")
    return ranked[0].name


def _timm_data(tag: str) -> str:
    parts = {"in21k": "ImageNet-21k", "in1k": "ImageNet-1k", "dino": "ImageNet-1k (DINO, no labels)",
             "mae": "ImageNet-1k (MAE, no labels)", "sam": "ImageNet-1k (SAM optimiser)"}
    found = [parts[p] for p in re.findall(r"in21k|in1k|dino|mae|sam", tag)]
    return " -> ".join(found) if found else tag


def _timm_labels(tag: str) -> str | None:
    """The label set of a timm tag's head, from its classes (registry.TIMM_TAGS; a tag timm has beyond that table:
    fine-tuned on ImageNet-1k if it ends so)."""
    from vitkit.models.registry import TIMM_TAGS

    classes = TIMM_TAGS.get(tag, 1000 if tag.endswith("in1k") else 0)
    return {1000: "imagenet1k", 21843: "imagenet21k"}.get(classes) if tag != "untrained" else None


# --- parsing a source ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Name:
    """A parsed published name: `kind` "hf" (repo, revision) or "google" (path), and what vitkit knows of it."""

    text: str
    kind: str
    repo: str = ""
    revision: str | None = None
    path: str = ""
    labels: str | None = None  # the label set of the head, when the name says it
    variant: str | None = None  # the architecture, when the name says it (timm files do not record the heads)


def is_name(src: str | os.PathLike) -> bool:
    """Whether `src` is a published name rather than a local path: a scheme, or (no such path here) timm's or Hugging
    Face's name of a published ViT."""
    text = str(src)
    if text.startswith(SCHEMES):
        return True
    if not isinstance(src, str) or Path(text).exists() or text.rpartition(".")[2].lower() in FILE_SUFFIXES:
        return False  # a path, or one that was meant to be (a missing "run/model.pth" is no timm tag "pth")
    from vitkit.models.registry import resolve_alias

    try:
        if resolve_alias(text) is not None:
            return True
    except ValueError:  # timm's name with a tag vitkit's table lacks: timm may know it (parse says)
        return True
    return "/" not in text.removeprefix("timm/") and _timm_cfg(text) is not None  # a timm model beyond vitkit's table


def parse(text: str) -> Name:
    """The `Name` a published name stands for (no network call); a ValueError naming the forms it can take."""
    if text.startswith("hf-hub:"):
        repo, _, rev = text.removeprefix("hf-hub:").partition("@")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo) or (_ and not rev):
            raise ValueError(f"{text!r}: a Hugging Face name is hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
        labels = _timm_labels(repo.partition(".")[2]) if repo.startswith("timm/") else None
        return Name(text, "hf", repo=repo, revision=rev or None, labels=labels, variant=_variant_of(repo))
    if text.startswith("google:"):
        path = text.removeprefix("google:").removesuffix(".npz").strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"{text!r}: a Google name is google:PATH, the file's path in gs://{GOOGLE_BUCKET} without .npz "
                             f"(e.g. google:imagenet21k/ViT-B_16); `vitkit models --pretrained` lists them")
        return Name(text, "google", path=path, labels=_google_labels(path), variant=_google_variant(path))
    from vitkit.models.registry import resolve_alias

    try:
        alias = resolve_alias(text)
    except ValueError:
        alias = None  # a timm tag vitkit's table lacks: _timm_name asks timm, or says which tags there are
    if alias is not None and alias.library == "hf":
        return Name(text, "hf", repo=alias.name, labels="imagenet1k" if alias.num_classes == 1000 else None, variant=alias.variant)
    return _timm_name(text.strip())


def _variant_of(repo: str) -> str | None:
    from vitkit.models.registry import resolve_alias

    try:
        alias = resolve_alias(repo)
    except ValueError:
        return None
    return alias.variant if alias else None


def _google_labels(path: str) -> str | None:
    folder, _, stem = path.rpartition("/")
    if folder == "augreg":
        info = parse_augreg(stem)
        return info["labels"] if info else None
    return {"imagenet21k+imagenet2012": "imagenet1k", "sam": "imagenet1k", "gsam": "imagenet1k"}.get(folder)  # imagenet21k/: zeroed


def _google_variant(path: str) -> str | None:
    folder, _, stem = path.rpartition("/")
    if folder == "augreg":
        info = parse_augreg(stem)
        return info["variant"] if info else None
    from vitkit.models.registry import _canonical

    try:
        return _canonical(re.sub(r"-\d+$", "", stem))  # "ViT-B_16-224": the name, then the resolution
    except ValueError:
        return None


def _timm_cfg(text: str) -> Any:
    """timm's pretrained config of MODEL[.TAG] (None without timm, or for a name timm does not know)."""
    try:
        import timm
    except ImportError:
        return None
    try:
        return timm.models.get_pretrained_cfg(text.removeprefix("timm/"))
    except (RuntimeError, ValueError, KeyError):
        return None


def _timm_name(text: str) -> Name:
    """timm's MODEL[.TAG]: timm's pretrained config when timm is installed (its Hub id, or a Google Storage URL), else
    the Hub repository timm/MODEL.TAG (the tag checked against vitkit's table of timm's tags)."""
    from vitkit.models.registry import TIMM_NAMES, resolve_alias

    base, _, tag = text.removeprefix("timm/").partition(".")
    variant = TIMM_NAMES[base][0] if base in TIMM_NAMES else None
    cfg = _timm_cfg(text)
    if cfg is None and tag and _timm_cfg(base) is not None:  # timm is there, knows the model, not this tag
        import timm

        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
        raise ValueError(f"{text!r}: timm has no pretrained tag {tag!r} for {base}; its tags: {', '.join(tags) or 'none'}")
    if cfg is not None:
        labels = _timm_labels(cfg.tag or tag)
        if cfg.hf_hub_id:
            repo, _, rev = cfg.hf_hub_id.partition("@")
            return Name(text, "hf", repo=repo, revision=rev or None, labels=labels, variant=variant)
        prefix = f"{GOOGLE_ENDPOINT}/{GOOGLE_BUCKET}/"
        if cfg.url and cfg.url.startswith(prefix) and cfg.url.endswith(".npz"):
            return Name(text, "google", path=cfg.url.removeprefix(prefix).removesuffix(".npz"), labels=labels, variant=variant)
        raise ValueError(f"{text!r}: timm publishes these weights at {cfg.url or 'no URL'}, not on the Hugging Face Hub or Google "
                         f"Storage; download them and load the file")
    alias = resolve_alias(text)  # a ValueError with the close tags for an unknown one
    if alias is None:
        raise ValueError(f"{text!r}: not a local path, nor a published name (hf-hub:ORG/NAME, timm's MODEL.TAG, "
                         f"google:PATH); `vitkit models --pretrained` lists the names vitkit knows")
    if alias.tag == "untrained":
        raise ValueError(f"{text!r}: timm publishes no weights for {alias.name}; name a tag with weights, or create it untrained")
    return Name(text, "hf", repo=f"timm/{alias.name}.{alias.tag}", labels=_timm_labels(alias.tag), variant=alias.variant)


# --- the caches and the network switches ------------------------------------------------------------------------------

def offline() -> bool:
    """HF_HUB_OFFLINE or VITKIT_OFFLINE set to 1 / true / yes / on: no network call, for any name."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "VITKIT_OFFLINE"))


def cache_dir() -> Path:
    """Where Google's files and the class-name lists are kept: "downloads" in vitkit's cache (runtime.cache_dir():
    VITKIT_CACHE_DIR, else $XDG_CACHE_HOME/vitkit, else ~/.cache/vitkit)."""
    from vitkit.runtime import cache_dir as vitkit_cache

    return vitkit_cache() / "downloads"


def hf_cache_dir() -> Path:
    """huggingface_hub's cache as the environment says now (HF_HUB_CACHE, HF_HOME; else the library's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def google_url(path: str) -> str:
    """The https URL of a file in Google's public storage (`path` under the endpoint, e.g. vit_models/augreg/X.npz)."""
    endpoint = os.environ.get("VITKIT_GOOGLE_ENDPOINT") or GOOGLE_ENDPOINT
    return f"{endpoint.rstrip('/')}/{quote(path)}"


# --- downloads ---------------------------------------------------------------------------------------------------------

@dataclass
class Fetched:
    """A name's files on this machine: `path` to hand to `vitkit.load`, and what the name says beyond the file."""

    name: Name
    path: Path
    notes: list[str] = field(default_factory=list)


def fetch(text: str) -> Fetched:
    """Download (or find in the cache) the files of a published name."""
    name = parse(text)
    if name.kind == "google":
        path = download_url(google_url(f"{GOOGLE_BUCKET}/{name.path}.npz"), f"google/{GOOGLE_BUCKET}/{name.path}.npz",
                            what=text, sha256=_pinned(text))
        return Fetched(name, path, [f"{text}: {path}"])
    path = _hub_snapshot(name)
    return Fetched(name, path, [f"{text}: {path}" + (f" (revision {name.revision})" if name.revision else "")])


def _pinned(text: str) -> str | None:
    for p in _google_releases():
        if p.name == text:
            return p.sha256
    return None


def _hub_snapshot(name: Name) -> Path:
    """The repository's config.json, weights (model.safetensors, else pytorch_model.bin) and preprocessor_config.json
    (if it has one), through huggingface_hub; the snapshot directory that holds them. A file the cache knows the
    repository lacks (huggingface_hub's .no_exist markers) is not asked for again: with the Hub unreachable, asking
    would cost its retries (about 25 s a file)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    from vitkit.progress import tqdm_class

    cache = hf_cache_dir()
    kw = dict(revision=name.revision, cache_dir=cache, endpoint=os.environ.get("HF_ENDPOINT") or None,
              local_files_only=offline(), tqdm_class=tqdm_class())

    def known_absent(filename: str) -> bool:
        found = try_to_load_from_cache(name.repo, filename, cache_dir=cache, revision=name.revision)
        return found is not None and not isinstance(found, str)  # huggingface_hub's _CACHED_NO_EXIST

    def get(filename: str) -> Path | None:
        """The file, or None if the repository has no such file (as the Hub or the cache says)."""
        if known_absent(filename):
            return None
        try:
            return Path(hf_hub_download(name.repo, filename, **kw))
        except RemoteEntryNotFoundError:
            return None

    try:
        config = get("config.json")
        if config is None:
            raise DownloadError(f"{name.text} (Hugging Face repository {name.repo}): the repository has no config.json: not "
                                f"a transformers or timm model repository")
        weights = None
        for filename in ("model.safetensors", "pytorch_model.bin"):  # older repositories: a PyTorch file (read weights_only)
            try:
                weights = get(filename)
            except LocalEntryNotFoundError:
                if filename == "pytorch_model.bin":
                    raise
                continue  # not cached (offline or unreachable): the other file may be
            if weights is not None:
                break
        if weights is None:
            raise DownloadError(f"{name.text} (Hugging Face repository {name.repo}): the repository has neither "
                                f"model.safetensors nor pytorch_model.bin, the files vitkit reads ViT weights from")
        try:
            get("preprocessor_config.json")
        except LocalEntryNotFoundError:
            pass  # optional: without it, the normalisation is Google's
    except DownloadError:
        raise
    except Exception as err:  # noqa: BLE001 - huggingface_hub's and httpx's errors, as one line that says what to do
        raise DownloadError(_hub_message(name, err)) from err
    return config.parent


def _hub_message(name: Name, err: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = hf_cache_dir()
    shown = f"{name.text} (Hugging Face repository {name.repo}" + (f", revision {name.revision})" if name.revision else ")")
    if isinstance(err, GatedRepoError):
        return (f"{shown}: a gated repository: accept its terms on huggingface.co, then log in (`hf auth login`) or set HF_TOKEN")
    if isinstance(err, RevisionNotFoundError):
        return f"{shown}: no such revision; name a branch, tag or commit of the repository"
    if isinstance(err, RepositoryNotFoundError):
        return (f"{shown}: no such repository (or a private one: log in with `hf auth login` or set HF_TOKEN); "
                f"`vitkit models --pretrained` lists the names vitkit knows")
    how = f"run it once online, or fetch it with `hf download {name.repo}" + (f" --revision {name.revision}`" if name.revision else "`")
    if isinstance(err, LocalEntryNotFoundError) and offline():
        return f"{shown}: not in the Hugging Face cache ({where}) and HF_HUB_OFFLINE / VITKIT_OFFLINE forbid downloads: {how}"
    return f"{shown}: could not download it, and it is not in the Hugging Face cache ({where}): {_first_line(err)}; {how}"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def download_url(url: str, rel: str, *, what: str, sha256: str | None = None) -> Path:
    """`url` as the file cache_dir()/`rel`, downloaded once: a cached file is returned with no network call. Downloads
    go to `rel`.incomplete and resume from it (HTTP Range) after an interruption; the whole file is checked (size;
    the pinned `sha256` if given; the MD5 Google Storage reports in x-goog-hash) before it is renamed into place, and
    a file that fails the check is deleted. A record of what was checked is kept beside it (`rel`.json)."""
    dest = cache_dir() / rel
    if dest.is_file():
        return dest
    tmp = dest.with_name(dest.name + ".curl")
    how = (f"run it once online, or download {url} to {dest} yourself (e.g. curl -fL -o '{tmp}' '{url}' && mv '{tmp}' "
           f"'{dest}': a file at that path is taken as it is)")
    if offline():
        raise DownloadError(f"{what}: not in vitkit's cache ({dest}) and HF_HUB_OFFLINE / VITKIT_OFFLINE forbid downloads: {how}")
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    locks = cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    from filelock import Timeout

    lock = FileLock(str(locks / (rel.replace("/", "--") + ".lock")))  # two processes fetching one name: one downloads
    try:
        lock.acquire(timeout=2)
    except Timeout:
        from vitkit.runtime import is_main_process

        if is_main_process():
            print(f"{what}: another process is downloading it; waiting for it (lock {lock.lock_file})", file=sys.stderr)
        lock.acquire()
    try:
        if dest.is_file():
            return dest
        try:
            return _download(url, dest, what=what, sha256=sha256)
        except DownloadError:
            raise
        except Exception as err:  # noqa: BLE001 - the network's and the server's errors, as one line
            part = dest.with_name(dest.name + ".incomplete")
            kept = (f"the {part.stat().st_size:,} bytes that arrived are kept and the next try resumes; "
                    if part.is_file() and part.stat().st_size else "")
            raise DownloadError(f"{what}: could not download {url} ({_first_line(err)}); {kept}{how}") from err
    finally:
        lock.release()


def _download(url: str, dest: Path, *, what: str, sha256: str | None) -> Path:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import get_session, hf_raise_for_status

    from vitkit.progress import tqdm_class

    head = get_session().head(url, follow_redirects=True, timeout=30)
    if head.status_code == 404:
        raise DownloadError(f"{what}: no such file at {url}; `vitkit models --pretrained` lists the names vitkit knows")
    hf_raise_for_status(head)
    size = int(head.headers["Content-Length"]) if "Content-Length" in head.headers else None
    md5 = _goog_md5(head.headers.get("x-goog-hash", ""))
    part = dest.with_name(dest.name + ".incomplete")
    began = part.with_name(part.name + ".json")  # the server's ETag when the partial file began
    etag = head.headers.get("ETag")
    resume = part.stat().st_size if part.exists() else 0
    if resume and (size is not None and resume > size or _began_with(began) != etag):  # another file now: start again
        part.unlink()
        resume = 0
    if not resume:
        from vitkit.atomic import write_json

        write_json(began, {"url": url, "etag": etag})
    with open(part, "ab") as f:
        http_get(url, f, resume_size=resume, expected_size=size, displayed_filename=dest.name, tqdm_class=tqdm_class())
    got = _hashes(part)
    problems = []
    if size is not None and got["size"] != size:
        problems.append(f"{got['size']} bytes, not the {size} the server announced")
    if sha256 and got["sha256"] != sha256.lower():
        problems.append(f"sha256 {got['sha256']}, not the pinned {sha256}")
    if md5 and got["md5"] != md5:
        problems.append(f"MD5 {got['md5']}, not the {md5} the server reports")
    if problems:
        part.unlink()
        began.unlink(missing_ok=True)
        raise DownloadError(f"{what}: the download from {url} is corrupt ({'; '.join(problems)}); it was deleted, nothing "
                            f"was cached: try again, and if it persists the file on the server changed")
    record = {"url": url, "size": got["size"], "sha256": got["sha256"], "md5": got["md5"], "pinned_sha256": sha256,
              "server_md5": md5, "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from vitkit.atomic import write_json

    write_json(dest.with_name(dest.name + ".json"), record)
    os.replace(part, dest)
    began.unlink(missing_ok=True)
    return dest


def _began_with(record: Path) -> str | None:
    """The ETag a partial download began with (None if unrecorded or unreadable)."""
    try:
        return json.loads(record.read_text()).get("etag")
    except (OSError, ValueError, AttributeError):
        return None


def _goog_md5(header: str) -> str | None:
    """The hex MD5 in a Google Storage x-goog-hash header ("crc32c=...,md5=BASE64"), None without one."""
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "md5" and value:
            try:
                return base64.b64decode(value).hex()
            except ValueError:
                return None
    return None


def _hashes(path: Path) -> dict[str, Any]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest(), "size": size}
