import numpy as np
import pytest
import torch

from vitkit.evaluate.fewshot import fewshot_eval, linear_probe, nested_subsets, ridge_solve


@pytest.mark.parametrize("n,d", [(50, 8), (6, 20)])  # primal (n >= d) and dual (n < d)
def test_ridge_matches_direct_solution(n, d):
    torch.manual_seed(0)
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randn(n, 3, dtype=torch.float64)
    l2 = 0.7
    w, form = ridge_solve(x, y, l2)
    assert form == ("primal" if n >= d else "dual")
    direct = torch.linalg.solve(x.T @ x + l2 * torch.eye(d, dtype=torch.float64), x.T @ y)
    torch.testing.assert_close(w, direct)


def test_tiny_l2_is_least_squares():
    torch.manual_seed(0)
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    w, _ = ridge_solve(x, y, 1e-10)
    torch.testing.assert_close(w, torch.linalg.lstsq(x, y).solution)


def test_nested_subsets():
    labels = torch.arange(300) % 3
    subsets = nested_subsets(labels, [1, 5, 10, 25], seed=0)
    for n, idx in subsets.items():
        assert torch.bincount(labels[idx]).tolist() == [n] * 3
    assert set(subsets[5].tolist()) <= set(subsets[10].tolist()) <= set(subsets[25].tolist())
    assert not torch.equal(nested_subsets(labels, [5], 1)[5], subsets[5])
    with pytest.raises(ValueError, match="needs 200 images of every class"):
        nested_subsets(labels, [200], 0)


def test_separable_features_are_classified_and_noise_is_not():
    torch.manual_seed(0)
    centers = torch.randn(4, 16) * 5
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16)
    res = fewshot_eval(x[:200], y[:200], x[200:], y[200:], shots=(1, 5), seeds=3)
    assert res["shots"]["5"]["mean"] > 0.95 and len(res["shots"]["1"]["runs"]) == 3
    noise = linear_probe(torch.randn(100, 16), y[:100], torch.randn(200, 16), y[:200], 4)
    assert noise < 0.45


def test_test_features_are_whitened_with_the_fewshot_sets_statistics():
    """Whitening the test features with their own mean and std (not the few-shot set's) would erase a test set
    that holds one class: all of it sits at +1, which the few-shot set's statistics keep at +1."""
    train_x = torch.tensor([[-1.0], [-1.1], [-0.9], [1.0], [1.1], [0.9]])
    train_y = torch.tensor([0, 0, 0, 1, 1, 1])
    test_x = torch.full((50, 1), 1.0) + 0.01 * torch.randn(50, 1, generator=torch.Generator().manual_seed(0))
    test_y = torch.ones(50, dtype=torch.long)
    assert linear_probe(train_x, train_y, test_x, test_y, 2, l2=1e-3) == 1.0
    # and the mirror image: a test set of class 0 only
    assert linear_probe(train_x, train_y, -test_x, 0 * test_y, 2, l2=1e-3) == 1.0


def test_subsets_are_a_function_of_the_seed_alone():
    """Nested subsets are drawn from their own seeded generator: the same seed gives the same images whatever
    the global random state (a run's few-shot numbers must be reproducible)."""
    labels = torch.arange(300) % 3
    torch.manual_seed(1)
    a = nested_subsets(labels, [1, 5], seed=7)
    torch.manual_seed(2)
    b = nested_subsets(labels, [1, 5], seed=7)
    assert all(torch.equal(a[n], b[n]) for n in (1, 5))


def test_whitening_is_per_feature_dimension():
    """Each feature dimension is centred and scaled on its own: two dimensions on very different scales and
    offsets must not share one mean and std (the informative small one would drown)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    informative = (2.0 * y - 1).unsqueeze(1) * 0.01 + 0.001 * torch.randn(60, 1, generator=g)  # tiny, separates the classes
    loud = 1000.0 + 100.0 * torch.randn(60, 1, generator=g)  # huge offset and spread, no information
    x = torch.cat([informative, loud], dim=1)
    assert linear_probe(x[:20], y[:20], x[20:], y[20:], 2, l2=1.0) == 1.0


def test_result_layout():
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.arange(40) % 2
    res = fewshot_eval(x[:20], y[:20], x[20:], y[20:], shots=(1, 2), seeds=2, l2=3.0)
    assert set(res) >= {"shots", "l2", "seeds", "num_classes", "test_images", "feature_dim"} and res["l2"] == 3.0
    assert res["seeds"] == 2 and res["num_classes"] == 2 and res["test_images"] == 20 and res["feature_dim"] == 4
    assert set(res["shots"]) == {"1", "2"} and set(res["shots"]["1"]) == {"mean", "std", "runs"}


def test_probe_scores_match_sklearn_ridge_on_big_visions_recipe():
    """big_vision's few-shot probe, spelled out in NumPy: whiten each dimension with the few-shot set's mean and
    population std (+1e-5), append a constant 100, ridge-regress {-1, +1} one-hot targets without intercept;
    solved here by scikit-learn. A test class absent from the few-shot set still gets its column."""
    from sklearn.linear_model import Ridge

    from vitkit.evaluate.fewshot import fit_probe

    g = torch.Generator().manual_seed(0)
    train_x = torch.randn(12, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + torch.tensor([5.0, -2.0, 0.0, 1.0, 50.0])
    train_y = torch.arange(12) % 3  # classes 0-2; the problem has 4
    test_x = torch.randn(7, 5, generator=g) * 3
    for l2 in (0.5, 1024.0):
        a = train_x.numpy().astype(np.float64)
        mean, std = a.mean(0), a.std(0) + 1e-5
        prep = lambda f, mean=mean, std=std: np.concatenate([(f - mean) / std, np.full((len(f), 1), 100.0)], 1)  # noqa: E731
        targets = 2.0 * np.eye(4)[train_y.numpy()] - 1.0
        want = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(prep(a), targets).predict(prep(test_x.numpy().astype(np.float64)))
        got = fit_probe(train_x, train_y, 4, l2)(test_x)
        assert got.shape == (7, 4)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-8, rtol=1e-7)


def test_fewshot_eval_aggregates_its_runs():
    import statistics

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 6, generator=g) + y[:, None].float()
    res = fewshot_eval(x[:30], y[:30], x[30:], y[30:], shots=(2, 10), l2=0.3)  # 10 = the smallest class: allowed
    assert res["seeds"] == 3  # the default, as big_vision's evaluator
    for n in (2, 10):
        runs = res["shots"][str(n)]["runs"]
        assert len(runs) == 3 and runs == [linear_probe(x[:30][i], y[:30][i], x[30:], y[30:], 3, 0.3)
                                           for i in (nested_subsets(y[:30], (2, 10), s)[n] for s in range(3))]
        assert res["shots"][str(n)]["mean"] == pytest.approx(statistics.fmean(runs), abs=1e-15)  # float64, not float32
        assert res["shots"][str(n)]["std"] == pytest.approx(statistics.pstdev(runs), abs=1e-15)
