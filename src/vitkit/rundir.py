"""The run directory: its layout and its rules, in one place.

    RUN/
      config.json     the resolved config, written before the first step (a resumed run reads it back)
      metrics.jsonl   one line per logged step (train and val)
      metrics.json    the final results
      curves.png      loss and accuracy against steps
      checkpoint/     model.safetensors + config.json (what `load_model(RUN)` reads) and the state to resume from
      tensorboard/    when TensorBoard is installed
      .lock           while a run uses the directory: its PID and host (fcntl.flock, released when the process ends)

Rules: a new run never reuses a non-empty directory; a resumed run keeps its configuration except RESUME_KEYS
(how it runs, not what it computes); one process at a time trains in a directory (the lock); every file is written
atomically (vitkit.atomic); JSON holds no NaN or infinity (JSON has neither: they are written as null).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from vitkit.errors import VitkitError

# What a resumed run may change: how it runs, not what it computes.
RESUME_KEYS = ("train.parallel", "train.threads", "train.progress", "train.stop_at_step", "train.activation_checkpointing",
               "train.micro_batch_size", "train.eval_batch_size", "train.compile", "data.workers", "train.device", "train.tf32")


def _temporary(name: str) -> str:
    """The pattern of the temporary directory a write of `name` makes: tempfile.mkdtemp(prefix=f".{name}."), 8 random
    characters."""
    return rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}"


class RunInUse(VitkitError, FileExistsError):
    """Another process trains in this run directory (it holds the lock)."""


def finite(obj: Any) -> Any:
    """`obj` with every NaN and infinity replaced by None, in dicts, lists and tuples at any depth."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """JSON as every file of a run directory holds it: strict, non-finite numbers as null."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


class RunLock:
    """An advisory lock on a run directory (fcntl.flock on RUN/.lock, holding the owner's PID and host), held from
    set-up to the end of the run by one process (rank 0); the kernel drops it when that process dies, however it
    dies, so a lock file left by a kill is no obstacle. Windows has no flock: there the directory is not locked
    (msvcrt's byte-range locks are mandatory, a different contract)."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, path: Path) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows
            return cls(path, None)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:
                raise PermissionError(f"{path.parent}: not writable (its lock file {path.name} cannot be made); a run needs a "
                                      f"directory it can write to: copy it elsewhere and resume the copy") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "not written yet"
                os.close(fd)
                raise RunInUse(f"{path.parent} is in use by another vitkit process (PID {holder}, in {path}); wait for it "
                               f"to end or stop it, then run this again") from None
            except OSError as err:  # a file system without locks (some network mounts)
                os.close(fd)
                path.unlink(missing_ok=True)
                warnings.warn(f"{path.parent}: not locked against a second process (the file system refuses locks: "
                              f"{err.strerror}); run one process at a time there", stacklevel=2)
                return cls(path, None)
            try:  # the holder may have released and removed the file between our open and our lock: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file (while still holding the lock: a process waiting on it sees it gone and retries), then
        unlock. Idempotent."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True)
class RunDir:
    path: Path

    CONFIG: ClassVar[str] = "config.json"
    METRICS_LOG: ClassVar[str] = "metrics.jsonl"
    METRICS: ClassVar[str] = "metrics.json"
    CURVES: ClassVar[str] = "curves.png"
    CHECKPOINT: ClassVar[str] = "checkpoint"
    CHECKPOINT_OLD: ClassVar[str] = ".checkpoint.old"  # the previous checkpoint, moved aside while the next is renamed in
    STATE: ClassVar[str] = "state.pt"  # written last into a checkpoint: a checkpoint with it is complete
    TENSORBOARD: ClassVar[str] = "tensorboard"
    LOCK: ClassVar[str] = ".lock"

    @classmethod
    def new(cls, out: str | Path | None, recipe: str, replace: bool = False, keep: tuple[str | Path | None, ...] = ()) -> "RunDir":
        """A fresh run directory (default runs/RECIPE-TIME); an existing non-empty one is never reused silently:
        `replace` (--force) removes it first, and only if it is a vitkit run directory (a config.json of a run beside
        its metrics or checkpoint) that no process is using, not the working directory or one above it, and holding
        none of `keep` (the checkpoint a run starts from, its data). What a run killed as it began leaves (its lock
        file, a temporary of its config.json) counts as nothing: the run's end removes it."""
        run = Path(out) if out else Path("runs") / f"{recipe}-{datetime.now():%Y%m%d-%H%M%S}"
        begun = re.compile(rf"{re.escape(cls.LOCK)}|{_temporary(cls.CONFIG)}")
        if run.exists() and not all(begun.fullmatch(p.name) for p in run.iterdir()):
            if not replace:
                raise FileExistsError(f"{run} already exists and is not empty; continue it with `vitkit train --resume {run}`, "
                                      f"choose another --out, or pass --force to replace it")
            if not cls(run).is_run():
                raise FileExistsError(f"{run} is not a vitkit run directory (a run's {cls.CONFIG} beside its metrics or "
                                      f"checkpoint); --force replaces run directories only: choose another --out")
            here = run.resolve()
            if here == Path.cwd().resolve() or here in Path.cwd().resolve().parents:
                raise FileExistsError(f"--out {run} is the working directory or one above it; --force will not remove it")
            for path in keep:
                read = Path(str(path).removeprefix("folder:").removeprefix("seg:").removeprefix("coco:")).resolve() if path else None
                if read is not None and (read == here or here in read.parents):
                    raise FileExistsError(f"--out {run} holds {path}, which this run reads; --force will not remove it: "
                                          f"choose another --out")
            cls(run).lock().release()  # refuses a directory a run is using
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        return cls(run)

    @classmethod
    def resume(cls, path: str | Path, overrides: list[str] | None = None):
        """The run at `path` and its configuration, with `overrides` of RESUME_KEYS only applied."""
        from vitkit.config import apply_overrides, load_config

        run = cls(Path(path))
        if not run.config.exists():
            raise FileNotFoundError(f"{run.path}: not a run directory (no {cls.CONFIG}); start one with `vitkit train --out {run.path}`")
        cfg = load_config(run.config)
        for o in overrides or []:
            if o.split("=", 1)[0].strip() not in RESUME_KEYS:
                raise ValueError(f"--set {o}: a resumed run keeps its configuration; only {', '.join(RESUME_KEYS)} may change")
        return run, apply_overrides(cfg, overrides or [])

    def is_run(self) -> bool:
        """A run directory vitkit wrote: a config.json of a run (recipe, model, data, optim, train) beside metrics or a
        checkpoint (not any folder with a config.json: a Hugging Face model, a project)."""
        try:
            cfg = json.loads(self.config.read_text())
        except (OSError, ValueError):
            return False
        run_like = isinstance(cfg, dict) and {"recipe", "model", "data", "optim", "train"} <= cfg.keys()
        return run_like and any((self.path / n).exists() for n in (self.METRICS_LOG, self.CHECKPOINT, f".{self.CHECKPOINT}.old"))

    def lock(self) -> RunLock:
        """Hold this directory for one process (raises RunInUse, naming the holder, when another holds it)."""
        return RunLock.acquire(self.path / self.LOCK)

    def last_checkpoint(self, repair: bool = False) -> Path | None:
        """The last complete checkpoint: checkpoint/, or the .checkpoint.old a kill between the two renames of a
        checkpoint swap left (the new one not yet in place). `repair` (only the process holding the lock) renames it
        back to checkpoint/; readers (eval, predict, load_model) read it where it is, since moving it under a running
        training would break that run's next swap."""
        ckpt, old = self.checkpoint, self.path / self.CHECKPOINT_OLD
        if (ckpt / self.STATE).exists():
            return ckpt
        if (old / self.STATE).exists():
            if not repair:
                return old
            if ckpt.exists():
                shutil.rmtree(ckpt)
            os.replace(old, ckpt)
            return ckpt
        return None

    def remove_stale(self) -> None:
        """Remove what killed writes left: the temporary directories of this directory's own files (vitkit.atomic and
        save_checkpoint write NAME as .NAME.XXXXXXXX/out, then rename it; out/ itself may still be in its own temporary,
        .out.XXXXXXXX) and a .checkpoint.old beside a complete checkpoint. Only the process holding the lock calls this
        (rank 0, at resume and at the end), so that none of them is being written."""
        ours = re.compile("|".join(_temporary(n) for n in (self.CONFIG, self.METRICS_LOG, self.METRICS, self.CURVES, self.CHECKPOINT)))
        inside = re.compile(rf"out|{_temporary('out')}")
        for p in self.path.iterdir():
            if ours.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and all(inside.fullmatch(c.name) for c in p.iterdir()):
                shutil.rmtree(p)
        old = self.path / self.CHECKPOINT_OLD
        if old.is_dir() and not old.is_symlink() and self.last_checkpoint() == self.checkpoint:
            shutil.rmtree(old)

    def killed_before_first_checkpoint(self) -> bool:
        """Configured, never checkpointed, never finished: a run killed before its first checkpoint, which a resume
        starts again from step 0."""
        return (self.config.is_file() and self.last_checkpoint() is None and not self.checkpoint.exists()
                and not self.metrics.exists())

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_log(self) -> Path:
        return self.path / self.METRICS_LOG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    def write_config(self, cfg: Any) -> None:
        from vitkit.atomic import write_json

        write_json(self.config, cfg.to_dict())

    def write_metrics(self, results: dict) -> None:
        from vitkit.atomic import write_text

        write_text(self.metrics, to_json(results, indent=2))
