"""Typed configuration: recipes return a `Config`; the command line overrides dotted keys
(`--set optim.lr=3e-3`); the resolved config is saved as JSON with every run."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class DataConfig:
    name: str = "digits"  # digits | fashion-mnist | mnist | cifar10 | cifar100 | folder:PATH (class-per-folder tree)
    data_dir: str | None = None  # where the files are (else $VITKIT_DATA, Debian's dataset packages, a download)
    image_size: int = 32  # the model's input size; images are resized to it
    val_fraction: float = 0.1  # carved from train for model selection; test stays untouched
    download: bool = True  # fetch through torchvision when the files are not found (needs internet)
    train_subset: int = 0  # >0: keep only this many training images (stratified)
    labels_per_class: int = 0  # >0: keep only this many labelled training images per class
    normalize: Literal["google", "imagenet"] = "google"  # google: (x - 0.5) / 0.5, i.e. [-1, 1] | imagenet: ImageNet mean/std
    # augmentation (training only); evaluation always just resizes
    crop: Literal["pad", "inception", "none"] = "pad"  # pad: random crop after padding (small images) | inception: random-resized crop | none
    crop_padding: int = 2
    crop_scale_min: float = 0.05  # inception crop: smallest area fraction (the official fine-tuning code: 5%)
    flip: bool = True
    randaugment: int = 0  # number of RandAugment ops (0 = off)
    randaugment_magnitude: int = 9
    mixup: float = 0.0  # Beta(alpha, alpha) for Mixup (0 = off)
    cutmix: float = 0.0  # Beta(alpha, alpha) for CutMix (0 = off)
    random_erasing: float = 0.0  # probability per image
    in_memory: bool | None = None  # None: automatic (small datasets are held as tensors, augmented per batch)
    workers: int = 0  # DataLoader workers for the per-image path


@dataclass
class ModelConfig:
    name: str = "ViT-Ti/16"  # any `vitkit models` name; the fields below override the variant (with init: what the file holds)
    init: str | None = None  # start from a checkpoint (anything load_model reads)
    patch_size: int | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_dim: int | None = None
    pool: Literal["token", "gap"] | None = None
    posemb: Literal["learned", "sincos2d", "none"] | None = None
    class_token: bool | None = None
    fc_norm: bool | None = None
    qkv_bias: bool | None = None
    ln_eps: float | None = None
    representation_size: int | None = None
    dropout: float | None = None
    attn_dropout: float | None = None
    drop_path: float | None = None
    head_bias_init: float | None = None
    zero_head: bool | None = None

    def overrides(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("name", "init") and getattr(self, f.name) is not None}


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"  # adamw (decoupled decay) | adam | sgd (momentum)
    lr: float = 1e-3  # peak learning rate, at the global batch size
    weight_decay: float = 0.05  # never on norms, biases, position embeddings or tokens
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9  # sgd
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # cosine | linear | constant, after linear warm-up
    warmup_steps: int = -1  # -1: warmup_fraction of the run
    warmup_fraction: float = 0.05
    end_lr_fraction: float = 0.0  # the schedule ends at lr * this
    clip_norm: float = 1.0  # global-norm clipping (0 = off)
    label_smoothing: float = 0.0
    loss: Literal["softmax", "sigmoid"] = "softmax"  # softmax | sigmoid (the paper's ImageNet-21k / JFT pre-training)
    ema: float = 0.0  # Polyak / EMA decay of the weights (0 = off); evaluation uses the average


@dataclass
class TrainConfig:
    epochs: float = 10.0  # used when steps == 0
    steps: int = 0
    batch_size: int = 128  # global batch; reached by accumulation when micro_batch_size is smaller
    micro_batch_size: int = 0  # 0: = batch_size
    # auto: bf16 where native, fp16 + scaler on older GPUs, else fp32 (resolved and saved)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto (the GPU when there is one: cuda:LOCAL_RANK under torchrun; else the CPU) | cpu | cuda | cuda:N | mps
    tf32: bool = True  # fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later GPUs); false: exact fp32
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0  # steps between validations (0: once per epoch)
    ckpt_every: int = 0  # steps between checkpoints (0: once per epoch)
    eval_batch_size: int = 512
    compile: bool = False
    threads: int = 0  # torch threads (0: leave torch's default)
    progress: bool = True
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp (replicas) | fsdp (FSDP2: parameters, gradients, optimizer state sharded)
    time_limit_s: float = 0.0  # end training (then checkpoint and evaluate as usual) once this much training time has passed
    stop_at_step: int = 0  # end this process after this step, with a checkpoint; continue with --resume (scheduler time slices)
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


@dataclass
class MppConfig:
    """Masked patch prediction (paper section 4.6, appendix B.1.2); used when objective == "mpp"."""

    rate: float = 0.5  # fraction of patch embeddings corrupted
    mask_frac: float = 0.8  # of the corrupted: replaced by the learnable [mask] embedding
    random_frac: float = 0.1  # of the corrupted: replaced by a random other patch's embedding (the rest kept)
    bits: int = 3  # colour bits per channel of the target (3: 512 classes for RGB, 8 for grayscale)
    target: Literal["mean", "mean4x4", "l2"] = "mean"  # mean: the patch's mean colour | mean4x4: 4 x 4 downsized, 16 x 512 | l2: regress the patch


@dataclass
class Config:
    recipe: str = "quickstart"
    objective: Literal["classification", "mpp"] = "classification"  # classification | mpp (masked patch prediction)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mpp: MppConfig = field(default_factory=MppConfig)

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


def _choices(annotation: Any) -> tuple | None:
    """The allowed values of a Literal[...] (or Literal[...] | None) annotation, else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def check_choice(key: str, value: Any, annotation: Any) -> None:
    """A string option outside its choices is refused with the choices (`validate`, before anything is written)."""
    choices = _choices(annotation)
    if choices is not None and value is not None and value not in choices:
        raise ValueError(f"{key}={value!r}: choose one of {', '.join(map(str, choices))}")


def _coerce(text: str, annotation: Any, key: str) -> Any:
    """Parse a --set value for a field annotated `annotation` (str, int, float, bool, Literal, X | None)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null"):
            return None
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return text
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            return int(float(text)) if float(text).is_integer() else int(text)
        if annotation is float:
            return float(text)
    except ValueError:
        raise ValueError(f"--set {key}={text}: expected {getattr(annotation, '__name__', annotation)}") from None
    return text


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply `a.b=value` overrides in place; an unknown key is an error listing the valid ones."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    valid = valid_keys(cfg)
    for key, value in items:
        if key not in valid:
            close = [k for k in valid if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(valid)}")
        *path, leaf = key.split(".")
        obj = cfg
        for part in path:
            obj = getattr(obj, part)
        ftype = typing.get_type_hints(type(obj))[leaf]
        setattr(obj, leaf, _coerce(value, ftype, key) if isinstance(value, str) else value)
    return cfg


def _split(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"--set {text!r}: write key=value, e.g. --set optim.lr=3e-3")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from its JSON form (e.g. a run's config.json), checking every key."""
    cfg = Config()
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str = "") -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(d)
    return apply_overrides(cfg, flat)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        return config_from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def validate(cfg: Config) -> Config:
    """Every choice of `cfg` checked (string options against their Literal choices, the dataset and model names), so
    that a bad config is refused before a run directory exists; returns `cfg`."""
    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                check_choice(f"{prefix}{f.name}", value, hints[f.name])

    walk(cfg, "")
    from vitkit.data.datasets import check_source
    from vitkit.models.registry import model_config

    check_source(cfg.data.name, "data.name")
    if cfg.model.init:  # the architecture is the checkpoint's; model.name only records what it is
        return cfg
    try:
        model_config(cfg.model.name)
    except (KeyError, ValueError) as err:
        raise ValueError(f"model.name={cfg.model.name!r}: {str(err).strip(chr(39))}") from None
    return cfg
