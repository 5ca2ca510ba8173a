"""Nested LOO, permutation tests and bootstrap selection (kp_science.prediction.evaluation)."""

import numpy as np
import pytest

from kp_science.prediction import bootstrap_selection, loo_select, nested_loo, permutation_test
from tests.science.prediction.signals import _signal

SMALL = dict(l1_ratios=(0.3, 0.7, 1.0), n_alphas=12)


# --- honest evaluation --------------------------------------------------------------------


def test_permutation_p_small_for_strong_signal():
    X, y = _signal(n=16, p=20, seed=5, beta=3.0, noise=0.7)
    res = permutation_test(X, y, n_permutations=99, seed=1, **SMALL)
    assert res.p_value <= 0.02
    assert res.n_permutations == 99


def test_permutation_null_roughly_uniform_and_pruning_exact():
    ps = []
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        X, y = rng.standard_normal((12, 10)), rng.standard_normal(12)
        res = permutation_test(X, y, n_permutations=19, seed=seed, l1_ratios=(0.5, 1.0), n_alphas=8)
        ps.append(res.p_value)
        if seed < 3:  # pruning changes the work, never the p-value
            exact = permutation_test(
                X,
                y,
                n_permutations=19,
                seed=seed,
                l1_ratios=(0.5, 1.0),
                n_alphas=8,
                exact_null=True,
            )
            assert exact.p_value == res.p_value
            assert exact.n_as_good == int((exact.null_mse <= res.observed_mse * (1 + 1e-9)).sum())
    ps = np.array(ps)
    assert 0.2 < ps.mean() < 0.8 and (ps > 0.1).sum() >= 5


@pytest.mark.parametrize("beta", [0.0, 0.6])
def test_pruned_permutation_test_decides_like_the_full_one(beta):
    """Every pruning rule (dead grid points, a permutation decided by its first mixing ratio
    under the observed minimum, adaptive orders) keeps each permutation's verdict: same
    count as the full computation, on a null and on a weak effect, with far less work."""
    X, y = _signal(n=14, p=25, seed=11, beta=beta, noise=1.0)
    kw = dict(n_permutations=40, seed=3, l1_ratios=(0.2, 0.5, 0.8, 1.0), n_alphas=15)
    pruned = permutation_test(X, y, **kw)
    exact = permutation_test(X, y, exact_null=True, **kw)
    assert exact.n_as_good == int((exact.null_mse <= exact.observed_mse * (1 + 1e-9)).sum())
    assert pruned.n_as_good == exact.n_as_good and pruned.p_value == exact.p_value
    assert 0 < exact.n_as_good < 40  # both verdicts occur
    assert pruned.stats.instances < 0.6 * exact.stats.instances


def test_mixing_ratios_tried_from_the_outside_in():
    from kp_science.prediction.evaluation import _extremes_first

    rho = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert rho[_extremes_first(rho)].tolist() == [1.0, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5]
    unsorted = rho[[4, 9, 0]]
    assert unsorted[_extremes_first(unsorted)].tolist() == [1.0, 0.1, 0.5]


def test_nested_loo_predicts_strong_signal():
    X, y = _signal(n=16, p=20, seed=6, beta=3.0, noise=0.7)
    res = nested_loo(X, y, **SMALL)
    assert res.r > 0.8
    assert res.predicted.shape == y.shape and np.isfinite(res.rmse)


def test_bootstrap_frequencies():
    X, y = _signal(n=16, p=20, seed=7, beta=3.0, noise=0.7)
    sel = loo_select(X, y, **SMALL)
    res = bootstrap_selection(
        X, y, n_resamples=60, seed=0, l1_ratio=sel.l1_ratio, alpha=sel.alpha, n_alphas=12
    )
    assert ((res.frequency >= 0) & (res.frequency <= 1)).all()
    assert res.frequency[0] >= 0.9
    assert np.median(res.frequency[2:]) < res.frequency[0]


def test_worker_threads_give_the_same_results():
    X, y = _signal(n=14, p=15, seed=8, beta=1.0, noise=1.5)
    one = permutation_test(X, y, n_permutations=30, seed=2, n_jobs=1, **SMALL)
    two = permutation_test(X, y, n_permutations=30, seed=2, n_jobs=2, **SMALL)
    assert one.p_value == two.p_value
    np.testing.assert_allclose(
        nested_loo(X, y, n_jobs=2, **SMALL).predicted,
        nested_loo(X, y, n_jobs=1, **SMALL).predicted,
        atol=1e-10,
    )
