"""The batched AR(1) GLM and its t contrasts (kp_science.glm), checked against nilearn's run_glm."""

import numpy as np
import pytest

from kp_science.glm import fit_ar1_glm, t_contrasts
from tests.science.simulated_runs import _nilearn_t_contrasts


def _ar_targets(rng, design, phis):
    """One target per AR(1) coefficient in ``phis``: design effects + AR(1) noise."""
    from scipy.signal import lfilter

    noise = np.column_stack(
        [lfilter([1.0], [1.0, -phi], rng.standard_normal(len(design))) for phi in phis]
    )
    return design @ rng.uniform(-1, 1, (design.shape[1], len(phis))) + noise


@pytest.mark.parametrize("noise_model", ["ar1", "ols"])
def test_batched_glm_equals_nilearn_run_glm(noise_model):
    rng = np.random.default_rng(5)
    n = 150
    design = np.column_stack(
        [rng.standard_normal((n, 5)).cumsum(axis=0) * 0.1, rng.standard_normal((n, 2)), np.ones(n)]
    )
    y = _ar_targets(rng, design, [-0.5, -0.2, 0.0, 0.15, 0.35, 0.6, 0.9])
    vectors = rng.standard_normal((3, design.shape[1]))
    labels, effect, se, t = _nilearn_t_contrasts(y, design, vectors, noise_model)
    fit = fit_ar1_glm(y, design, noise_model)
    ours = t_contrasts(fit, vectors)
    if noise_model == "ar1":  # the targets' AR(1) estimates fall in distinct bins, one < 0
        np.testing.assert_array_equal(fit.rho, labels.astype(float))
        assert len(set(labels)) == y.shape[1] and fit.rho.min() < 0
    np.testing.assert_allclose(ours.effect, effect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.se, se, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.t, t, rtol=1e-10, atol=1e-12)
    assert np.all(fit.df_residuals == n - design.shape[1])


def test_batched_glm_designs_are_independent_and_singular_designs_match_nilearn():
    """A stack of designs gives each design's own fit (nilearn centres the AR residuals per
    run_glm call), and a rank-deficient design takes nilearn's pseudo-inverse solution."""
    rng = np.random.default_rng(6)
    n = 120
    base = np.column_stack([rng.standard_normal((n, 3)), np.ones(n)])
    singular = np.column_stack([base, base[:, 0] + base[:, 1]])  # rank 4 of 5 columns
    full = rng.standard_normal((n, 5))  # no constant: the residual means matter
    y = np.stack([_ar_targets(rng, d, [-0.3, 0.2, 0.5]) for d in (singular, full)])
    y[1] += [0.5, -2.0, 4.0]  # intercepts the second design leaves in the residuals
    vectors = np.array([[1.0, -1.0, 0, 0, 0], [0, 0, 1.0, 0, 0.5]])
    batched = t_contrasts(fit_ar1_glm(y, np.stack([singular, full])), vectors)
    for i, design in enumerate((singular, full)):
        _, effect, se, t = _nilearn_t_contrasts(y[i], design, vectors)
        np.testing.assert_allclose(batched.effect[i], effect, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(batched.se[i], se, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(batched.t[i], t, rtol=1e-9, atol=1e-11)


def test_zero_columns_count_in_the_dispersion_as_in_nilearn():
    """Columns that are zero in every design of a stack (a confound the confounds' rank
    lacks): beta 0 and no variance, as nilearn's pseudo-inverse gives, and counted in the
    dispersion's n − p as nilearn counts design columns."""
    rng = np.random.default_rng(7)
    n = 110
    designs = np.stack(
        [
            np.column_stack([rng.standard_normal((n, 2)), np.zeros(n), rng.standard_normal(n)])
            for _ in range(2)
        ]
    )
    designs = np.concatenate([designs, np.zeros((2, n, 2)), np.ones((2, n, 1))], axis=2)
    y = np.stack([_ar_targets(rng, d, [-0.2, 0.4, 0.7]) for d in designs])
    vectors = np.array([[1.0, 0, 0, 0, 0, 0, 0], [0, 1.0, 0, -1.0, 0, 0, 0]])
    fit = fit_ar1_glm(y, designs)
    assert np.all(fit.beta[..., [2, 4, 5]] == 0) and np.all(fit.cov[..., [2, 4, 5], :] == 0)
    batched = t_contrasts(fit, vectors)
    for i, design in enumerate(designs):
        _, effect, se, t = _nilearn_t_contrasts(y[i], design, vectors)
        np.testing.assert_allclose(batched.effect[i], effect, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(batched.se[i], se, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(batched.t[i], t, rtol=1e-10, atol=1e-12)
    # the same fit without the zero columns: the dispersion differs by (n − 4) / (n − 7)
    reduced = fit_ar1_glm(y, designs[..., [0, 1, 3, 6]])
    np.testing.assert_allclose(fit.dispersion * (n - 7), reduced.dispersion * (n - 4), rtol=1e-12)
