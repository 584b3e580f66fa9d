"""The paper's claims as studies in miniature (plan.Study): the runs of each, how its numbers are summarised, its
verdict rule (verdicts.py) and its figure. Quick: scikit-learn's digits (shipped with vitkit) at 16 px; full:
Fashion-MNIST at 28 px. Every model is a small ViT (width 64, depth 4, 4 heads, MLP 128, global average pooling)
or a matched hybrid or ResNet."""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from vitkit.reproduce import verdicts
from vitkit.reproduce.plan import Budget, RunSpec, Study, by_tags, train_flops

RESNET = ("model.name=R50x1", "model.layers=1,1,1,1")  # a ResNet-14-like BiT: one bottleneck per stage
HYBRID = ("model.name=R+ViT-Ti/16", "model.patch_size=1")  # the ResNet root (/4), then the small ViT on its map
SMALL_VIT = ("model.width=64", "model.depth=4", "model.heads=4", "model.mlp_dim=128")


def base(b: Budget) -> tuple[str, tuple[str, ...], int]:
    """(recipe, overrides, batch size) of the small ViT every study starts from."""
    if b.quick:
        return "quickstart", ("data.val_fraction=0",), 64  # digits, 16 px, patch 2: 8 x 8 tokens
    return "fashion-mnist", (*SMALL_VIT, "data.val_fraction=0"), 128  # 28 px, patch 4: 7 x 7 tokens


def resnet(b: Budget) -> tuple[str, ...]:
    """The ResNet arm's overrides: the base's data settings, none of its ViT's architecture."""
    return ("data.val_fraction=0", *RESNET)


def run_args(steps: int, seed: int) -> tuple[str, ...]:
    """A run of `steps` steps with one checkpoint and one evaluation, at the end."""
    return (f"train.steps={steps}", f"train.seed={seed}", f"train.ckpt_every={steps}", f"train.eval_every={steps}",
            f"train.log_every={max(1, steps // 10)}")


@cache
def flops_per_image(recipe: str, overrides: tuple[str, ...]) -> int:
    """Training FLOPs of one image (forward + backward) of the model a recipe with these overrides builds, on a 10-class
    grayscale dataset (digits and Fashion-MNIST both are): counted on the meta device, nothing allocated."""
    from vitkit.models.registry import model_config
    from vitkit.models.registry import train_flops as count
    from vitkit.recipes import build

    cfg = build(recipe, list(overrides))
    return count(model_config(cfg.model.name, image_size=cfg.data.image_size, num_classes=10, in_chans=1,
                              **cfg.model.overrides()))


def steps_for(flops: float, recipe: str, overrides: tuple[str, ...], batch: int, least: int = 20) -> int:
    """The steps that spend `flops` of training compute on this model (equal compute across arms)."""
    return max(least, round(flops / (flops_per_image(recipe, overrides) * batch)))


def _spec(study: str, arm: str, x: Any, seed: int, recipe: str, overrides: tuple[str, ...], **kw: Any) -> RunSpec:
    return RunSpec(study, f"{arm}-{x}-s{seed}".replace("/", "_"), recipe, overrides,
                   (("arm", arm), ("x", x), ("seed", seed)), **kw)


# --- plots ---------------------------------------------------------------------------------------------------------


def line_figure(series: dict[str, dict[Any, list[float]]], path: Path, title: str, xlabel: str, logx: bool = False,
                ylabel: str = "test top-1") -> Path:
    """One line per arm: mean over seeds with the spread as error bars."""
    from vitkit.figures import figure, save_png

    fig = figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, points in series.items():
        xs = sorted(points)
        stats = [verdicts.mean_spread(points[x]) for x in xs]
        ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=f"{ylabel} [%]")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def bar_figure(bars: dict[str, list[float]], path: Path, title: str, ylabel: str = "test top-1") -> Path:
    """One bar per arm: mean over seeds, the spread as an error bar, each seed as a dot."""
    from vitkit.figures import figure, save_png

    fig = figure(figsize=(6, 4))
    ax = fig.subplots()
    names = list(bars)
    stats = [verdicts.mean_spread(bars[n]) for n in names]
    ax.bar(names, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], capsize=4, color="#7aa6c2")
    for i, n in enumerate(names):
        ax.plot([i] * len(bars[n]), [100 * v for v in bars[n]], "k.", alpha=0.6)
    lo = min(min(v) for v in bars.values())
    ax.set_ylim(max(0, 100 * lo - 10), 100)
    ax.set(title=title, ylabel=f"{ylabel} [%]")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


# --- 1. data size vs inductive bias ----------------------------------------------------------------------------------


def _sizes(b: Budget) -> list[int]:
    return b.pick([100, 300, 898], [1000, 5000, 20000, 60000])


def _images_seen(b: Budget, n: int) -> int:
    """The ViT's training images per size: enough epochs on the small sets, a few on the large ones."""
    if b.quick:
        return min(max(20 * n, 2000), 18000)
    return {1000: 8000, 5000: 16000, 20000: 32000}.get(n, 64000)  # 8 epochs of 1k down to one of 60k


def data_size_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    out = []
    for n in _sizes(b):
        budget = _images_seen(b, n) * flops_per_image(recipe, common)  # the ViT's compute at this size, for every arm
        for arm, over in (("vit", common), ("resnet", resnet(b)), ("hybrid", (*common, *HYBRID))):
            over = (*over, f"data.train_subset={n}")
            steps = steps_for(budget, recipe, over, batch)
            out += [_spec("data-size", arm, n, s, recipe, over + run_args(steps, s)) for s in range(b.n_seeds)]
    return out


def data_size_summary(results: list) -> dict:
    return {"acc": by_tags(results, "arm", "x")}


DATA_SIZE = Study(
    name="data-size", title="Data size vs inductive bias", source="section 4.2-4.3, figures 3 and 4",
    claim=("ResNets do better on smaller pre-training sets, ViT overtakes them as data grows: on ImageNet-1k BiT beats "
           "ViT-B/L, on ImageNet-21k they are alike, on JFT-300M ViT-L/16 and H/14 win (figure 3); on 9M / 30M / 90M / "
           "300M JFT subsets the ViT-ResNet gap grows with size (figure 4)."),
    rule=verdicts.data_size.__doc__,
    setup=lambda b: (f"training sets of {', '.join(map(str, _sizes(b)))} {'digits' if b.quick else 'Fashion-MNIST'} "
                     f"images; a small ViT, a ResNet (one bottleneck per stage) and a hybrid (ResNet root + the ViT), "
                     f"each given the ViT's training compute at each size (steps from counted FLOPs); test top-1 on the "
                     f"full test set; {b.n_seeds} seed(s)."),
    runs=data_size_runs, summarize=data_size_summary,
    decide=lambda n: verdicts.data_size(n["acc"]["vit"], n["acc"]["resnet"]),
    figure=lambda n, p: line_figure(n["acc"], p, "Test top-1 vs training-set size (equal compute per size)",
                                    "training images", logx=True),
)


# --- 2. performance vs compute ---------------------------------------------------------------------------------------


def _budgets(b: Budget) -> list[int]:
    """Training images of the small ViT that set each compute budget."""
    return b.pick([2000, 6000, 18000], [6000, 18000, 54000])


def compute_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    arms = {"ViT": common, "ViT (depth 8)": (*common, "model.depth=8"), "hybrid": (*common, *HYBRID), "ResNet": resnet(b)}
    out = []
    for images in _budgets(b):
        flops = images * flops_per_image(recipe, common)
        for arm, over in arms.items():
            steps = steps_for(flops, recipe, over, batch)
            out += [_spec("compute", arm, images, s, recipe, over + run_args(steps, s)) for s in range(b.n_seeds)]
    return out


def compute_summary(results: list) -> dict:
    acc = by_tags(results, "arm", "x")
    flops = {arm: {x: train_flops(results, arm=arm, x=x) for x in pts} for arm, pts in acc.items()}
    # the figure's x: each run's own training FLOPs, counted (equal across arms within a budget, up to whole steps)
    by_flops = {arm: {flops[arm][x]: v for x, v in pts.items()} for arm, pts in acc.items()}
    return {"acc": acc, "train_flops": flops, "acc_by_flops": by_flops}


COMPUTE = Study(
    name="compute", title="Performance vs training compute", source="section 4.4, figure 5",
    claim=("ViT uses about 2-4x less compute than ResNets for the same transfer accuracy; hybrids slightly beat ViT at "
           "small compute budgets, and the difference vanishes for larger models (figure 5)."),
    rule=verdicts.compute_frontier.__doc__,
    setup=lambda b: (f"three compute budgets ({', '.join(f'{i:,}' for i in _budgets(b))} training images of the small "
                     f"ViT), each spent by a small ViT, a deeper ViT, a hybrid and a ResNet (steps from counted FLOPs); "
                     f"training FLOPs read back from each run's metrics.json; {b.n_seeds} seed(s)."),
    runs=compute_runs, summarize=compute_summary,
    decide=lambda n: verdicts.compute_frontier({float(k): v for k, v in n["acc"]["hybrid"].items()},
                                               {float(k): v for k, v in n["acc"]["ViT"].items()}),
    figure=lambda n, p: line_figure({a: {float(k): v for k, v in pts.items()} for a, pts in n["acc_by_flops"].items()},
                                    p, "Test top-1 vs training compute", "training FLOPs (counted)", logx=True),
)


# --- 3. scaling dimensions -------------------------------------------------------------------------------------------


def _dims(b: Budget) -> dict[str, tuple[str, ...]]:
    patch = b.pick("model.patch_size=1", "model.patch_size=2")  # half the base's patch
    return {"base": (), "depth": ("model.depth=8",), "width": ("model.width=128",), "MLP": ("model.mlp_dim=256",),
            "patch": (patch,)}


def scaling_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    steps = b.pick(300, 250)
    return [_spec("scaling", dim, "x2", s, recipe, (*common, *extra) + run_args(steps, s))
            for dim, extra in _dims(b).items() for s in range(b.n_seeds)]


def scaling_summary(results: list) -> dict:
    acc = {arm: v["x2"] for arm, v in by_tags(results, "arm", "x").items()}
    return {"acc": acc, "train_flops": {arm: train_flops(results, arm=arm) for arm in acc}}


SCALING = Study(
    name="scaling", title="Scaling depth, width, MLP width and patch size", source="appendix D.2, figure 8",
    claim=("Scaling the depth gives the largest improvements (clear up to 64 layers, diminishing after 16); scaling the "
           "width gives the smallest; decreasing the patch size (a longer sequence) gives robust improvements without "
           "adding parameters, at more compute (figure 8)."),
    rule=verdicts.scaling.__doc__,
    setup=lambda b: ("the small ViT trained for the same steps with one dimension doubled at a time (depth 4 -> 8, width "
                     "64 -> 128, MLP 128 -> 256) or the patch halved; training FLOPs counted; "
                     f"{b.n_seeds} seed(s)."),
    runs=scaling_runs, summarize=scaling_summary,
    decide=lambda n: verdicts.scaling(n["acc"]["base"], n["acc"]["depth"], n["acc"]["width"], n["acc"]["MLP"],
                                      n["acc"]["patch"]),
    figure=lambda n, p: bar_figure(n["acc"], p, "One dimension doubled (patch halved) at a time"),
)


# --- 4. position embeddings ------------------------------------------------------------------------------------------

POSEMBS = {"none": "none", "1-D learned": "learned", "2-D learned": "learned2d", "relative": "relative",
           "sin-cos 2-D": "sincos2d"}


def posemb_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    steps = b.pick(300, 500)
    return [_spec("posemb", arm, kind, s, recipe, (*common, f"model.posemb={kind}") + run_args(steps, s))
            for arm, kind in POSEMBS.items() for s in range(b.n_seeds)]


POSEMB = Study(
    name="posemb", title="Position embeddings", source="appendix D.4, table 8",
    claim=("ViT-B/16 without position embeddings: 0.61382 (5-shot ImageNet linear, table 8); with 1-D, 2-D or relative "
           "embeddings 0.64206 / 0.64001 / 0.64032: no embedding is clearly worse, the kinds differ little (the model "
           "works on patches, where spatial relations are easy to learn)."),
    rule=verdicts.position_embeddings.__doc__,
    setup=lambda b: (f"the small ViT with each kind of position embedding (added after the stem; relative: in every "
                     f"layer's attention), the same steps; {b.n_seeds} seed(s)."),
    runs=posemb_runs, summarize=lambda r: {"acc": {k: v[POSEMBS[k]] for k, v in by_tags(r, "arm", "x").items()}},
    decide=lambda n: verdicts.position_embeddings(n["acc"]["none"], {k: v for k, v in n["acc"].items() if k != "none"}),
    figure=lambda n, p: bar_figure(n["acc"], p, "Position embeddings"),
)


# --- 5. class token vs global average pooling ---------------------------------------------------------------------


def _lrs(b: Budget) -> list[float]:
    return [3e-4, 1e-3, 3e-3]


def token_gap_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    steps = b.pick(300, 500)
    arms = {"token": ("model.pool=token",), "GAP": ("model.pool=gap",)}
    return [_spec("token-gap", arm, lr, s, recipe, (*common, *extra, f"optim.lr={lr}") + run_args(steps, s))
            for arm, extra in arms.items() for lr in _lrs(b) for s in range(b.n_seeds)]


TOKEN_GAP = Study(
    name="token-gap", title="Class token vs global average pooling", source="appendix D.3, figure 9",
    claim=("Class-token and global-average-pooling classifiers work equally well, but need different learning rates: "
           "at the same rate the class token does clearly worse (figure 9)."),
    rule=verdicts.token_vs_gap.__doc__,
    setup=lambda b: (f"the small ViT with a class token or GAP, each at learning rates {', '.join(map(str, _lrs(b)))}; "
                     f"{b.n_seeds} seed(s)."),
    runs=token_gap_runs, summarize=lambda r: {"acc": by_tags(r, "arm", "x")},
    decide=lambda n: verdicts.token_vs_gap({float(k): v for k, v in n["acc"]["token"].items()},
                                           {float(k): v for k, v in n["acc"]["GAP"].items()}),
    figure=lambda n, p: line_figure({a: {float(k): v for k, v in pts.items()} for a, pts in n["acc"].items()}, p,
                                    "Class token vs GAP across learning rates", "learning rate", logx=True),
)


# --- 6. higher-resolution fine-tuning --------------------------------------------------------------------------------


def _resolutions(b: Budget) -> list[int]:
    return b.pick([16, 24, 32], [28, 40, 56])


def resolution_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    common = (*common, "model.posemb=learned")  # a learned table, resampled by 2-D interpolation (section 3.2)
    pre, fine = b.pick(300, 600), b.pick(100, 150)
    out = []
    for s in range(b.n_seeds):
        out.append(RunSpec("resolution", f"pretrain-s{s}", recipe, (*common, *run_args(pre, s)),
                           (("arm", "pretrain"), ("seed", s))))
        for r in _resolutions(b):
            # the architecture is the checkpoint's: only data, optimiser and schedule settings here
            over = ("data.val_fraction=0", f"data.image_size={r}", "optim.lr=3e-4", "optim.warmup_fraction=0.1") + run_args(fine, s)
            out.append(_spec("resolution", "finetune", r, s, recipe, over, init=f"pretrain-s{s}"))
    return out


RESOLUTION = Study(
    name="resolution", title="Fine-tuning at higher resolution", source="section 3.2",
    claim=("It is often beneficial to fine-tune at higher resolution than pre-training (Touvron et al. 2019; Kolesnikov "
           "et al. 2020): ViT keeps the patch size, so the sequence grows, and the learned position embeddings are "
           "resized by 2-D interpolation. (The paper's ImageNet fine-tuning at 384 px rather than 224.)"),
    rule=verdicts.resolution.__doc__,
    setup=lambda b: (f"the small ViT with a learned position embedding pre-trained at {_resolutions(b)[0]} px, then "
                     f"fine-tuned for the same steps at {', '.join(map(str, _resolutions(b)))} px (the embedding "
                     f"interpolated, the patch size kept); {b.n_seeds} seed(s)."),
    runs=resolution_runs, summarize=lambda r: {"acc": by_tags([x for x in r if x[0].tag("arm") == "finetune"], "x")},
    decide=lambda n: verdicts.resolution({int(k): v for k, v in n["acc"].items()}),
    figure=lambda n, p: line_figure({"fine-tuned": {int(k): v for k, v in n["acc"].items()}}, p,
                                    "Test top-1 vs fine-tuning resolution", "resolution [px]"),
)


# --- 10. axial attention ---------------------------------------------------------------------------------------------


def axial_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    steps = b.pick(300, 500)
    arms = {"ViT": (), "Axial-ViT": ("model.name=Axial-ViT-B/16",)}  # the recipe's width and depth: the same size
    return [_spec("axial", arm, "same", s, recipe, (*common, *extra) + run_args(steps, s))
            for arm, extra in arms.items() for s in range(b.n_seeds)]


AXIAL = Study(
    name="axial", title="Axial attention", source="appendix D.7, figure 13",
    claim=("Axial-ViT-B/16 and B/32 do better than their ViT-B counterparts in accuracy, at the cost of more compute "
           "(and, with a naive implementation, much slower in practice) (figure 13)."),
    rule=verdicts.axial.__doc__,
    setup=lambda b: (f"the small ViT and an Axial-ViT of the same width, depth and patch (each block a row and a column "
                     f"attention, each with its MLP), the same steps; training FLOPs counted; {b.n_seeds} seed(s)."),
    runs=axial_runs,
    summarize=lambda r: {"acc": {k: v["same"] for k, v in by_tags(r, "arm", "x").items()},
                         "train_flops": {a: train_flops(r, arm=a) for a in ("ViT", "Axial-ViT")}},
    decide=lambda n: verdicts.axial(n["acc"]["Axial-ViT"], n["acc"]["ViT"], n["train_flops"]["Axial-ViT"],
                                    n["train_flops"]["ViT"]),
    figure=lambda n, p: bar_figure(n["acc"], p, "Axial-ViT vs ViT (same width and depth)"),
)


# --- 7. transfer and few-shot ---------------------------------------------------------------------------------------

SEEN, HELD_OUT = "0,1,2,3,4", "5,6,7,8,9"  # pre-train on five classes, transfer to the other five
SHOTS = (1, 5, 10, 25)


def transfer_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    pre, fine = b.pick(400, 800), b.pick(150, 300)
    out = []
    for s in range(b.n_seeds):
        out.append(RunSpec("transfer", f"pretrain-s{s}", recipe, (*common, f"data.classes={SEEN}", *run_args(pre, s)),
                           (("arm", "pretrain"), ("seed", s), ("target", second_target(b)))))
        tune = ("data.val_fraction=0", f"data.classes={HELD_OUT}", "optim.lr=3e-4", "model.zero_head=true") + run_args(fine, s)
        out.append(RunSpec("transfer", f"finetune-s{s}", recipe, tune, (("arm", "fine-tuned"), ("seed", s)),
                           init=f"pretrain-s{s}"))
        out.append(RunSpec("transfer", f"scratch-s{s}", recipe, (*common, f"data.classes={HELD_OUT}", *run_args(fine, s)),
                           (("arm", "scratch"), ("seed", s))))
    return out


def fewshot_on_held_out(run: str | Path, random_init: bool, seed: int, target: str | None = None) -> dict[int, float]:
    """Few-shot linear accuracy (section 4.1: ridge regression on frozen features, 3 draws per shot count) on the
    held-out classes (or on every class of the dataset `target`, e.g. "digits", at the run's resolution), of the run's
    model or of a freshly initialised one of the same architecture."""
    import dataclasses

    import torch

    from vitkit.convert.load import load
    from vitkit.data.datasets import load_dataset
    from vitkit.data.transforms import eval_batch, resize_batch
    from vitkit.evaluate.fewshot import extract_features, fewshot_eval
    from vitkit.models.registry import build_model
    from vitkit.rundir import RunDir

    model = load(run).model
    if random_init:
        torch.manual_seed(seed)
        model = build_model(dataclasses.replace(model.config))
    cfg = RunDir.resume(run)[1].data
    data = dataclasses.replace(cfg, classes=None if target else HELD_OUT, labels_per_class=0, train_subset=0,
                               val_fraction=0.0, **({"name": target, "data_dir": None} if target else {}))
    ds = load_dataset(data)

    def batches(split):
        for i in range(0, len(split), 256):
            yield eval_batch(resize_batch(split.images[i:i + 256], data.image_size), data), split.labels[i:i + 256]

    tx, ty = extract_features(model, batches(ds.train))
    ex, ey = extract_features(model, batches(ds.test))
    res = fewshot_eval(tx, ty, ex, ey, shots=SHOTS, seeds=3)
    return {n: res["shots"][str(n)]["mean"] for n in SHOTS}


def second_target(b: Budget) -> str | None:
    """The other dataset the full run's pre-trained features are probed on (every class: a new domain); quick: none."""
    return b.pick(None, "digits")


def transfer_summary(results: list) -> dict:
    pre = [(r, m) for r, m in results if r.tag("arm") == "pretrain"]
    other = next((r.tag("target") for r, _ in pre if r.tag("target")), None)
    arms = {"pre-trained": (False, None), "random init": (True, None)}
    if other:
        arms |= {f"pre-trained, {other}": (False, other), f"random init, {other}": (True, other)}
    few = {arm: {n: [] for n in SHOTS} for arm in arms}
    for r, m in pre:
        for arm, (rand, target) in arms.items():
            for n, acc in fewshot_on_held_out(m["run_dir"], rand, r.tag("seed"), target).items():
                few[arm][n].append(acc)
    tuned = {a: [m["test"]["top1"] for r, m in results if r.tag("arm") == a] for a in ("fine-tuned", "scratch")}
    return {"fewshot": few, "finetune": tuned}


def transfer_verdict(n: dict) -> verdicts.Verdict:
    few = {arm: {int(k): v for k, v in pts.items()} for arm, pts in n["fewshot"].items()}
    other = next((a.split(", ", 1)[1] for a in few if a.startswith("pre-trained, ")), None)
    return verdicts.transfer(few["pre-trained"], few["random init"], n["finetune"]["fine-tuned"], n["finetune"]["scratch"],
                             None if other is None else (other, few[f"pre-trained, {other}"], few[f"random init, {other}"]))


TRANSFER = Study(
    name="transfer", title="Transfer and few-shot evaluation", source="section 4.1, figure 3, table 2",
    claim=("Pre-trained ViTs transfer: fine-tuned on downstream tasks they reach 88.55% on ImageNet, 94.55% on "
           "CIFAR-100 (table 2), and few-shot linear probes of their frozen features (1, 5, 10, 25 shots) track the "
           "fine-tuned results; the fewer the labels, the more pre-training matters."),
    rule=verdicts.transfer.__doc__,
    setup=lambda b: (f"the small ViT pre-trained on {'digits' if b.quick else 'Fashion-MNIST'} classes {SEEN}, then "
                     f"evaluated on the held-out classes {HELD_OUT}: fine-tuned (against the same model trained from "
                     f"scratch on them for the same steps), and few-shot at {', '.join(map(str, SHOTS))} shots on its "
                     f"frozen features (against a randomly initialised model)"
                     + (f", and few-shot on all ten {second_target(b)} classes (another domain)" if second_target(b) else "")
                     + f"; {b.n_seeds} seed(s)."),
    runs=transfer_runs, summarize=transfer_summary,
    decide=transfer_verdict,
    figure=lambda n, p: line_figure({a: {int(k): v for k, v in pts.items()} for a, pts in n["fewshot"].items()}, p,
                                    "Few-shot linear accuracy on held-out classes", "shots per class", logx=True),
)


# --- 8. masked patch prediction -------------------------------------------------------------------------------------


def _labels(b: Budget) -> list[int]:
    """Labelled images per class for fine-tuning: about 1% and 10% of the training set (digits: ~90 per class)."""
    return b.pick([1, 9], [60, 600])


def mpp_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    pre, fine = b.pick(300, 800), b.pick(150, 250)
    data = b.pick(("data.name=digits", "data.image_size=16", "model.patch_size=2", *SMALL_VIT), SMALL_VIT)
    out = []
    for s in range(b.n_seeds):
        out.append(RunSpec("mpp", f"mpp-s{s}", "mpp-fashion-mnist", (*data, "data.val_fraction=0", *run_args(pre, s)),
                           (("arm", "mpp pre-training"), ("seed", s))))
        out.append(RunSpec("mpp", f"supervised-s{s}", recipe, (*common, *run_args(pre, s)),
                           (("arm", "supervised pre-training"), ("seed", s))))
        for k in _labels(b):
            tune = ("data.val_fraction=0", f"data.labels_per_class={k}", "optim.lr=3e-4") + run_args(fine, s)
            out.append(_spec("mpp", "MPP", k, s, recipe, tune, init=f"mpp-s{s}"))
            out.append(_spec("mpp", "supervised", k, s, recipe, tune, init=f"supervised-s{s}"))
            out.append(_spec("mpp", "scratch", k, s, recipe, (*common, f"data.labels_per_class={k}") + run_args(fine, s)))
    return out


def mpp_summary(results: list) -> dict:
    tuned = [(r, m) for r, m in results if r.tag("arm") in ("MPP", "supervised", "scratch")]
    mpp_acc = [m["test"]["mpp_acc"] for r, m in results if r.tag("arm") == "mpp pre-training"]  # masked-patch accuracy
    return {"acc": by_tags(tuned, "arm", "x"), "masked_patch_accuracy": mpp_acc}


MPP = Study(
    name="mpp", title="Self-supervised masked patch prediction", source="section 4.6, appendix B.1.2",
    claim=("ViT-B/16 pre-trained by masked patch prediction (50% of the patches corrupted, their 3-bit mean colour "
           "predicted) reaches 79.9% on ImageNet: 2% better than training from scratch, 4% behind supervised "
           "pre-training."),
    rule=verdicts.self_supervised.__doc__,
    setup=lambda b: (f"the small ViT pre-trained by masked patch prediction on every training image without labels, "
                     f"or supervised on all labels, then fine-tuned with {' and '.join(map(str, _labels(b)))} labelled "
                     f"images per class, against the same model trained from scratch on those labels; "
                     f"{b.n_seeds} seed(s)."),
    runs=mpp_runs, summarize=mpp_summary,
    decide=lambda n: verdicts.self_supervised(*(({int(k): v for k, v in n["acc"][a].items()})
                                                for a in ("MPP", "scratch", "supervised"))),
    figure=lambda n, p: line_figure({a: {int(k): v for k, v in pts.items()} for a, pts in n["acc"].items()}, p,
                                    "Fine-tuned with few labels", "labelled images per class", logx=True),
)


# --- 9. what ViT learns ----------------------------------------------------------------------------------------------


def inside_runs(b: Budget) -> list[RunSpec]:
    recipe, common, batch = base(b)
    steps = b.pick(500, 1000)
    over = (*common, "model.posemb=learned", "model.pool=token")  # a learned table to inspect, a class token to roll out
    return [RunSpec("inside", f"vit-s{s}", recipe, over + run_args(steps, s), (("arm", "vit"), ("seed", s)))
            for s in range(b.n_seeds)]


def inside_measure(run: str | Path, images: int = 128) -> dict[str, Any]:
    """The four measurements of figures 6 and 7 on one trained model and `images` test images (analysis/)."""
    import torch

    from vitkit.analysis.attention import attention_rollout, collect_attention, mean_attention_distance, rollout_maps
    from vitkit.analysis.attention import patch_distances, token_stride
    from vitkit.analysis.embeddings import posemb_similarity
    from vitkit.convert.load import load
    from vitkit.data.datasets import load_dataset
    from vitkit.rundir import RunDir

    from vitkit.data.transforms import eval_batch, resize_batch

    model = load(run).model.eval()
    cfg = RunDir.resume(run)[1]
    test = load_dataset(cfg.data).test
    x = eval_batch(resize_batch(test.images[:images], cfg.data.image_size), cfg.data)  # (B, C, H, W) as the model sees
    grid, p = model.config.grid, model.num_prefix_tokens
    attn = collect_attention(model, [x])
    dist = mean_attention_distance(attn, grid, token_stride(model), p)  # (L, heads) pixels
    uniform = patch_distances(grid, token_stride(model)).mean().item()  # the distance under uniform attention
    sim = posemb_similarity(model)[0]  # (gh, gw, gh, gw)
    gh, gw = grid
    rows = torch.arange(gh)[:, None, None, None] == torch.arange(gh)[None, None, :, None]
    cols = torch.arange(gw)[None, :, None, None] == torch.arange(gw)[None, None, None, :]
    line = (rows | cols).expand(gh, gw, gh, gw)
    self_ = rows.expand(gh, gw, gh, gw) & cols.expand(gh, gw, gh, gw)
    maps = rollout_maps(attention_rollout(attn, p), grid, p)  # (B, gh, gw), max 1
    s = token_stride(model)
    ink = torch.nn.functional.avg_pool2d(x.float().mean(1, keepdim=True), s)[:, 0]  # (B, gh, gw): the patch's mean
    fg = ink > ink.flatten(1).mean(1)[:, None, None]  # the object: patches brighter than the image's mean
    mass = (maps * fg).flatten(1).sum(1) / maps.flatten(1).sum(1)
    return {"attention_distance": dist.tolist(), "uniform_distance": uniform,
            "posemb_same_row_or_column": sim[line & ~self_].mean().item(), "posemb_other": sim[~line].mean().item(),
            "rollout_on_object": mass.mean().item(), "object_area": fg.float().mean().item()}


def inside_summary(results: list) -> dict:
    return {"seeds": [inside_measure(m["run_dir"]) for _, m in results]}


INSIDE = Study(
    name="inside", title="What ViT learns", source="section 4.5, figures 6 and 7",
    claim=("The learned position embeddings encode distance and the 2-D grid: patches in the same row or column have "
           "similar embeddings (figure 7 centre); some heads attend to most of the image already in the lowest "
           "layers, and the attention distance grows with depth (figure 7 right); attention rollout focuses on the "
           "regions that matter for the class (figure 6)."),
    rule=verdicts.inside.__doc__,
    setup=lambda b: (f"the small ViT with a learned 1-D position embedding and a class token, trained for "
                     f"{b.pick(500, 1000)} steps; measured on 128 test images: the cosine similarity of position "
                     f"embeddings, the mean attention distance of every head, and the share of the rollout map on the "
                     f"object's patches (brighter than the image's mean); {b.n_seeds} seed(s)."),
    runs=inside_runs, summarize=inside_summary, decide=lambda n: verdicts.inside(n["seeds"]),
    figure=lambda n, p: inside_figure(n, p),
)


def inside_figure(numbers: dict, path: Path) -> Path:
    """Mean attention distance of every head against depth (figure 7 right), first seed."""
    from vitkit.figures import figure, save_png

    m = numbers["seeds"][0]
    fig = figure(figsize=(6, 4))
    ax = fig.subplots()
    for layer, heads in enumerate(m["attention_distance"], start=1):
        ax.plot([layer] * len(heads), heads, "o", color="#1f77b4", alpha=0.7)
    ax.axhline(m["uniform_distance"], color="grey", ls="--", label="uniform attention")
    ax.set(title="Mean attention distance per head", xlabel="layer", ylabel="distance [pixels]")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


# --- 11. beyond the paper: which self-supervised pre-training -----------------------------------------------------


def _all_labels(b: Budget) -> int:
    """Labelled images per class of the whole training set (val_fraction 0): digits ~90 (898 / 10), Fashion-MNIST 6000."""
    return b.pick(90, 6000)


def _pre_labels(b: Budget) -> list[int]:
    """About 1%, 10% and 100% of the labels (the issue's fractions; digits: 1, 9 and all ~90 per class)."""
    return [*_labels(b), _all_labels(b)]


def pretraining_runs(b: Budget) -> list[RunSpec]:
    """Masked autoencoding, masked patch prediction and supervised pre-training of the small ViT for the same steps
    and batch, each fine-tuned with 1%, 10% and 100% of the labels for the same steps, against scratch."""
    recipe, common, batch = base(b)
    pre, fine = b.pick(300, 800), b.pick(150, 250)
    data = b.pick(("data.name=digits", "data.image_size=16", "model.patch_size=2", *SMALL_VIT), SMALL_VIT)
    size = (f"train.batch_size={batch}",)
    out = []
    for s in range(b.n_seeds):
        out.append(RunSpec("pretraining", f"mae-s{s}", "mae", (*data, "data.val_fraction=0", *size, *run_args(pre, s)),
                           (("arm", "mae pre-training"), ("seed", s))))
        out.append(RunSpec("pretraining", f"mpp-s{s}", "mpp-fashion-mnist", (*data, "data.val_fraction=0", *size,
                                                                             *run_args(pre, s)),
                           (("arm", "mpp pre-training"), ("seed", s))))
        out.append(RunSpec("pretraining", f"supervised-s{s}", recipe, (*common, *run_args(pre, s)),
                           (("arm", "supervised pre-training"), ("seed", s))))
        for k in _pre_labels(b):
            labels = () if k == _all_labels(b) else (f"data.labels_per_class={k}",)
            # every arm fine-tuned by the same recipe and learning rate as scratch trains: only the start differs
            tune = ("data.val_fraction=0", *labels) + run_args(fine, s)
            for arm, init in (("MAE", f"mae-s{s}"), ("MPP", f"mpp-s{s}"), ("supervised", f"supervised-s{s}")):
                out.append(_spec("pretraining", arm, k, s, recipe, tune, init=init))
            out.append(_spec("pretraining", "scratch", k, s, recipe, (*common, *labels) + run_args(fine, s)))
    return out


def pretraining_summary(results: list) -> dict:
    tuned = [(r, m) for r, m in results if r.tag("arm") in ("MAE", "MPP", "supervised", "scratch")]
    return {"acc": by_tags(tuned, "arm", "x"),
            "mae_loss": [m["test"]["loss"] for r, m in results if r.tag("arm") == "mae pre-training"],
            "masked_patch_accuracy": [m["test"]["mpp_acc"] for r, m in results if r.tag("arm") == "mpp pre-training"]}


PRETRAINING = Study(
    name="pretraining", title="Beyond the paper: masked autoencoding vs masked patch prediction",
    source="beyond the paper: section 4.6's open question; He et al. 2021 (masked autoencoders)",
    claim=("The paper's masked patch prediction trails supervised pre-training by 4% and leaves other self-supervised "
           "objectives open. Masked autoencoding (He et al. 2021: the encoder sees a quarter of the patches, a light "
           "decoder reconstructs the pixels of the hidden ones) is the denoising answer: fine-tuned with few labels it "
           "should beat masked patch prediction and training from scratch, and masked patch prediction should be ahead "
           "of it at no number of labels."),
    rule=verdicts.denoising.__doc__,
    setup=lambda b: (f"the small ViT pre-trained for the same steps and batch by masked autoencoding (75% of the patches "
                     f"hidden, a decoder of width 64 and depth 2, normalised-pixel targets), by masked patch prediction, "
                     f"or supervised on all labels, each fine-tuned with {', '.join(map(str, _pre_labels(b)))} labelled "
                     f"images per class (about 1%, 10% and all) by the recipe scratch trains with (the same learning "
                     f"rate and steps: only the initialisation differs), against the same model trained from scratch on "
                     f"those labels; {b.n_seeds} seed(s)."),
    runs=pretraining_runs, summarize=pretraining_summary,
    decide=lambda n: verdicts.denoising(*(({int(k): v for k, v in n["acc"][a].items()})
                                          for a in ("MAE", "MPP", "scratch", "supervised"))),
    figure=lambda n, p: line_figure({a: {int(k): v for k, v in pts.items()} for a, pts in n["acc"].items()}, p,
                                    "Fine-tuned after each pre-training", "labelled images per class", logx=True),
)


STUDIES: dict[str, Study] = {s.name: s for s in (DATA_SIZE, COMPUTE, SCALING, POSEMB, TOKEN_GAP, RESOLUTION, TRANSFER,
                                                   MPP, INSIDE, AXIAL, PRETRAINING)}
