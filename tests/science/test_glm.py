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
