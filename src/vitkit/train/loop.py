"""The training loop: one visible function, `train`, and the step it repeats, `train_step`."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vitkit import progress, runtime
from vitkit.convert.card import ModelCard
from vitkit.data.preprocess import Preprocess
from vitkit.errors import VitkitError
from vitkit.config import Config
from vitkit.config import validate as validate_config
from vitkit.data.datasets import Dataset, describe_dataset, load_dataset
from vitkit.data.loader import StepBatches, detection_stream, eval_stream, step_seed, to_device, train_stream
from vitkit.data.masks import DenseDataset
from vitkit.models.fast import accelerate
from vitkit.models.registry import create_model
from vitkit.objectives import build_objective
from vitkit.train import distributed
from vitkit.train.checkpoint import load_checkpoint, save_checkpoint
from vitkit.rundir import RunDir, RunLock
from vitkit.train.metrics import MetricsLogger, plot_curves
from vitkit.train.optim import build_optimizer, build_schedule
from vitkit.train.precision import autocast, configure_matmul, grad_scaler, resolve


def build_model(cfg: Config, ds: Dataset | DenseDataset) -> nn.Module:
    """From scratch by name, or from any checkpoint (`model.init`) with a new zero-initialised head
    and position embeddings resampled to the data's resolution; for segmentation, an encoder with a segmentation
    head (`_segmentation_model`)."""
    m = cfg.model
    if cfg.objective == "segmentation":
        return _segmentation_model(cfg, ds)
    if cfg.objective == "detection":
        return _detection_model(cfg, ds)
    if cfg.objective == "multitask":
        return _multitask_model(cfg, ds)
    if m.init:
        from vitkit.convert.load import load, read_arch
        from vitkit.evaluate.run import warn_class_names

        headed = read_arch(m.init) in ("segmentation", "detection", "multitask")  # its encoder: its own heads left aside
        model, card = load(m.init, num_classes=None if headed else ds.num_classes, image_size=cfg.data.image_size,
                           drop_pre_logits=True, **_dropouts(m))
        if headed:  # a segmentation, detection or multitask run's encoder, a new classifier
            model = model.encoder
            model.reset_head(ds.num_classes, zero=True)
            print(f"{m.init}: its encoder with a new zero-initialised {ds.num_classes}-class head", file=sys.stderr)
        elif m.zero_head and hasattr(model, "reset_head"):  # a new zero-initialised head, as section 3.2 fine-tunes
            model.reset_head(ds.num_classes, zero=True)
            print(f"{m.init}: a new zero-initialised {ds.num_classes}-class head (model.zero_head=true)", file=sys.stderr)
        else:  # as many classes: the head is kept (as timm and transformers keep it), named otherwise: a warning
            warn_class_names(m.init, card.class_names, ds.classes)
    else:
        # a self-supervised encoder has no classifier: finetune/fewshot put their own on its features
        k = ds.num_classes if cfg.objective == "classification" else 0
        model = create_model(m.name, num_classes=k, image_size=cfg.data.image_size, in_chans=ds.channels, **m.overrides())
    return model


def _segmentation_model(cfg: Config, ds: DenseDataset) -> nn.Module:
    """An encoder with cfg.segmentation's head of the data's classes: the encoder from scratch (no classifier), or
    model.init's (a classifier's, its head dropped; a segmentation run's, its head kept when it is the one asked for
    and model.zero_head is not set), its position embeddings resampled to data.image_size."""
    from vitkit.heads.segmentation import SegmentationModel
    from vitkit.objectives.segmentation import check_encoder

    m, s, k = cfg.model, cfg.segmentation, ds.num_classes
    if not m.init:
        encoder = create_model(m.name, num_classes=0, image_size=cfg.data.image_size, in_chans=ds.channels, **m.overrides())
        return SegmentationModel(encoder, k, s.head, s.channels, s.norm)
    from vitkit.convert.load import load
    from vitkit.evaluate.run import warn_class_names

    model, card = load(m.init, image_size=cfg.data.image_size, drop_pre_logits=True, **_dropouts(m))
    if isinstance(model, SegmentationModel):
        c = model.config
        if (c.head, c.channels, c.norm, c.num_classes) == (s.head, s.channels, s.norm, k) and not m.zero_head:
            warn_class_names(m.init, card.class_names, ds.classes)
            return model
        encoder = model.encoder
    else:
        # a detector's or a multitask model's: its encoder
        encoder = model.encoder if getattr(model.config, "arch", None) in ("detection", "multitask") else model
        check_encoder(encoder.config, f"model.init={m.init!r}")
    print(f"{m.init}: its encoder with a new {s.head} segmentation head of {k} classes", file=sys.stderr)
    return SegmentationModel(encoder, k, s.head, s.channels, s.norm)


def _dropouts(m: Any) -> dict[str, Any]:
    """model.init's architecture is the checkpoint's; only these are set on it (config.INIT_KEEPS)."""
    return {k: v for k, v in m.overrides().items() if k in ("dropout", "attn_dropout", "drop_path")}


def _detection_model(cfg: Config, ds: DenseDataset) -> nn.Module:
    """A ViTDet-style detector (heads/detection.py) of the data's classes (the background counts), cfg.detection's
    kind and pyramid: on an encoder from scratch (no classifier), or model.init's (a classifier's, its head dropped;
    a segmentation run's encoder; a detection run's detector, kept whole when it is the one asked for and
    model.zero_head is not set, else its encoder), its position embeddings resampled to data.image_size."""
    from vitkit.heads.detection import build_detector
    from vitkit.objectives.detection import check_setup, detector_kwargs

    m, k, kwargs = cfg.model, ds.num_classes, detector_kwargs(cfg)
    if not m.init:
        encoder = create_model(m.name, num_classes=0, image_size=cfg.data.image_size, in_chans=ds.channels, **m.overrides())
        return build_detector(encoder, k, **kwargs)
    from vitkit.convert.load import load
    from vitkit.evaluate.run import warn_class_names

    model, card = load(m.init, image_size=cfg.data.image_size, drop_pre_logits=True, **_dropouts(m))
    arch = getattr(model.config, "arch", None)
    if arch == "detection":
        wanted = {**kwargs, "num_classes": k, "scales": list(kwargs["scales"]),
                  "anchor_sizes": None if kwargs["anchor_sizes"] is None else list(kwargs["anchor_sizes"])}
        if model.spec == wanted and not m.zero_head:
            warn_class_names(m.init, card.class_names, ds.classes)
            return model
    encoder = model.encoder if arch in ("detection", "segmentation", "multitask") else model
    check_setup(encoder.config, cfg, f"model.init={m.init!r}")
    print(f"{m.init}: its encoder with a new {cfg.detection.kind} detector of {k - 1} classes", file=sys.stderr)
    return build_detector(encoder, k, **kwargs)


def _multitask_model(cfg: Config, ds: Any) -> nn.Module:
    """An encoder with a head per task of multitask.tasks (heads/multitask.py; a segmentation task's head is the
    segmentation section's): the encoder from scratch (no classifier), or model.init's (a classifier's, its head
    dropped; a dense or multitask run's encoder; a multitask run's model kept whole when its tasks are the ones asked
    for and model.zero_head is not set), its position embeddings resampled to data.image_size."""
    from vitkit.heads.multitask import MultitaskModel, TaskSpec
    from vitkit.objectives.segmentation import check_encoder

    m, s = cfg.model, cfg.segmentation
    specs = [TaskSpec(p.name, p.kind, list(ds.datasets[p.name].classes), p.data, s.head, s.channels, s.norm)
             for p in ds.plans]
    if not m.init:
        encoder = create_model(m.name, num_classes=0, image_size=cfg.data.image_size, in_chans=ds.channels, **m.overrides())
        return MultitaskModel(encoder, specs)
    from vitkit.convert.load import load

    model, _ = load(m.init, image_size=cfg.data.image_size, drop_pre_logits=True, **_dropouts(m))
    arch = getattr(model.config, "arch", None)
    if arch == "multitask" and [t.to_dict() for t in model.tasks] == [t.to_dict() for t in specs] and not m.zero_head:
        return model
    encoder = model.encoder if arch in ("detection", "segmentation", "multitask") else model
    check_encoder(encoder.config, f"model.init={m.init!r}", "multitask")
    print(f"{m.init}: its encoder with new heads for {', '.join(t.name for t in specs)}", file=sys.stderr)
    return MultitaskModel(encoder, specs)


@dataclass
class Batching:
    micro: int  # images per forward/backward on this rank
    accum: int  # micro-batches per optimizer step
    per_rank: int  # images per step on this rank

    @staticmethod
    def plan(batch: int, micro: int, world: int) -> "Batching":
        """Keep the global batch fixed whatever the world size: per-rank batch and accumulation derived."""
        if batch % world:
            raise ValueError(f"train.batch_size={batch} is not divisible by the {world} processes")
        per_rank = batch // world
        micro = min(micro or per_rank, per_rank)
        if per_rank % micro:
            raise ValueError(f"per-process batch {per_rank} is not divisible by train.micro_batch_size={micro}")
        return Batching(micro, per_rank // micro, per_rank)


class TrainModule(nn.Module):
    """The model and its objective as one module, so that DDP / FSDP see (and synchronise) everything
    a step trains, the objective's own parameters included (e.g. masked patch prediction's head)."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, x, y)


def train_step(module: nn.Module, x: torch.Tensor, y: torch.Tensor | list, optimizer: torch.optim.Optimizer,
               batching: Batching, clip_norm: float, precision: str, params: list[nn.Parameter],
               scaler: torch.amp.GradScaler | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over a (per-rank) batch, in micro-batches; returns its metrics. `precision` is
    resolved ("fp32", "bf16" or "fp16"); fp16 needs `scaler` (its loss is scaled, its gradients unscaled
    before clipping, and a step with non-finite gradients is skipped)."""
    sums: dict[str, torch.Tensor] = {}
    if torch.is_tensor(y):
        ys = y.split(batching.micro)
    elif isinstance(y, dict):  # multitask's targets: tensors that share the batch's first dimension, split alike
        ys = [dict(zip(y, parts)) for parts in zip(*(v.split(batching.micro) for v in y.values()))]
    else:  # detection's: a list of per-image targets, chunked alike
        ys = [y[i:i + batching.micro] for i in range(0, len(y), batching.micro)]
    chunks = list(zip(x.split(batching.micro), ys))
    for i, (xm, ym) in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext()
        if hasattr(module, "no_sync"):  # DDP: all-reduce the gradients once, after the last micro-batch
            sync = module.no_sync() if not last else sync
        elif hasattr(module, "set_requires_gradient_sync"):  # FSDP: reduce-scatter once, likewise
            module.set_requires_gradient_sync(last)
        with sync:
            with autocast(precision, x.device.type):
                loss, metrics = module(xm, ym)
            scaled = loss / batching.accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        for k, v in {"loss": loss.detach(), **metrics}.items():
            sums[k] = sums.get(k, 0) + v.detach().float() / batching.accum
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm > 0 else float("inf"), foreach=True)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**sums, "grad_norm": grad_norm.detach()}  # tensors: turned into numbers (a device sync) at log steps only


def _oom_message(cfg: Config, model: nn.Module, dev: torch.device, batching: Batching, err: Exception) -> str:
    from vitkit.train.memory import oom_advice

    where = f"{dev} out of memory (micro-batch {batching.micro} of {batching.per_rank} per process)"
    try:
        total = torch.cuda.get_device_properties(dev).total_memory
        extra = {"in_chans": model.config.in_chans, "num_classes": model.config.num_classes, **cfg.model.overrides()}
        advice = oom_advice(cfg.model.name, cfg.data.image_size, extra, sum(p.numel() for p in model.parameters()),
                            batching.micro, batching.per_rank, total, cfg.train.activation_checkpointing)
    except Exception:  # noqa: BLE001 - the advice is best effort; the error itself must get through
        advice = "try a smaller --set train.micro_batch_size (same results, by accumulation)"
    return f"{where}: {advice}"


@dataclass
class Run:
    """A training run while it runs: everything `setup` built, used by `run_steps` and `finish`."""

    cfg: Config
    env: Any  # distributed.Env
    dev: torch.device
    run_dir: Path
    ds: Dataset | DenseDataset
    model: nn.Module
    objective: Any
    module: TrainModule
    batching: Batching
    batches: StepBatches
    total: int
    eval_every: int
    ckpt_every: int
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    schedule: Any
    step_module: nn.Module
    params: list[torch.Tensor]
    scaler: Any
    logger: MetricsLogger
    hardware: dict
    start: int
    saved: int | None = None  # the step of the last checkpoint on disk (None: none yet)
    wall_before: float = 0.0  # training seconds and images of the segments before a resume (from the checkpoint)
    images_before: int = 0
    segment: tuple[float, int] = (0.0, 0)  # this segment's start time (perf_counter) and its images so far
    lock: RunLock | None = None  # rank 0's hold on the run directory, until the run ends

    def card(self) -> ModelCard:
        """What the checkpoint records beside the weights: the preprocessing and, for a classifier, a segmentation
        model or a detector, the class names (a detector's: the background first)."""
        # a multitask model's class names are its tasks' records (heads/multitask.py TaskSpec)
        names = self.ds.classes if self.cfg.objective in ("classification", "segmentation", "detection") else None
        return ModelCard(Preprocess(self.cfg.data.image_size, self.model.config.in_chans, self.cfg.data.normalize), names)

    def export_model(self) -> nn.Module:
        """What the exported checkpoint holds: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def eval_model(self) -> nn.Module:
        """What evaluation scores: the exported model, except with an objective of its own trained parameters (masked
        patch prediction's head, masked autoencoding's decoder), which are not averaged: then the live model they were
        trained with, so that the two agree (the checkpoint still holds the EMA encoder)."""
        own = isinstance(self.objective, nn.Module) and next(self.objective.parameters(), None) is not None
        return self.model if own else self.export_model()

    def evaluate(self, split) -> dict:
        cfg, env, dev = self.cfg, self.env, self.dev
        if cfg.objective == "multitask":  # each task's batches, by task name
            from vitkit.data.multitask import multitask_eval_streams

            streams = multitask_eval_streams(split, self.ds, cfg, self.model.config.in_chans, cfg.train.eval_batch_size,
                                             cfg.data.workers, env.rank, env.world, pin_memory=dev.type == "cuda")
            with distributed.gathered(self.module):
                res = self.objective.evaluate(self.eval_model(), {n: ((to_device(x, dev), to_device(y, dev)) for x, y in b)
                                                                  for n, b in streams.items()}, cfg.train.precision)
            return self.objective.reduce_eval(res, env)
        if cfg.objective == "detection":  # uint8 images at the data's own size and their boxes: the detector resizes
            batches = detection_stream(split, cfg.train.eval_batch_size, cfg.data.workers, env.rank, env.world,
                                       pin_memory=dev.type == "cuda")
        else:
            batches = eval_stream(split, cfg.data, self.model.config.in_chans, cfg.train.eval_batch_size,
                                  workers=cfg.data.workers, rank=env.rank, world=env.world, pin_memory=dev.type == "cuda")
        with distributed.gathered(self.module):  # FSDP: full parameters for the whole evaluation, however many batches a rank has
            res = self.objective.evaluate(self.eval_model(), ((to_device(x, dev), to_device(y, dev)) for x, y in batches),
                                          cfg.train.precision)
        res = getattr(self.objective, "reduce_eval", distributed.reduce_eval)(res, env)  # segmentation: confusion summed
        # dicts: per-class scores by name; None: a score with nothing to score (COCO's -1, detection's map_small...)
        return {k: v for k, v in res.items() if v is None or isinstance(v, (int, float, dict))}

    def validate(self, step: int) -> dict:
        res = self.evaluate(self.ds.val)
        self.logger.log(step, "val", self.log_row(res))
        return res

    def log_row(self, res: dict) -> dict:
        """Evaluation results as the metrics log holds them (a multitask run's: each task's flattened, NAME/KEY)."""
        return getattr(self.objective, "log_row", dict)(res)

    def diverged(self, step: int, what: str) -> "Diverged":
        """The one-line error of a run whose loss or weights stopped being finite at `step`."""
        cfg = self.cfg
        causes = [f"a learning rate too high (optim.lr={cfg.optim.lr:g})"]
        if cfg.train.precision == "fp16":
            causes.append("fp16 overflow (try train.precision=bf16 or fp32)")
        causes.append("bad data (non-finite inputs)")
        kept = (f"checkpoint/ keeps step {self.saved}, the last with finite weights" if self.saved is not None
                else "no checkpoint was written")
        return Diverged(f"training diverged at step {step}: {what}; likely {', '.join(causes[:-1])} or {causes[-1]}; {kept}; "
                        f"start again with a lower optim.lr: `vitkit train --config {self.run_dir / RunDir.CONFIG} "
                        f"--set optim.lr=... --out NEW_DIR`")

    def weights_finite(self) -> bool:
        """Every trained and averaged weight finite, on every rank (one device sync, one all-reduce)."""
        tensors = [p.detach() for p in self.module.parameters()]
        if self.ema is not None:
            tensors += [p.detach() for p in self.ema.module.parameters()]
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]  # FSDP: this rank's shards
        bad = float(torch.stack([~torch.isfinite(t).all() for t in local]).any()) if local else 0.0
        return distributed.reduce_metrics({"bad": bad}, self.env)["bad"] == 0

    def checkpoint(self, step: int) -> None:
        """Never a checkpoint of non-finite weights: the last good one stays in place."""
        if not self.weights_finite():
            raise self.diverged(step, "the weights are no longer finite (NaN or infinity)")
        state = {"step": step, "schedule": self.schedule.state_dict(), "rng": torch.get_rng_state(),
                 "ema_n": int(self.ema.n_averaged) if self.ema is not None else 0, "world": self.env.world,
                 "parallel": self.cfg.train.parallel, "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "train_wall_s": self.wall_before + time.perf_counter() - self.segment[0],
                 "train_images": self.images_before + self.segment[1]}
        save_checkpoint(self.run_dir, self.module, self.optimizer, self.ema.module if self.ema is not None else None, state,
                        self.card(), self.env)
        self.saved = step

    def release(self) -> None:
        """Whatever way the run ends: the TensorBoard writer closed, the run directory unlocked."""
        self.logger.close()
        if self.lock is not None:
            self.lock.release()


class Diverged(VitkitError, RuntimeError):
    """The loss or the weights stopped being finite; the message names the step, the likely causes and the
    checkpoint kept."""


def train(cfg: Config, out: str | Path | None = None, resume: str | Path | None = None,
          overrides: list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train as `cfg` says; write the run directory (`overwrite`: an existing run directory at `out` is replaced);
    return the final metrics (metrics.json). On resume, `overrides` may change only vitkit.rundir.RESUME_KEYS
    (e.g. a run from 2 FSDP processes continued in one)."""
    run = setup(cfg, out, resume, overrides, overwrite)
    try:
        stop, wall, seen = run_steps(run)
        return finish(run, stop, wall, seen)
    finally:
        run.release()


def setup(cfg: Config, out: str | Path | None = None, resume: str | Path | None = None,
          overrides: list[str] | None = None, overwrite: bool = False) -> Run:
    """Everything a run needs, checked before anything is written: the config (validated), the device, then the
    run directory (new, or the resumed one with its config; held by rank 0 until the run ends, RunDir.lock), data,
    model, objective, optimizer, checkpoint state."""
    if resume:
        rundir, cfg = RunDir.resume(resume, overrides)
        run_dir = rundir.path
    validate_config(cfg)  # every choice checked: a bad config is an error before anything is written
    # the device next: one that is not there is an error before anything is written
    env = distributed.setup(cfg.train.device)
    dev = distributed.device(env)
    # "auto" -> what this hardware does natively, recorded in config.json; a resumed run's value is checked here
    cfg.train.precision = resolve(cfg.train.precision, dev, "train.precision")
    threads = cfg.train.threads or runtime.default_threads()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    configure_matmul(cfg.train.precision, dev, cfg.train.tf32)
    # a dense task's data and model are read before the run directory exists: what only reading them finds (a folder's
    # masks against its classes and ignore index, too few images to carve validation, model.init's architecture) is
    # an error before anything is written
    early = _data_and_model(cfg) if cfg.objective in ("segmentation", "detection", "multitask") else None
    reads: tuple = (cfg.model.init, cfg.data.name, cfg.data.data_dir)  # what --force must not remove
    if cfg.objective == "multitask":  # every task's quota fillable and divisible among the ranks; its data kept
        from vitkit.data.multitask import check_batches

        check_batches(early[0], cfg.train.batch_size, env.world)
        reads += tuple(p.data.split(":", 1)[1] for p in early[0].plans if ":" in p.data)
    if not resume:
        run_dir = RunDir.new(out, cfg.recipe, replace=overwrite, keep=reads).path if env.is_main else Path(out or "")
        run_dir = distributed.broadcast_path(run_dir, env)
    lock = RunDir(run_dir).lock() if env.is_main else None  # one process at a time in a run directory, until the run ends
    try:
        if env.is_main and not resume:
            RunDir(run_dir).write_config(cfg)
        elif env.is_main:  # repaired (a checkpoint left aside by a kill) and cleaned by rank 0 before any rank reads it
            RunDir(run_dir).last_checkpoint(repair=True)
            RunDir(run_dir).remove_stale()
        distributed.barrier(env)
        return _build(cfg, env, dev, run_dir, bool(resume), lock, early)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _data_and_model(cfg: Config) -> tuple[Dataset | DenseDataset, nn.Module]:
    """The data and the model (at the seed setup has set); a dense task's are read before the run directory exists."""
    if cfg.objective in ("segmentation", "detection"):  # images with masks or boxes: canvas, seg:PATH or coco:PATH
        from vitkit.data.dense import load_dense

        ds = load_dense(cfg.data, cfg.objective)
    elif cfg.objective == "multitask":  # every task's dataset
        from vitkit.data.multitask import load_multitask
        from vitkit.objectives.multitask import parse_tasks

        ds = load_multitask(cfg, parse_tasks(cfg.multitask))
    else:
        ds = load_dataset(cfg.data)
    return ds, build_model(cfg, ds)


def _build(cfg: Config, env: distributed.Env, dev: torch.device, run_dir: Path, resume: bool, lock: RunLock | None,
           early: tuple[Dataset | DenseDataset, nn.Module] | None = None) -> Run:
    """setup's second half, once the run directory is this run's: data and model (unless setup read them, `early`),
    objective, optimizer, checkpoint state."""
    hardware = runtime.describe() if env.is_main else {}
    ds, model = early or _data_and_model(cfg)
    objective = build_objective(cfg, model, ds.classes)
    module = TrainModule(model, objective)
    batching = Batching.plan(cfg.train.batch_size, cfg.train.micro_batch_size, env.world)
    # in-memory data lives and is augmented on the training device (whole batches; draws on the CPU generator)
    where = dev if cfg.data.workers <= 0 else "cpu"
    if cfg.objective == "multitask":  # every batch a quota of each task's images
        from vitkit.data.multitask import MultitaskBatches

        batches = MultitaskBatches(ds, cfg, model.config.in_chans, cfg.train.batch_size, cfg.train.seed, env.rank,
                                   env.world, device=where)
    else:
        batches = StepBatches(ds.train, cfg.data, model.config.in_chans, ds.num_classes, cfg.train.batch_size,
                              cfg.train.seed, env.rank, env.world, device=where, boxes=cfg.objective == "detection")
    total = cfg.train.steps or max(1, math.ceil(cfg.train.epochs * batches.steps_per_epoch))

    module.to(dev)
    accelerate(model)  # the fast kernels that win on this machine (models/fast.py); parameters unchanged
    if cfg.train.activation_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"train.activation_checkpointing: {type(model).__name__} has no checkpointed blocks; set it to false")
        model.set_grad_checkpointing(True)
    if cfg.optim.ema > 0 and cfg.train.parallel == "fsdp" and env.active:
        raise ValueError("optim.ema with train.parallel=fsdp: the averaged copy would not be sharded; "
                         "use train.parallel=ddp or optim.ema=0")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema), use_buffers=True) if cfg.optim.ema > 0 else None
    wrapped = distributed.wrap(module, env, cfg.train.parallel, cfg.train.precision)  # FSDP shards `module` in place
    optimizer = build_optimizer(module, cfg.optim)  # after sharding: FSDP's optimizer holds only this rank's shards
    schedule = build_schedule(optimizer, cfg.optim, total)
    start = 0
    scaler = grad_scaler(cfg.train.precision, dev)
    fresh = resume and RunDir(run_dir).killed_before_first_checkpoint()
    resumed = resume and not fresh
    if fresh and env.is_main:
        print(f"vitkit train: {run_dir} has no checkpoint yet (stopped before its first): starting it again from step 0 "
              f"with its {RunDir.CONFIG}")
    if resumed:
        exported, state = load_checkpoint(run_dir, module, optimizer)
        schedule.load_state_dict(state["schedule"])
        if ema is not None:
            ema.module.load_state_dict(exported)
            ema.n_averaged.fill_(state["ema_n"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    step_module = torch.compile(wrapped) if cfg.train.compile else wrapped
    params = [p for p in module.parameters() if p.requires_grad]

    run = Run(cfg, env, dev, run_dir, ds, model, objective, module, batching, batches, total,
              cfg.train.eval_every or batches.steps_per_epoch, cfg.train.ckpt_every or batches.steps_per_epoch, ema, optimizer,
              schedule, step_module, params, scaler, MetricsLogger(run_dir, enabled=env.is_main, resume_step=start if resume else None),
              hardware, start, saved=start if resumed else None,
              wall_before=float(state.get("train_wall_s", 0.0)) if resumed else 0.0,
              images_before=int(state.get("train_images", 0)) if resumed else 0, lock=lock)
    if env.is_main:
        print(f"vitkit train: {cfg.recipe} -> {run_dir}")
        if cfg.objective == "multitask":
            from vitkit.data.multitask import describe_multitask

            described = describe_multitask(ds, batches.shares)
        else:
            described = describe_dataset(ds)
        print(f"  data: {described}" + "".join(f"\n  note: {n}" for n in ds.notes))
        print(f"  model: {getattr(model.config, 'name', None) or cfg.model.name}, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"{cfg.data.image_size} px, {model.config.in_chans} channel(s)")
        print(f"  {total} steps of {cfg.train.batch_size} images ({total / batches.steps_per_epoch:.1f} epochs), "
              f"{env.world} process(es) x {batching.accum} micro-batch(es) of {batching.micro}" + (f", resuming at step {start}" if start else ""))
        print(f"  precision: {cfg.train.precision}" + (" (fp16 with a gradient scaler)" if scaler is not None else "")
              + f"; {dev}, {torch.get_num_threads()} thread(s): {runtime.summary(hardware)}")
    return run


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which checkpoint was kept and how to continue."""


def run_steps(r: Run) -> tuple[int, float, int]:
    """The training steps from r.start: validation and checkpoints on their schedule, the progress bar, the time
    limit (which shortens r.total) and stop_at_step. Returns (the step it stopped after, training seconds, images)."""
    cfg, env, dev = r.cfg, r.env, r.dev
    bar = progress.bar(total=r.total, initial=r.start, desc="train", unit="step", leave=True, enabled=cfg.train.progress and env.is_main)
    t0, seen, last_val = time.perf_counter(), 0, None
    r.segment = (t0, 0)
    r.model.train()
    stream = train_stream(r.batches, r.start, r.total, cfg.data.workers, pin_memory=dev.type == "cuda")
    shown: dict[str, float] = {}
    stop = min(r.total, cfg.train.stop_at_step) if cfg.train.stop_at_step > r.start else r.total
    main_metric = r.objective.main_metric
    step = r.start
    try:
        for step in range(r.start, stop):
            x, y = next(stream)
            x, y = to_device(x, dev), to_device(y, dev)
            torch.manual_seed(step_seed(cfg.train.seed, step, salt=3 + env.rank))  # dropout, stochastic depth
            metrics = train_step(r.step_module, x, y, r.optimizer, r.batching, cfg.optim.clip_norm, cfg.train.precision,
                                 r.params, r.scaler)
            metrics["lr"] = r.schedule.get_last_lr()[0]
            r.schedule.step()
            if r.ema is not None:
                r.ema.update_parameters(r.model)
            seen += len(x) * env.world
            r.segment = (t0, seen)
            done = step + 1
            if done % cfg.train.log_every == 0 or done == r.total:
                metrics = distributed.reduce_metrics({k: float(v) for k, v in metrics.items()}, env)
                if hasattr(r.objective, "step_metrics"):  # multitask: per-task means from the step's weighted sums
                    metrics = r.objective.step_metrics(metrics)
                metrics["img_per_s"] = seen / (time.perf_counter() - t0)
                metrics["epoch"] = done / r.batches.steps_per_epoch
                r.logger.log(done, "train", metrics)
                if not math.isfinite(metrics["loss"]):  # checked where the metrics are numbers anyway: no extra sync
                    raise r.diverged(done, f"the training loss is {metrics['loss']}")
                shown = metrics
            if done % r.eval_every == 0 and done != r.total and len(r.ds.val):
                last_val = r.validate(done)
            if (done % r.ckpt_every == 0 or done == stop) and done != r.total:
                r.checkpoint(done)
            if shown:  # the last logged step's numbers: no device sync per step
                bar.set_postfix(loss=f"{shown['loss']:.3f}", acc=f"{shown.get('acc', float('nan')):.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                                val=f"{last_val[main_metric]:.3f}" if last_val else "-", refresh=False)
            bar.update(1)
            if cfg.train.time_limit_s:
                over = time.perf_counter() - t0 >= cfg.train.time_limit_s
                if env.active:  # rank 0's clock decides, so that every rank stops after the same step
                    flag = torch.tensor([float(over)], device=distributed.comm_device())
                    torch.distributed.broadcast(flag, 0)
                    over = bool(flag.item())
                if over:
                    if env.is_main:
                        print(f"time limit: stopping after step {done} of {r.total} ({cfg.train.time_limit_s:g} s of training)")
                    r.total = stop = done
                    break
    except torch.OutOfMemoryError as err:
        raise MemoryError(_oom_message(cfg, r.model, dev, r.batching, err)) from None
    except KeyboardInterrupt:
        kept = (f"the last checkpoint is at step {r.saved}: continue with `vitkit train --resume {r.run_dir}`" if r.saved is not None
                else f"no checkpoint was written yet (the first comes at step {r.ckpt_every}): `vitkit train --resume {r.run_dir}` "
                     f"starts it again from step 0")
        raise Interrupted(f"interrupted during step {step + 1}; {kept}") from None
    finally:
        bar.close()
    return stop, time.perf_counter() - t0, seen


def _compute(model_cfg: Any, image_size: int, seen: int, objective: Any = None) -> dict[str, Any]:
    """The training compute of a run (the paper's Figure 5 axis): forward + backward FLOPs of one image at the training
    resolution (models/registry.py train_flops: the model's; an objective's own small head, e.g. masked patch
    prediction's, is not counted) times the images the steps saw, across resumes. An objective that changes what the
    model computes (masked autoencoding: the encoder on the visible patches, a decoder) counts itself (`train_flops`)."""
    from vitkit.models.registry import train_flops

    count = getattr(objective, "train_flops", None) or train_flops
    try:
        per_image = count(model_cfg, image_size)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:  # an op without a meta kernel: no count
        return {"error": f"not counted ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"}
    counted = getattr(objective, "flops_counted", "forward + backward of the model per image (torch FlopCounterMode), x images seen")
    return {"train_flops": per_image * seen, "exaflops": per_image * seen / 1e18, "flops_per_image": per_image,
            "images_seen": seen, "counted": counted}


def finish(r: Run, stop: int, wall: float, seen: int) -> dict[str, Any]:
    """After the steps: a run stopped early (stop_at_step) checkpoints and says how to continue; a finished one
    checkpoints, evaluates validation and test, writes metrics.json and curves.png."""
    cfg, env, total = r.cfg, r.env, r.total
    if stop < total:
        r.logger.close()
        if env.is_main:
            RunDir(r.run_dir).remove_stale()
            print(f"stopped at step {stop} of {total} (train.stop_at_step); continue with `vitkit train --resume {r.run_dir}`")
        distributed.teardown(env)
        return {"recipe": cfg.recipe, "steps": stop, "stopped": True, "run_dir": str(r.run_dir)}
    if r.saved != total:  # a run resumed after its last step (killed while evaluating) has it already
        r.checkpoint(total)
    if env.is_main:
        RunDir(r.run_dir).remove_stale()
    main_metric = r.objective.main_metric
    wall, seen = r.wall_before + wall, r.images_before + seen  # the whole run, across resumes
    results: dict[str, Any] = {"recipe": cfg.recipe, "steps": total, "epochs": total / r.batches.steps_per_epoch,
                               "train_wall_s": wall, "train_img_per_s": seen / wall if wall > 0 else 0.0,
                               "precision": cfg.train.precision, "hardware": r.hardware}
    results["compute"] = _compute(r.model.config, cfg.data.image_size, seen, r.objective)
    for split_name, split in (("val", r.ds.val), ("test", r.ds.test)):
        if len(split):
            results[split_name] = r.evaluate(split)
    if "val" in results:
        r.logger.log(total, "val", {k: v for k, v in r.log_row(results["val"]).items() if k != "n"})
    r.logger.close()
    if env.is_main:
        RunDir(r.run_dir).write_metrics(results)
        plot_curves(r.run_dir, f"{cfg.recipe}: {getattr(r.model.config, 'name', None) or cfg.model.name} on {r.ds.name}")
        if "test" in results and main_metric == "top1":
            print(f"test top-1 {results['test']['top1']:.4f}  top-5 {results['test']['top5']:.4f}  "
                  f"({results['test']['n']} images; {wall:.0f} s of training, {results['train_img_per_s']:.0f} img/s)")
        elif "test" in results and cfg.objective == "multitask":
            from vitkit.objectives.multitask import MAIN

            t = results["test"]
            parts = [f"{p.name} {MAIN[p.kind]} {t[p.name][MAIN[p.kind]]:.4f}" for p in r.objective.plans if p.name in t]
            print(f"test {', '.join(parts)} (mean {t['score']:.4f}; {t['n']} images; {wall:.0f} s of training, "
                  f"{results['train_img_per_s']:.0f} img/s)")
        elif "test" in results:
            score = results["test"].get(main_metric)  # None: nothing to score (a test split without boxes)
            print(f"test {main_metric} {'-' if score is None else f'{score:.4f}'} ({results['test']['n']} images; "
                  f"{wall:.0f} s of training, {results['train_img_per_s']:.0f} img/s)")
        print(f"run directory: {r.run_dir}")
    distributed.teardown(env)
    results["run_dir"] = str(r.run_dir)
    return results
