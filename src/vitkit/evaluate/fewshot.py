"""Few-shot linear evaluation (paper section 4.1): frozen pre-logits features of n images per class,
closed-form regularised least squares to {-1, 1}^K targets, accuracy of the argmax on test features.

As big_vision's evaluator: features whitened per dimension with the few-shot set's mean and std
(+1e-5), a constant bias feature (100) appended so the bias is almost unregularised, and the solve
through an eigen-decomposition of X^T X (primal, when there are at least as many samples as
dimensions) or X X^T (dual, otherwise). Subsets are nested per class and seed: the 1-shot images are
among the 5-shot ones, and so on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from vitkit.config import check_argument

BIAS_FEATURE = 100.0
DEFAULT_L2 = 2.0**10


@torch.inference_mode()
def extract_features(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logits features (B, D) and labels of every batch, in order, computed on the model's device and
    returned on the CPU (the ridge regression runs there, in float64). `precision` is autocast's (resolved
    already); an `InferenceModel` brings its own (half-precision weights)."""
    from vitkit.data.loader import to_device
    from vitkit.runtime import model_device
    from vitkit.train.precision import autocast

    dev = model_device(model)
    was = model.training
    model.eval()
    feats, labels = [], []
    for x, y in batches:
        with autocast(precision, dev.type):
            x = to_device(x, dev)
            # an InferenceModel or an Engine (vitkit.engines) brings its own; a plain model: forward_head's
            f = model.representation(x) if hasattr(model, "representation") else model.forward_head(model.forward_features(x), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    model.train(was)
    return torch.cat(feats), torch.cat(labels)


def ridge_solve(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, str]:
    """W minimising |x W - y|^2 + l2 |W|^2 by eigen-decomposition; (W (D, K), "primal" | "dual")."""
    x, y = x.double(), y.double()
    n, d = x.shape
    if n >= d:  # (x^T x + l2 I)^-1 x^T y
        eigs, q = torch.linalg.eigh(x.T @ x)
        return q @ ((q.T @ (x.T @ y)) / (eigs + l2)[:, None]), "primal"
    eigs, q = torch.linalg.eigh(x @ x.T)  # x^T (x x^T + l2 I)^-1 y
    return x.T @ (q @ ((q.T @ y) / (eigs + l2)[:, None])), "dual"


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int,
              l2: float = DEFAULT_L2) -> Callable[[torch.Tensor], torch.Tensor]:
    """The few-shot probe: whiten with the training set's statistics, add the bias feature, solve the ridge
    regression to {-1, 1} targets; returns the function giving (N, num_classes) scores of new features."""
    mean = train_x.double().mean(0, keepdim=True)
    std = train_x.double().std(0, keepdim=True, unbiased=False) + 1e-5

    def prep(f: torch.Tensor) -> torch.Tensor:
        f = (f.double() - mean) / std
        return torch.cat([f, torch.full((len(f), 1), BIAS_FEATURE, dtype=f.dtype)], dim=1)

    targets = 2.0 * torch.nn.functional.one_hot(train_y, num_classes).double() - 1.0
    w, _ = ridge_solve(prep(train_x), targets, l2)
    return lambda x: prep(x) @ w


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, l2: float = DEFAULT_L2) -> float:
    """Test accuracy of the few-shot probe (`fit_probe`) trained on (train_x, train_y)."""
    pred = fit_probe(train_x, train_y, num_classes, l2)(test_x).argmax(1)
    return (pred == test_y).double().mean().item()


def nested_subsets(labels: torch.Tensor, shots: Sequence[int], seed: int) -> dict[int, torch.Tensor]:
    """For each shot count n, the indices of n images per class; smaller sets are prefixes of larger ones."""
    gen = torch.Generator().manual_seed(seed)
    per_class = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        per_class.append(idx[torch.randperm(len(idx), generator=gen)])
    short = min(len(p) for p in per_class)
    if max(shots) > short:
        raise ValueError(f"{max(shots)}-shot evaluation needs {max(shots)} images of every class; the smallest class has {short}")
    return {n: torch.cat([p[:n] for p in per_class]) for n in shots}


def check_fewshot(shots: Sequence[int], seeds: int, l2: float | None) -> None:
    """The arguments of a few-shot evaluation, checked before any feature is computed: ValueError naming the one
    out of range (shots: a non-empty list of integers >= 1; seeds >= 1; l2 > 0)."""
    if isinstance(shots, (str, bytes)) or not isinstance(shots, Sequence) or not shots:
        raise ValueError(f"shots={shots!r}: give a non-empty list of images per class, e.g. [1, 5, 10, 25]")
    for n in shots:
        check_argument("shots", n)
    check_argument("seeds", seeds)
    check_argument("l2", l2)


def fewshot_eval(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 shots: Sequence[int] = (1, 5, 10, 25), seeds: int = 3, l2: float = DEFAULT_L2) -> dict:
    """{"shots": {n: {"mean", "std", "runs": [...]}}, ...} over `seeds` nested draws of the training features."""
    check_fewshot(shots, seeds, l2)
    k = int(max(train_y.max(), test_y.max())) + 1
    runs: dict[int, list[float]] = {n: [] for n in shots}
    for seed in range(seeds):
        for n, idx in nested_subsets(train_y, shots, seed).items():
            runs[n].append(linear_probe(train_x[idx], train_y[idx], test_x, test_y, k, l2))
    out = {}
    for n, accs in runs.items():
        t = torch.tensor(accs, dtype=torch.float64)
        out[str(n)] = {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "runs": accs}
    return {"shots": out, "l2": l2, "seeds": seeds, "num_classes": k, "test_images": len(test_y),
            "feature_dim": train_x.shape[1]}
