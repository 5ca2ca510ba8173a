"""The elastic-net path solver (kp_science.prediction.solver), checked against scikit-learn."""

import numpy as np
import pytest
from sklearn.linear_model import enet_path

from kp_science.prediction import enet_paths
from tests.science.prediction.signals import _zscore

# --- the solver ---------------------------------------------------------------------------


@pytest.mark.parametrize("l1_ratio", [0.1, 0.5, 0.9, 1.0])
def test_solver_equals_sklearn_paths(l1_ratio):
    rng = np.random.default_rng(1)
    m, p, T = 14, 40, 25
    X = _zscore(rng.standard_normal((m, p)))
    Y = rng.standard_normal((6, m))
    Y[:3] += 2 * X[:, :3].T  # some problems with real structure
    Yc = Y - Y.mean(axis=1, keepdims=True)
    amax = np.abs(Yc @ X).max(axis=1) / (m * l1_ratio)
    alphas = amax[:, None] * np.geomspace(1, 1e-3, T)[None, :]
    mu, lam = m * alphas * l1_ratio, m * alphas * (1 - l1_ratio)
    _, coefs, stats = enet_paths(X, Y, mu, lam, return_coefs=True)
    assert stats.fallbacks == 0
    for b in range(len(Y)):
        _, ref, _ = enet_path(
            X, Yc[b], l1_ratio=l1_ratio, alphas=alphas[b], tol=1e-13, max_iter=1_000_000
        )
        assert np.abs(coefs[b] - ref.T).max() < 1e-6


@pytest.mark.parametrize("l1_ratio", [0.5, 1.0])
@pytest.mark.parametrize("pdas_iter, max_iter", [(1, 500), (1, 0)])
def test_solver_monotone_and_fallback_paths_exact(l1_ratio, pdas_iter, max_iter):
    """Force the rarely needed branches: one active-set guess per grid point, then the
    monotone method (max_iter 500) or, with no monotone step allowed, coordinate descent
    polished by an exact solve on its support."""
    rng = np.random.default_rng(5)
    m, p, T = 12, 30, 20
    X = _zscore(rng.standard_normal((m, p)))
    Y = rng.standard_normal((4, m)) + 1.5 * X[:, :4].T
    Yc = Y - Y.mean(axis=1, keepdims=True)
    amax = np.abs(Yc @ X).max(axis=1) / (m * l1_ratio)
    alphas = amax[:, None] * np.geomspace(1, 1e-2, T)[None, :]
    mu, lam = m * alphas * l1_ratio, m * alphas * (1 - l1_ratio)
    _, coefs, stats = enet_paths(
        X, Y, mu, lam, return_coefs=True, pdas_iter=pdas_iter, max_iter=max_iter
    )
    assert (stats.monotone_steps if max_iter else stats.fallbacks) > 0
    for b in range(len(Y)):
        _, ref, _ = enet_path(
            X, Yc[b], l1_ratio=l1_ratio, alphas=alphas[b], tol=1e-13, max_iter=1_000_000
        )
        fit, fit_ref = X @ coefs[b].T, X @ ref
        assert np.abs(fit - fit_ref).max() < 1e-6
        if l1_ratio < 1:  # unique coefficients (the lasso's are unique only generically)
            assert np.abs(coefs[b] - ref.T).max() < 1e-6


@pytest.mark.parametrize("l1_ratio", [0.7, 1.0])
def test_solver_duplicate_columns(l1_ratio):
    """Identical columns (e.g. the arm and a constant feature's interaction with it) make the
    lasso's systems singular and its coefficients non-unique: the fitted values must still
    be scikit-learn's, and the elastic net (unique, equal split) its coefficients too."""
    rng = np.random.default_rng(9)
    m, T = 15, 25
    X = rng.standard_normal((m, 40))
    X[:, 7] = X[:, 3]
    X[:, 30] = -X[:, 12]
    X = _zscore(X)
    y = 2 * X[:, 3] - X[:, 12] + X[:, 20] + 0.5 * rng.standard_normal(m)
    yc = y - y.mean()
    alphas = np.abs(X.T @ yc).max() / (m * l1_ratio) * np.geomspace(1, 1e-3, T)
    mu, lam = m * alphas * l1_ratio, m * alphas * (1 - l1_ratio)
    _, coefs, stats = enet_paths(X, y[None], mu[None], lam[None], return_coefs=True)
    _, ref, _ = enet_path(X, yc, l1_ratio=l1_ratio, alphas=alphas, tol=1e-14, max_iter=1_000_000)
    assert stats.fallbacks == 0
    assert np.abs(X @ coefs[0].T - X @ ref).max() < 1e-6
    if l1_ratio < 1:
        assert np.abs(coefs[0] - ref.T).max() < 1e-6


def test_solver_rank_deficient_lasso():
    """Repeated rows (a bootstrap sample): rank(X) < m − 1, lasso must still be exact."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((8, 30))
    X = _zscore(base[rng.integers(0, 8, 16)])
    y = X[:, 0] * 2 + X[:, 5] + 0.3 * rng.standard_normal(16)
    y = y - y.mean()
    amax = np.abs(X.T @ y).max() / 16
    alphas = amax * np.geomspace(1, 1e-3, 30)
    _, coefs, _ = enet_paths(X, y[None], 16 * alphas[None], 0 * alphas[None], return_coefs=True)
    _, ref, _ = enet_path(X, y, l1_ratio=1.0, alphas=alphas, tol=1e-14, max_iter=1_000_000)
    fit = X @ coefs[0].T
    assert np.abs(fit - X @ ref).max() < 1e-6  # fitted values are unique for the lasso
