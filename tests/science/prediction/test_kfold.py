"""K-fold cross-validation for large studies (kp_science.prediction.kfold) and the switch
to it in fit_variant."""

from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import ElasticNet

from kp_science.prediction import DEFAULT_VARIANTS, EnetSettings, fit_variant, refit
from kp_science.prediction.elastic_net import standardize
from kp_science.prediction.evaluation import bootstrap_selection
from kp_science.prediction.kfold import (
    bootstrap_selection_gram,
    cv_permutation_test,
    cv_select,
    kfold_assignment,
    nested_cv,
    refit_gram,
)
from kp_science.prediction.synthetic import synthetic_study
from tests.science.prediction.signals import _signal

SMALL: dict[str, Any] = dict(l1_ratios=(0.3, 0.7, 1.0), n_alphas=12)


def test_folds_are_deterministic_balanced_and_seeded():
    folds = kfold_assignment(23, 5, seed=4)
    assert np.array_equal(folds, kfold_assignment(23, 5, seed=4))
    assert sorted(np.bincount(folds)) == [4, 4, 5, 5, 5]
    assert not np.array_equal(folds, kfold_assignment(23, 5, seed=5))
    with pytest.raises(ValueError, match="folds"):
        kfold_assignment(3, 5, seed=0)


@pytest.mark.parametrize("p", [20, 40])
def test_kfold_selection_equals_sklearn_on_the_same_folds_and_grid(p):
    """Every fold × grid point equals scikit-learn's ElasticNet fitted on the training fold
    z-scored with its own statistics (tol 1e-12): coefficients within 1e-6, CV errors within
    a relative 1e-8, the same selected grid point. p = 20 < 36 training rows makes the
    solver use both its Cholesky and its eigendecomposition solves; p = 40 > 36 makes the
    Gram matrices singular (the lasso's active sets capped at their rank)."""
    X, y = _signal(n=45, p=p, seed=3, beta=1.5, noise=1.5)
    folds = kfold_assignment(len(y), 5, seed=0)
    grid: dict[str, Any] = dict(l1_ratios=(0.5, 1.0), n_alphas=10)
    sel = cv_select(X, y, folds, return_coefs=True, **grid)
    assert sel.cv == "5-fold" and sel.coefs is not None
    pred = np.empty_like(sel.loo_pred)
    for f in range(5):
        train, test = folds != f, folds == f
        z, z_test, _, _ = standardize(X[train], X[test])
        for r, l1 in enumerate(grid["l1_ratios"]):
            for t, alpha in enumerate(sel.alphas[r]):
                model = ElasticNet(alpha=alpha, l1_ratio=l1, tol=1e-12, max_iter=1_000_000)
                model.fit(z, y[train])
                assert np.abs(model.coef_ - sel.coefs[f, r, t]).max() < 1e-6
                pred[r, t, test] = model.predict(z_test)
    mse = ((pred - y) ** 2).mean(axis=2)
    np.testing.assert_allclose(sel.loo_mse, mse, rtol=1e-8)
    np.testing.assert_allclose(sel.loo_pred, pred, atol=1e-6)
    assert sel.best == np.unravel_index(np.argmin(mse), mse.shape)


def test_refit_and_bootstrap_from_gram_equal_the_row_based_ones():
    X, y = _signal(n=30, p=10, seed=7, beta=2.0, noise=1.0)
    path = np.geomspace(3.0, 0.05, 15)
    a, b = refit(X, y, 0.6, path), refit_gram(X, y, 0.6, path)
    np.testing.assert_allclose(b.beta_std, a.beta_std, atol=1e-9)
    kw: dict[str, Any] = dict(n_resamples=40, seed=2, l1_ratio=0.6, alpha=0.3, n_alphas=12)
    assert bootstrap_selection_gram(X, y, **kw).frequency.tolist() == (
        bootstrap_selection(X, y, **kw).frequency.tolist()
    )


def test_nested_kfold_never_sees_a_held_out_participant():
    """Whatever the outcomes of outer fold 1's participants are, that fold's selection and
    predictions do not change: they were made without them. Other folds do change."""
    X, y = _signal(n=40, p=12, seed=6, beta=3.0, noise=0.7)
    folds = kfold_assignment(len(y), 4, seed=1)
    before = nested_cv(X, y, folds, seed=1, **SMALL)
    y2 = y.copy()
    y2[folds == 1] = 100.0 * np.random.default_rng(0).standard_normal((folds == 1).sum())
    after = nested_cv(X, y2, folds, seed=1, **SMALL)
    held = folds == 1
    assert np.array_equal(after.predicted[held], before.predicted[held])
    assert np.array_equal(after.alphas[held], before.alphas[held])
    assert not np.allclose(after.predicted[~held], before.predicted[~held])
    assert before.r > 0.8


@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_kfold_permutation_p_value_keeps_its_meaning(beta):
    """p = (1 + #permutations as good) / (1 + n_permutations), with the whole selection —
    grid included — repeated on the same folds: each permutation's minimum equals
    cv_select on the permuted outcome, and pruning keeps every verdict."""
    X, y = _signal(n=36, p=10, seed=11, beta=beta, noise=1.0)
    folds = kfold_assignment(len(y), 4, seed=0)
    kw: dict[str, Any] = dict(n_permutations=30, seed=3, l1_ratios=(0.5, 1.0), n_alphas=10)
    exact = cv_permutation_test(X, y, folds, exact_null=True, **kw)
    pruned = cv_permutation_test(X, y, folds, n_jobs=2, **kw)
    assert exact.null_mse is not None
    n_good = int((exact.null_mse <= exact.observed_mse * (1 + 1e-9)).sum())
    assert exact.n_as_good == pruned.n_as_good == n_good
    assert pruned.p_value == exact.p_value == (1 + n_good) / 31
    assert pruned.stats.instances < exact.stats.instances
    rng = np.random.default_rng(3)  # the permutations' draws (the same as for LOO)
    for i in range(3):
        yp = y[rng.permutation(len(y))]
        again = cv_select(X, yp, folds, l1_ratios=(0.5, 1.0), n_alphas=10)
        assert abs(again.min_mse - exact.null_mse[i]) <= 1e-10 * again.min_mse
    if beta > 0:
        assert pruned.p_value < 0.1


def test_the_scheme_switches_above_the_threshold():
    """n ≤ loo_max_participants: exact LOO; above: K-fold, said in every table's cv column."""
    cs, clin = synthetic_study(n=14, n_features=6, seed=2)
    fast: dict[str, Any] = dict(
        l1_ratios=(0.5, 1.0), n_alphas=6, n_permutations=4, n_bootstraps=4, n_jobs=1
    )
    main = DEFAULT_VARIANTS[0]
    at = fit_variant(cs, clin, main, EnetSettings(loo_max_participants=14, **fast))
    above = fit_variant(cs, clin, main, EnetSettings(loo_max_participants=13, cv_folds=4, **fast))
    for table in ("enet_summary", "enet_predictions", "enet_cv_curve"):
        assert set(at[table]["cv"]) == {"loo"}
        assert set(above[table]["cv"]) == {"4-fold"}
    assert at["enet_summary"]["loo_mse"].iloc[0] != above["enet_summary"]["loo_mse"].iloc[0]
    assert np.isfinite(above["enet_summary"][["nested_r", "permutation_p"]].to_numpy()).all()
    with pytest.raises(ValueError, match="cv_folds"):
        EnetSettings(cv_folds=1)


@pytest.mark.parametrize("l1_ratio", [0.5, 1.0])
@pytest.mark.parametrize("max_iter", [500, 0])
def test_gram_solver_fallbacks_are_exact(l1_ratio, max_iter):
    """One active-set guess per grid point forces the monotone method (max_iter 500) or,
    with no monotone step allowed, coordinate descent and an exact polish — both run on the
    Gram matrix's square root R = diag(√d)Vᵀ and ỹ (Rᵀỹ = c): scikit-learn's path."""
    from sklearn.linear_model import enet_path

    from kp_science.prediction import gram_kernels
    from kp_science.prediction.kfold import gram_designs

    rng = np.random.default_rng(5)
    z = standardize(rng.standard_normal((40, 15)))[0]
    y = z[:, :4] @ np.array([1.5, -1.0, 0.8, 0.5]) + rng.standard_normal(40)
    yc = y - y.mean()
    alphas = np.abs(z.T @ yc).max() / (40 * l1_ratio) * np.geomspace(1, 1e-2, 20)
    mu, lam = 40 * alphas * l1_ratio, 40 * alphas * (1 - l1_ratio)
    gd = gram_designs([z])
    _, coefs, stats = gram_kernels.gram_paths(
        gd.G, gd.V, gd.dv, gd.R, gd.RT, np.zeros((1, 0, 0)), np.zeros(1, dtype=np.int64),
        (z.T @ yc)[None], np.zeros((1, 15)), np.zeros(1), mu[None], lam[None],
        np.array([19]), np.array([gd.rank[0] if l1_ratio == 1 else 15]), 1, max_iter, True,
    )  # fmt: skip
    assert (stats[3] if max_iter else stats[4]) > 0  # monotone steps / fallbacks taken
    _, ref, _ = enet_path(z, yc, l1_ratio=l1_ratio, alphas=alphas, tol=1e-13, max_iter=10**6)
    assert np.abs(coefs[0] - ref.T).max() < 1e-6
