"""Typed configuration: recipes return a `Config`; the command line overrides dotted keys
(`--set optim.lr=3e-3`); the resolved config is saved as JSON with every run."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def _num(v: float) -> str:
    """A number as typed: 0 not 0.0, 0.1 not 0.10000000000000001."""
    text = repr(v)
    return text[:-2] if isinstance(v, float) and text.endswith(".0") else text


@dataclass(frozen=True)
class Range:
    """The values a number may take (any of the bounds ge / gt / le / lt), and what a special value means (`note`);
    declared beside each numeric field (`ranged`) and each numeric argument of a verb (ARGUMENTS), checked by
    `validate` and by the command line's parsers. NaN and infinities are never in a range."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""

    def describe(self, kind: type = float) -> str:
        """E.g. "an integer >= 1", "a number in [0, 1)", "a finite number"."""
        what = "an integer" if kind is int else "a number"
        lo = (f"[{_num(self.ge)}", f">= {_num(self.ge)}") if self.ge is not None else (
            (f"({_num(self.gt)}", f"> {_num(self.gt)}") if self.gt is not None else None)
        hi = (f"{_num(self.le)}]", f"<= {_num(self.le)}") if self.le is not None else (
            (f"{_num(self.lt)})", f"< {_num(self.lt)}") if self.lt is not None else None)
        text = (f"{what} in {lo[0]}, {hi[0]}" if lo and hi else f"{what} {lo[1]}" if lo else f"{what} {hi[1]}" if hi
                else "a finite number" if kind is float else what)
        return text + (f" ({self.note})" if self.note else "")

    def contains(self, value: float) -> bool:
        return ((isinstance(value, numbers.Integral) or math.isfinite(value))
                and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def check(self, key: str, value: float, kind: type = float) -> None:
        """ValueError "KEY=VALUE: must be ..." for a value outside the range."""
        if not self.contains(value):
            raise ValueError(f"{key}={_num(value)}: must be {self.describe(kind)}")

    def parser(self, kind: type = int) -> Callable[[str], Any]:
        """An argparse `type=` for an option in this range: a value outside it is argparse's one-line usage error,
        "argument --OPTION: must be ..., not VALUE"."""
        import argparse

        def parse(text: str) -> Any:
            try:
                value = kind(text)
            except ValueError:
                value = None
            if value is None or not self.contains(value):
                raise argparse.ArgumentTypeError(f"must be {self.describe(kind)}, not {text!r}")
            return value

        return parse


def ranged(default: Any, **bounds: Any) -> Any:
    """A dataclass field with a declared Range (`bounds`: ge, gt, le, lt, note); None is always allowed where the
    field's type allows it."""
    return field(default=default, metadata={"range": Range(**bounds)})


BATCH_MAX = 2**20  # images in one step: beyond any dataset vitkit reads; a typo (1e8) otherwise trains on one batch
# The numeric arguments of the verbs (the Python functions and their command-line options, which name them
# --top-k, --num-images, ...): declared once, checked by the functions (`check_argument`) and the parsers.
ARGUMENTS: dict[str, tuple[type, Range]] = {
    "top_k": (int, Range(ge=1)),
    "shots": (int, Range(ge=1)),
    "seeds": (int, Range(ge=1)),
    "l2": (float, Range(gt=0)),
    "num_images": (int, Range(ge=1)),
    "head": (int, Range(ge=0)),
    "resolution": (int, Range(ge=1)),
    "batch_size": (int, Range(ge=1, le=BATCH_MAX)),
    "num_classes": (int, Range(ge=0, note="0: no head")),
    "opset": (int, Range(ge=1)),
    "lr": (float, Range(gt=0)),
    "alpha": (float, Range(ge=0, le=1)),
    "min_score": (float, Range(ge=0, le=1)),
}


def check_number(key: str, value: Any, kind: type = float, rng: Range = Range()) -> None:
    """ValueError "KEY=VALUE: must be ..." unless `value` is a `kind` (int: not a bool; float: an int or a float,
    finite) in `rng`."""
    if not _is(value, kind):
        raise ValueError(f"{key}={value!r}: must be {rng.describe(kind)}")
    rng.check(key, value, kind)


def check_argument(name: str, value: Any) -> None:
    """A verb's numeric argument `name` (ARGUMENTS) checked: ValueError "name=VALUE: must be ..." outside its range,
    or of another type (None passes: the default)."""
    if value is not None:
        check_number(name, value, *ARGUMENTS[name])


def argument_parser(name: str) -> Callable[[str], Any]:
    """The argparse `type=` of a verb's numeric argument (ARGUMENTS)."""
    kind, rng = ARGUMENTS[name]
    return rng.parser(kind)


@dataclass
class CanvasConfig:
    """The canvas task (data.name=canvas, data/canvas.py): Fashion-MNIST and digits items placed at random on a black
    canvas, with their per-pixel class masks; every canvas a pure function of (seed, split, index)."""

    size: int = ranged(96, ge=8, le=1024)  # the canvas side in pixels (meant for 64-128); resized to data.image_size
    sources: str = "fashion-mnist,digits"  # the items' datasets, comma-separated: fashion-mnist and/or digits
    items_min: int = ranged(1, ge=1, le=255)  # items per canvas, drawn uniformly in [items_min, items_max]
    items_max: int = ranged(4, ge=1, le=255)
    max_overlap: float = ranged(0.2, ge=0, le=1, note="0: items never overlap")  # of the smaller of two items' boxes
    train: int = ranged(5000, ge=1)  # canvases per split
    val: int = ranged(500, ge=0, note="0: no validation")
    test: int = ranged(1000, ge=1)
    seed: int = ranged(0, ge=0, le=2**63 - 1)  # the canvases' draw, apart from the training seed


@dataclass
class DataConfig:
    # digits | fashion-mnist | mnist | cifar10 | cifar100 | folder:PATH (class-per-folder tree); with
    # objective=segmentation: canvas (data.canvas) | seg:PATH (images and PNG masks of class indices, data/masks.py);
    # with objective=detection: canvas | coco:PATH (a COCO-format annotations JSON and its images, data/coco.py)
    name: str = "digits"
    data_dir: str | None = None  # where the files are (else $VITKIT_DATA, Debian's dataset packages, a download)
    image_size: int = ranged(32, ge=1)  # the model's input size; images are resized to it
    val_fraction: float = ranged(0.1, ge=0, lt=1)  # carved from train for model selection; test stays untouched
    download: bool = True  # fetch through torchvision when the files are not found (needs internet)
    train_subset: int = ranged(0, ge=0, note="0: all")  # keep only this many training images (stratified)
    # hold out exactly this many of the training images kept (after train_subset: VTAB-1k's 200 of 1000) for validation
    val_size: int = ranged(0, ge=0, note="0: data.val_fraction applies")
    labels_per_class: int = ranged(0, ge=0, note="0: all")  # keep only this many labelled training images per class
    classes: str | None = None  # keep these classes only, relabelled in this order: "5,6,7,8,9" or class names
    normalize: Literal["google", "imagenet"] = "google"  # google: (x - 0.5) / 0.5, i.e. [-1, 1] | imagenet: ImageNet mean/std
    # augmentation (training only); evaluation always just resizes
    crop: Literal["pad", "inception", "none"] = "pad"  # pad: random crop after padding (small images) | inception: random-resized crop | none
    crop_padding: int = ranged(2, ge=0)
    crop_scale_min: float = ranged(0.05, gt=0, le=1)  # inception crop: smallest area fraction (the official fine-tuning code: 5%)
    flip: bool = True
    randaugment: int = ranged(0, ge=0, note="0: off")  # number of RandAugment ops
    randaugment_magnitude: int = ranged(9, ge=0, le=30)  # torchvision's 31 magnitude bins
    mixup: float = ranged(0.0, ge=0, note="0: off")  # Beta(alpha, alpha) for Mixup
    cutmix: float = ranged(0.0, ge=0, note="0: off")  # Beta(alpha, alpha) for CutMix
    random_erasing: float = ranged(0.0, ge=0, le=1)  # probability per image
    in_memory: bool | None = None  # None: automatic (small datasets are held as tensors, augmented per batch)
    workers: int = ranged(0, ge=0, note="0: in this process")  # DataLoader workers for the per-image path
    # segmentation: the mask value no loss or metric counts (VOC's object borders)
    ignore_index: int = ranged(255, ge=0, le=65535)
    # segmentation: mask value 0 ignored and every other value v read as class v - 1 (ADE20K's "other"); None: on for
    # ADE20K's layout only
    reduce_zero_label: bool | None = None
    canvas: CanvasConfig = field(default_factory=CanvasConfig)


@dataclass
class ModelConfig:
    name: str = "ViT-Ti/16"  # any `vitkit models` name; the fields below override the variant (with init: what the file holds)
    init: str | None = None  # start from a checkpoint (anything load_model reads)
    patch_size: int | None = ranged(None, ge=1)
    width: int | None = ranged(None, ge=1)
    depth: int | None = ranged(None, ge=1)
    heads: int | None = ranged(None, ge=1)
    mlp_dim: int | None = ranged(None, ge=1)
    pool: Literal["token", "gap"] | None = None
    posemb: Literal["learned", "learned2d", "sincos2d", "relative", "none"] | None = None  # appendix D.4's kinds (+ sincos2d)
    posemb_placement: Literal["stem", "every_layer", "shared"] | None = None  # appendix D.4; None: the kind's default
    class_token: bool | None = None
    fc_norm: bool | None = None
    qkv_bias: bool | None = None
    ln_eps: float | None = ranged(None, gt=0)
    representation_size: int | None = ranged(None, ge=0, note="0: none")
    dropout: float | None = ranged(None, ge=0, lt=1)
    attn_dropout: float | None = ranged(None, ge=0, lt=1)
    drop_path: float | None = ranged(None, ge=0, lt=1)
    head_bias_init: float | None = None
    zero_head: bool | None = None
    gelu: Literal["exact", "tanh"] | None = None  # the MLP's GELU: exact (erf) or the official code's tanh approximation
    layers: str | None = None  # BiT / axial ResNets: units per stage, comma-separated ("2,2,2,2": a ResNet-26)
    width_factor: int | None = ranged(None, ge=1)  # BiT ResNets: the channel multiplier (R50x3: 3)

    def overrides(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("name", "init") and getattr(self, f.name) is not None}
        if "layers" in out:
            out["layers"] = parse_layers(out["layers"])
        return out


def parse_layers(text: str | tuple | list) -> tuple[int, ...]:
    """model.layers as a tuple: "3,4,6,3" (or a JSON list) -> (3, 4, 6, 3), else ValueError naming the option."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        layers = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        layers = ()
    if not layers or any(n < 1 for n in layers):
        raise ValueError(f"model.layers={text!r}: must be units per stage, comma-separated integers >= 1 (e.g. 3,4,6,3)")
    return layers


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"  # adamw (decoupled decay) | adam | sgd (momentum)
    lr: float = ranged(1e-3, gt=0)  # peak learning rate, at the global batch size
    weight_decay: float = ranged(0.05, ge=0)  # never on norms, biases, position embeddings or tokens
    b1: float = ranged(0.9, ge=0, lt=1)
    b2: float = ranged(0.999, ge=0, lt=1)
    momentum: float = ranged(0.9, ge=0, lt=1)  # sgd
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # cosine | linear | constant, after linear warm-up
    warmup_steps: int = ranged(-1, ge=-1, note="-1: optim.warmup_fraction of the run")
    warmup_fraction: float = ranged(0.05, ge=0, le=1)
    end_lr_fraction: float = ranged(0.0, ge=0, le=1)  # the schedule ends at lr * this
    clip_norm: float = ranged(1.0, ge=0, note="0: off")  # global-norm clipping
    label_smoothing: float = ranged(0.0, ge=0, lt=1)
    loss: Literal["softmax", "sigmoid"] = "softmax"  # softmax | sigmoid (the paper's ImageNet-21k / JFT pre-training)
    ema: float = ranged(0.0, ge=0, lt=1, note="0: off")  # Polyak / EMA decay of the weights; evaluation uses the average


@dataclass
class TrainConfig:
    epochs: float = ranged(10.0, gt=0)  # used when steps == 0
    steps: int = ranged(0, ge=0, note="0: from train.epochs")
    batch_size: int = ranged(128, ge=1, le=BATCH_MAX)  # global batch; reached by accumulation when micro_batch_size is smaller
    micro_batch_size: int = ranged(0, ge=0, le=BATCH_MAX, note="0: train.batch_size")
    # auto: bf16 where native, fp16 + scaler on older GPUs, else fp32 (resolved and saved)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto (the GPU when there is one: cuda:LOCAL_RANK under torchrun; else the CPU) | cpu | cuda | cuda:N | mps
    tf32: bool = True  # fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later GPUs); false: exact fp32
    seed: int = ranged(0, ge=0, le=2**63 - 1)
    log_every: int = ranged(50, ge=1)
    eval_every: int = ranged(0, ge=0, note="0: once per epoch")  # steps between validations
    ckpt_every: int = ranged(0, ge=0, note="0: once per epoch")  # steps between checkpoints
    eval_batch_size: int = ranged(512, ge=1, le=BATCH_MAX)
    compile: bool = False
    threads: int = ranged(0, ge=0, le=65536, note="0: torch's default")  # torch threads
    progress: bool = True
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp (replicas) | fsdp (FSDP2: parameters, gradients, optimizer state sharded)
    # end training (then checkpoint and evaluate as usual) once this much training time has passed
    time_limit_s: float = ranged(0.0, ge=0, note="0: none")
    # end this process after this step, with a checkpoint; continue with --resume (scheduler time slices)
    stop_at_step: int = ranged(0, ge=0, note="0: run to the end")
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


@dataclass
class MppConfig:
    """Masked patch prediction (paper section 4.6, appendix B.1.2); used when objective == "mpp"."""

    rate: float = ranged(0.5, gt=0, le=1)  # fraction of patch embeddings corrupted
    mask_frac: float = ranged(0.8, ge=0, le=1)  # of the corrupted: replaced by the learnable [mask] embedding
    random_frac: float = ranged(0.1, ge=0, le=1)  # of the corrupted: replaced by a random other patch's embedding (the rest kept)
    bits: int = ranged(3, ge=1, le=8)  # colour bits per channel of the target (3: 512 classes for RGB, 8 for grayscale)
    target: Literal["mean", "mean4x4", "l2"] = "mean"  # mean: the patch's mean colour | mean4x4: 4 x 4 downsized, 16 x 512 | l2: regress the patch


@dataclass
class MaeConfig:
    """Masked autoencoding (He et al. 2021) and its denoising variant (objectives/mae.py); used when objective == "mae"."""

    # the fraction of each image's patches hidden from the encoder (round(ratio * patches), the same for every image)
    mask_ratio: float = ranged(0.75, ge=0, lt=1, note="0: none hidden, pure denoising with mae.noise_std > 0")
    target: Literal["norm", "pixels"] = "norm"  # norm: each patch's pixels standardised by its own mean and variance | pixels: as input
    # denoising: Gaussian noise of this std (in the normalised input's units) added to the input; the clean patches
    # are predicted, and every patch is scored (none was seen clean)
    noise_std: float = ranged(0.0, ge=0, note="0: off")
    decoder_width: int = ranged(128, ge=1)
    decoder_depth: int = ranged(2, ge=1)
    decoder_heads: int = ranged(4, ge=1)
    decoder_mlp_dim: int = ranged(0, ge=0, note="0: 4 x mae.decoder_width")
    decoder_posemb: Literal["sincos2d", "learned"] = "sincos2d"  # the decoder's own position embeddings: fixed 2-D sin-cos | learned


@dataclass
class SegmentationConfig:
    """Semantic segmentation (heads/segmentation.py: SETR's decoders on the patch tokens); used when
    objective == "segmentation"."""

    head: Literal["linear", "progressive"] = "linear"  # linear: K logits per token, upsampled | progressive: SETR-PUP
    channels: int = ranged(256, ge=1)  # progressive: the convolutions' channels
    # progressive: the convolutions' norm; group: the same results whatever the micro-batch and the number of
    # processes | batch: SETR's (SyncBatchNorm across GPUs; per process on the CPU)
    norm: Literal["batch", "group"] = "group"


@dataclass
class DetectionConfig:
    """Object detection (heads/detection.py: ViTDet's simple feature pyramid into torchvision's FCOS or Faster R-CNN);
    used when objective == "detection"."""

    kind: Literal["fcos", "faster_rcnn"] = "fcos"  # torchvision's detector on the pyramid
    # the pyramid's levels as scales of the patch grid, comma-separated, each of 4, 2, 1, 0.5 (ViTDet's four: strides
    # P/4, P/2, P, 2P); every level's stride a whole number of pixels and its map whole
    scales: str = "4,2,1,0.5"
    out_channels: int = ranged(256, ge=1)  # the pyramid's (and the heads') channels; FCOS: a multiple of 32 (its GroupNorm)
    norm: Literal["layer", "group"] = "layer"  # the pyramid's norm: layer (ViTDet's LayerNorm over channels) | group
    # anchor sizes in pixels, one per level, comma-separated; None: FCOS one point of the level's stride, Faster
    # R-CNN 8x the stride (torchvision's FPN proportions)
    anchor_sizes: str | None = None
    representation_size: int = ranged(1024, ge=1)  # Faster R-CNN: the two-layer box head's width (torchvision's 1024)
    score_thresh: float | None = ranged(None, ge=0, le=1, note="None: torchvision's, FCOS 0.2, Faster R-CNN 0.05")  # kept detections
    detections_per_img: int | None = ranged(None, ge=1, note="None: torchvision's 100")  # the most detections per image


@dataclass
class MultitaskConfig:
    """Several tasks trained jointly on one encoder, a head each (heads/multitask.py, objectives/multitask.py); used
    when objective == "multitask". The data section's settings (image size, normalisation, augmentation) apply to every
    task (the classification-only ones, e.g. data.labels_per_class, to its classification tasks); data.name is unused."""

    # the tasks, comma-separated, each DATA or NAME=DATA: a classification dataset (digits, fashion-mnist, mnist,
    # cifar10, cifar100, folder:PATH) or a segmentation one (canvas, seg:PATH: its head is the segmentation section's);
    # NAME (default: the data's name) names the task's head, metrics and scores
    tasks: str = "fashion-mnist,digits,canvas"
    # each task's share of every batch, comma-separated, one per task (e.g. "2,1,1": half the images from the first);
    # None: equal shares. Every task has at least one image in every batch
    weights: str | None = None
    # each task's loss multiplier, comma-separated, one per task; None: 1 each (the loss is then the batch's mean
    # over its images, each image's by its own task)
    loss_weights: str | None = None


@dataclass
class Config:
    recipe: str = "quickstart"
    # classification | mpp (masked patch prediction) | mae (masked autoencoding, or denoising) | segmentation | detection
    # | multitask (several tasks on one encoder: the multitask section)
    objective: Literal["classification", "mpp", "mae", "segmentation", "detection", "multitask"] = "classification"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mpp: MppConfig = field(default_factory=MppConfig)
    mae: MaeConfig = field(default_factory=MaeConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _keys(obj: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out.extend(_keys(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else [f"{prefix}{f.name}"])
    return out


def valid_keys(cfg: Config | None = None) -> list[str]:
    return _keys(cfg or Config())


def _base(annotation: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None)), True
    return annotation, False


def _choices(annotation: Any) -> tuple | None:
    """The allowed values of a Literal[...] (or Literal[...] | None) annotation, else None."""
    annotation = _base(annotation)[0]
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def check_choice(key: str, value: Any, annotation: Any) -> None:
    """A string option outside its choices is refused with the choices (`validate`, before anything is written)."""
    choices = _choices(annotation)
    if choices is not None and value is not None and value not in choices:
        raise ValueError(f"{key}={value!r}: choose one of {', '.join(map(str, choices))}")


def _is(value: Any, base: Any) -> bool:
    """`value` of the type `base` (a bool is no int, an int is a float; a Literal's values: by `check_choice`)."""
    if base in (int, float):
        return isinstance(value, numbers.Integral if base is int else numbers.Real) and not isinstance(value, bool)
    return isinstance(value, base) if base in (bool, str) else typing.get_origin(base) is Literal


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", "one of the choices" if typing.get_origin(annotation) is Literal else str(annotation))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """A value for a field annotated `annotation` (str, int, float, bool, Literal, X | None): a --set string parsed,
    a JSON value (a config file's) checked; an integral float is an int (JSON writers may write 10.0)."""
    base, optional = _base(annotation)
    if isinstance(value, str):
        text = value
        choice = typing.get_origin(base) is Literal and text in typing.get_args(base)
        if optional and text.lower() in ("none", "null") and not choice:  # "none" that is a choice (model.posemb) stays
            return None
        if typing.get_origin(base) is Literal or base is str:
            return text
        try:
            if base is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if base is int:  # 10, 1_000, and 1e3 or 10.0 (exactly integral)
                with contextlib.suppress(ValueError):
                    return int(text)
                if float(text).is_integer():
                    return int(float(text))
                raise ValueError
            if base is float:
                return float(text)
        except (ValueError, OverflowError):
            raise ValueError(f"--set {key}={text}: expected {_type_name(base)}") from None
        return text
    if value is None and optional:
        return None
    if not (_is(value, base) or base is int and isinstance(value, float) and value.is_integer()):
        raise ValueError(f"{key}={value!r}: expected {_type_name(base)}" + (" or null" if optional else ""))
    try:
        return int(value) if base is int else float(value) if base is float else value
    except OverflowError:  # an integer beyond any float
        raise ValueError(f"{key}={value!r}: must be a finite number") from None


# Architecture fields a checkpoint fixes (model.init); the dropouts are set on top (train/loop.py build_model).
INIT_KEEPS = ("dropout", "attn_dropout", "drop_path", "zero_head")  # zero_head=true with init: a new zero head


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply `a.b=value` overrides in place; an unknown key is an error listing the valid ones, a value of the wrong
    type one naming the key (ranges: `validate`). With model.init set (here or before), overriding a model field other
    than the dropouts (INIT_KEEPS) is an error: the architecture comes from the checkpoint (train/loop.py build_model),
    and model.name only records it. A recipe's own architecture fields are defaults, which the checkpoint replaces;
    a record (config_from_dict: a run's config.json) is not an override."""
    items = list(overrides.items()) if isinstance(overrides, dict) else [_split(o) for o in overrides]
    _apply(cfg, items)
    m = cfg.model
    fixed = [k for k, _ in items if k.startswith("model.") and k not in ("model.init", *(f"model.{k}" for k in INIT_KEEPS))]
    if m.init and fixed:  # a recipe's own architecture is a default, which a checkpoint replaces; an override is a wish
        given = ", ".join(f"{k}={getattr(m, k[6:])!r}" for k in dict.fromkeys(fixed))
        raise ValueError(f"{given} with model.init={m.init!r}: the architecture comes from the checkpoint (model.name only "
                         f"records it; finetune records the checkpoint's own); with model.init only "
                         f"{', '.join('model.' + k for k in INIT_KEEPS)} apply: drop {', '.join(dict.fromkeys(fixed))}, or "
                         f"set model.init=none to train from scratch")
    return cfg


def _apply(cfg: Config, items: Any) -> None:
    valid = valid_keys(cfg)
    sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
    for key, value in items:
        if key in sections:
            raise ValueError(f"{key}={value!r}: {key} is a section of keys, not a value; set one of "
                             f"{', '.join(k for k in valid if k.startswith(key + '.'))}")
        if key not in valid:
            close = [k for k in valid if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(valid)}")
        *path, leaf = key.split(".")
        obj = cfg
        for part in path:
            obj = getattr(obj, part)
        ftype = typing.get_type_hints(type(obj))[leaf]
        setattr(obj, leaf, _coerce(value, ftype, key))


def _split(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"--set {text!r}: write key=value, e.g. --set optim.lr=3e-3")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from its JSON form (e.g. a run's config.json), checking every key and every value's type: a
    record, so model.name beside model.init is what it records."""
    if not isinstance(d, dict):
        raise ValueError(f"a config is a JSON object of sections (data, model, optim, train, mpp, mae, segmentation, "
                         f"detection), not a {type(d).__name__}")
    cfg = Config()
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str = "") -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(d)
    _apply(cfg, flat.items())
    return cfg


def load_config(path: str | Path) -> Config:
    """A config JSON file (e.g. a run's config.json); every error names the file."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"{path}: a directory, not a config file" + (f"; its config is {path / 'config.json'}"
                                                                            if (path / "config.json").is_file() else ""))
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def check_value(key: str, value: Any, annotation: Any, rng: Range | None = None) -> None:
    """One field's value against its type (a float: finite), its choices and its declared range."""
    base, optional = _base(annotation)
    if value is None:
        if optional:
            return
        raise ValueError(f"{key}=None: expected {_type_name(base)}")
    check_choice(key, value, annotation)
    if base in (int, float):
        check_number(key, value, base, rng or Range())
    elif not _is(value, base):
        raise ValueError(f"{key}={value!r}: expected {_type_name(base)}")


def _fields(obj: Any, prefix: str = "") -> list[tuple[str, Any, Any, Range | None]]:
    """(key, value, annotation, range) of every leaf field, depth first."""
    out = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(_fields(value, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", value, hints[f.name], f.metadata.get("range")))
    return out


def validate(cfg: Config) -> Config:
    """Every field of `cfg` checked (its type, its choices, its declared range; floats finite), then what fields
    decide together (the micro-batch divides the batch; the architecture at the data's size; a classifier's image
    folder has two classes at least), the dataset and model names, so that a bad config is refused before a run
    directory exists; returns `cfg`."""
    for key, value, annotation, rng in _fields(cfg):
        check_value(key, value, annotation, rng)
    t, m = cfg.train, cfg.model
    if 0 < t.micro_batch_size < t.batch_size and t.batch_size % t.micro_batch_size:
        raise ValueError(f"train.micro_batch_size={t.micro_batch_size} does not divide train.batch_size={t.batch_size}; "
                         f"choose a divisor of it (the batch is reached by accumulating micro-batches)")
    if cfg.mpp.mask_frac + cfg.mpp.random_frac > 1:
        raise ValueError(f"mpp.mask_frac={cfg.mpp.mask_frac:g} + mpp.random_frac={cfg.mpp.random_frac:g} is over 1: they are "
                         f"fractions of the same corrupted patches")
    if cfg.objective == "mae":
        from vitkit.objectives.mae import check_options

        check_options(cfg.mae)
    if cfg.objective == "detection":  # the section alone (with model.init too); with the encoder: check_setup below
        from vitkit.objectives.detection import check_options as check_detection

        check_detection(cfg.detection)
    from vitkit.data.datasets import check_classes, check_source
    from vitkit.data.dense import check_data, is_dense
    from vitkit.models.registry import model_config

    if cfg.objective == "multitask":  # the tasks name their data (each checked as its kind checks it)
        from vitkit.objectives.multitask import check_config

        check_config(cfg)
    elif cfg.objective in ("segmentation", "detection"):
        check_data(cfg.data, cfg.objective)  # canvas, seg:PATH or coco:PATH, the canvas settings, no classification-only option
    elif is_dense(cfg.data.name):
        task = "detection task (images with boxes)" if cfg.data.name.startswith("coco:") else "segmentation task (images with per-pixel masks)"
        hint = "objective=detection (e.g. --recipe det-canvas)" if cfg.data.name.startswith("coco:") else (
            "objective=segmentation (e.g. --recipe seg-canvas) or objective=detection (--recipe det-canvas)"
            if cfg.data.name == "canvas" else "objective=segmentation (e.g. --recipe seg-canvas)")
        raise ValueError(f"data.name={cfg.data.name!r} is a {task}; set {hint}")
    else:
        check_source(cfg.data.name, "data.name")
    if cfg.objective == "classification":
        check_classes(cfg.data.name, "data.name")
    if m.init:  # the architecture is the checkpoint's (overriding it: apply_overrides); model.name only records it
        from vitkit import hub

        try:
            why = None if Path(m.init).exists() or hub.is_name(m.init) else "no such file or directory"
        except OSError as err:  # e.g. a name too long for the file system
            why = err.strerror
        if why:
            raise ValueError(f"model.init={m.init!r}: {why}; give a checkpoint (a run directory, a vitkit / Hugging Face "
                             f"directory, a .safetensors, .pth or .npz file) or a published name (hf-hub:ORG/NAME, timm's "
                             f"MODEL.TAG, google:PATH)")
        return cfg
    try:
        model_config(m.name)
    except (KeyError, ValueError) as err:
        raise ValueError(f"model.name={m.name!r}: {str(err).strip(chr(39))}") from None
    try:
        chosen = model_config(m.name, image_size=cfg.data.image_size, **m.overrides())
    except ValueError as err:
        given = "".join(f", model.{k}={v!r}" for k, v in m.overrides().items())
        raise ValueError(f"model.name={m.name!r} at data.image_size={cfg.data.image_size}{given}: {err}") from None
    if cfg.objective == "mae":  # the model it trains (with model.init: when the checkpoint is read, objectives/mae.py)
        from vitkit.objectives.mae import check_setup

        check_setup(chosen, cfg.mae, m.name)
    if cfg.objective in ("segmentation", "multitask"):  # with model.init: when the checkpoint is read (train/loop.py)
        from vitkit.objectives.segmentation import check_encoder

        check_encoder(chosen, f"model.name={m.name!r}", cfg.objective)
    if cfg.objective == "detection":  # the detector built on the meta device: every section value checked, keys named
        from vitkit.objectives.detection import check_setup

        check_setup(chosen, cfg, f"model.name={m.name!r}")
    return cfg
