"""What `vitkit reproduce` runs: a study is a claim of the paper, the training runs that test it in miniature, how
their numbers are summarised, the rule that turns those into a verdict (verdicts.py), and a figure. A run is one
`vitkit train` (a recipe plus --set overrides), identified by its key; its directory under DIR/runs/STUDY/KEY is
reused when finished and resumed when a kill left it half-done."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitkit.reproduce.verdicts import Verdict


@dataclass(frozen=True)
class Budget:
    """How big the miniature is: `quick` (one seed by default, short runs on digits: minutes) or the full run
    (Fashion-MNIST, at least 3 seeds)."""

    quick: bool = False
    seeds: int = 0  # 0: 1 when quick, else 3

    @property
    def n_seeds(self) -> int:
        return self.seeds or (1 if self.quick else 3)

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: the recipe, its overrides, the seed, and tags saying what it measures."""

    study: str
    key: str  # unique within the study: its directory name
    recipe: str
    overrides: tuple[str, ...]
    tags: tuple[tuple[str, Any], ...] = ()  # e.g. (("arm", "vit"), ("x", 1000), ("seed", 0))
    init: str | None = None  # the key of a run of the same study whose checkpoint this one starts from
    init_dirname: str | None = None  # that run's directory name (set by the planner: plan.link)
    init_model: tuple[str, ...] = ()  # that run's model.* overrides: the architecture this one inherits (plan.link)

    @property
    def dirname(self) -> str:
        """KEY-HASH: the hash of what defines the run, so that a changed plan never reuses a run made otherwise."""
        what = json.dumps([self.recipe, list(self.overrides), self.init], sort_keys=True)
        return f"{self.key}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"

    def tag(self, name: str, default: Any = None) -> Any:
        return dict(self.tags).get(name, default)

    def all_overrides(self, root: Path) -> list[str]:
        extra = [f"model.init={run_dir(root, self.study, self.init_dirname)}"] if self.init else []
        return [*self.overrides, *extra, "train.progress=false"]


@dataclass
class Study:
    """A claim of the paper and how it is tested here (module docstring)."""

    name: str  # the --only name
    title: str
    source: str  # where the paper makes the claim
    claim: str  # the paper's claim, in its own numbers
    rule: str  # the verdict rule, in words (the function's docstring says it exactly)
    setup: Callable[[Budget], str]  # the miniature, in words
    runs: Callable[[Budget], list[RunSpec]]
    summarize: Callable[[list[tuple[RunSpec, dict]]], dict]  # the numbers, from the runs' metrics.json
    decide: Callable[[dict], Verdict]
    figure: Callable[[dict, Path], Path]
    extra: dict = field(default_factory=dict)


def run_dir(root: Path, study: str, name: str) -> Path:
    return Path(root) / "runs" / study / name


def link(runs: list[RunSpec]) -> list[RunSpec]:
    """`runs` with each `init` key resolved to its run's directory name (the run must come earlier)."""
    import dataclasses

    names: dict[str, RunSpec] = {}
    out = []
    for r in runs:
        if r.init is not None:
            if r.init not in names:
                raise ValueError(f"{r.study}/{r.key} starts from {r.init!r}, which is not an earlier run of the study")
            parent = names[r.init]
            model = (*parent.init_model, *(o for o in parent.overrides if o.startswith("model.")))
            r = dataclasses.replace(r, init_dirname=parent.dirname, init_model=model)
        names[r.key] = r
        out.append(r)
    return out


def finished(root: Path, spec: RunSpec) -> dict | None:
    """A finished run's metrics.json (reused as it is), else None."""
    path = run_dir(root, spec.study, spec.dirname) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def execute(root: Path, spec: RunSpec) -> dict:
    """Run `spec` (or continue it, when a kill left its directory half-done) and return its metrics; the run's own
    output goes to its directory's train.log, not the terminal (one progress bar covers the whole plan)."""
    from vitkit.recipes import build
    from vitkit.rundir import RunDir
    from vitkit.train.loop import train

    done = finished(root, spec)
    if done is not None:
        return done
    out = run_dir(root, spec.study, spec.dirname)
    cfg = build(spec.recipe, spec.all_overrides(root))
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            if (out / RunDir.CONFIG).exists() and RunDir(out).last_checkpoint() is not None:
                metrics = train(cfg, resume=out)
            else:
                if out.exists():  # killed before its first checkpoint: nothing to continue from
                    shutil.rmtree(out)
                out.parent.mkdir(parents=True, exist_ok=True)
                metrics = train(cfg, out=out)
    finally:
        if out.exists():
            with open(out / "train.log", "a") as f:
                f.write(log.getvalue())
    return metrics


def by_tags(results: list[tuple[RunSpec, dict]], *names: str, metric: str = "top1") -> dict:
    """Nested {tag1: {tag2: [test metric per seed]}} from the runs' results (the last level a list over seeds)."""
    out: dict = {}
    for spec, m in results:
        node = out
        for name in names[:-1]:
            node = node.setdefault(spec.tag(name), {})
        node.setdefault(spec.tag(names[-1]), []).append(float(m["test"][metric]))
    return out


def train_flops(results: list[tuple[RunSpec, dict]], **tags: Any) -> float:
    """The training FLOPs (metrics.json "compute") of the runs with these tags, averaged over seeds."""
    vals = [m["compute"]["train_flops"] for s, m in results if all(s.tag(k) == v for k, v in tags.items())]
    if not vals:
        raise ValueError(f"no finished run tagged {tags}")
    return sum(vals) / len(vals)
