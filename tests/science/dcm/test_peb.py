"""Parametric empirical Bayes (kp_science.dcm.peb), checked against SPM12."""

import numpy as np
import pytest
from scipy.linalg import expm

from kp_science.dcm import empirical_posteriors, estimate_peb
from kp_science.dcm.peb import (
    BETA,
    SPM_FLOOR,
    _data,
    _expm_step,
    _Point,
    _spm12_fisher_scoring,
    _terms,
    precision_components,
)
from tests.science.dcm.spm12_peb import _fixture, _inputs, _peb

# --- parity with SPM12 ------------------------------------------------------------------------


def test_peb_matches_spm12():
    fx, peb = _fixture(), _peb()
    assert peb.method == "spm12" and peb.converged
    spm_Ep = np.array(fx["peb"]["Ep"])
    assert peb.Ep.shape == spm_Ep.shape == (6, 2)
    np.testing.assert_allclose(peb.Ep, spm_Ep, rtol=0, atol=1e-6)
    assert peb.F == pytest.approx(fx["peb"]["F"], rel=0, abs=1e-3)
    # posterior SDs and the whole covariance (SPM's, conditional on the precisions)
    spm_Cp = np.array(fx["peb"]["Cp"])
    np.testing.assert_allclose(np.sqrt(np.diag(peb.Cp)), np.sqrt(np.diag(spm_Cp)), rtol=2e-4)
    np.testing.assert_allclose(peb.Cp, spm_Cp, rtol=0, atol=2e-6)
    assert np.all(np.linalg.eigvalsh(peb.Cp) > 0)
    # the planted covariate effects have SPM's signs
    assert peb.Ep[2, 1] < 0 and peb.Ep[4, 1] < 0


def test_exact_method_is_the_maximum_and_differs_from_spm12_as_documented():
    qE, qC, pE, pC, X, F = _inputs()
    spm, exact = _peb(), estimate_peb(qE, qC, pE, pC, X, F_first=F, method="exact")
    assert exact.method == "exact" and exact.converged
    assert np.all(exact.floor == 0)
    np.testing.assert_allclose(spm.floor, SPM_FLOOR * BETA * np.linalg.inv(pC))
    # at its maximum the gradient of the log joint vanishes
    data = _data(qE, qC, pE, pC, X, exact.components)
    _, grad, H = _terms(data, exact.Ep, exact.Eh)
    assert H is not None
    prior_P = np.linalg.inv(exact.prior_cov)
    grad_B = grad[:12] - prior_P @ (exact.Ep - exact.prior_mean).ravel(order="F")
    assert np.abs(grad_B).max() < 1e-6
    # its Cp is marginal over the log-precision: wider than the conditional SPM12 reports
    conditional = np.linalg.inv(-(H[:12, :12] - prior_P))
    assert np.all(np.diag(exact.Cp) > np.diag(conditional))
    # SPM12 widens the posteriors and floors the precision: the estimates differ
    assert 1e-3 < np.abs(exact.Ep - spm.Ep).max() < 0.02
    # SPM12's stopping rule is never met before its fifth iteration
    early = estimate_peb(qE, qC, pE, pC, X, max_iter=4)
    assert early.n_iter == 4 and not early.converged


def test_spm12_step_is_the_regularised_newton_step():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((5, 5))
    H = -(A @ A.T + 0.5 * np.eye(5))
    g = rng.standard_normal(5)
    for log_time in (-4.0, 0.0, 2.0):
        # the definition: the matrix exponential of the augmented matrix [[0, 0], [τg, τH]]
        tau = np.exp(log_time - np.linalg.slogdet(H)[1] / 5)
        J = np.zeros((6, 6))
        J[1:, 0], J[1:, 1:] = tau * g, tau * H
        np.testing.assert_allclose(_expm_step(H, g, log_time), expm(J)[1:, 0], rtol=1e-10)
    # a long integration time is Newton's step
    np.testing.assert_allclose(_expm_step(H, g, 12.0), -np.linalg.solve(H, g), rtol=1e-8)


def test_spm12_schedule_restores_the_best_point_after_a_worse_one():
    # a concave quadratic in (β, γ); the second point evaluated is scored badly on purpose
    A = np.array([[3.0, 0.5], [0.5, 1.0]])
    b = np.array([1.0, -0.5])
    thetas = []

    def evaluate(theta):
        thetas.append(theta.copy())
        F = -0.5 * theta @ A @ theta + b @ theta - (100.0 if len(thetas) == 2 else 0.0)
        return _Point(theta=theta, F=F, grad=b - A @ theta, H=-A, dF=np.zeros(1))

    theta, _, n_iter, converged = _spm12_fisher_scoring(evaluate, np.zeros(2), 1, 64)
    # after the rejection t falls from -3.75 to its floor -4 and the step, taken from the
    # rejected point's gradient, starts again from the first point; γ moves by tanh
    step = _expm_step(-A, b - A @ thetas[1], -4.0)
    np.testing.assert_allclose(thetas[2], thetas[0] + [step[0], np.tanh(step[1])])
    # then it climbs to the maximum and stops once the gain is below 1e-4 nats
    assert converged and 5 <= n_iter < 64
    assert np.abs(theta - np.linalg.solve(A, b)).max() < 0.02


# --- PEB internals ------------------------------------------------------------------------------


def test_peb_gradient_and_hessian_are_exact():
    qE, qC, pE, pC, X, _ = _inputs()
    Q = precision_components(pC, "all")
    # with SPM12's precision floor, which does not depend on the log-precisions
    data = _data(qE, qC, pE, pC, X, Q, SPM_FLOOR * BETA * np.linalg.inv(pC))
    rng = np.random.default_rng(0)
    theta = np.r_[rng.normal(0, 0.1, 12), rng.normal(0, 0.2, 6)]

    def split(t):
        return t[:12].reshape(6, 2, order="F"), t[12:]

    _, grad, H = _terms(data, *split(theta))
    assert H is not None
    eps = 1e-6
    steps = np.eye(theta.size) * eps
    num_g = [
        (
            _terms(data, *split(theta + e), False)[0].sum()
            - _terms(data, *split(theta - e), False)[0].sum()
        )
        / (2 * eps)
        for e in steps
    ]
    num_H = [
        (_terms(data, *split(theta + e), False)[1] - _terms(data, *split(theta - e), False)[1])
        / (2 * eps)
        for e in steps
    ]
    np.testing.assert_allclose(num_g, grad, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.array(num_H), H, rtol=1e-5, atol=1e-4 * np.abs(H).max())


def test_empirical_posteriors_shrink_towards_the_group():
    qE, qC, pE, pC, X, _ = _inputs()
    peb = _peb()
    Ep, Cp, dF = empirical_posteriors(peb, qE, qC)
    np.testing.assert_allclose(dF, peb.dF, atol=1e-8)
    # the empirical prior's precision includes SPM12's floor
    np.testing.assert_allclose(
        peb.random_precision,
        np.exp(peb.Eh[0]) * peb.components[0] + SPM_FLOOR * BETA * np.linalg.inv(pC),
    )
    group = peb.empirical_prior_means
    assert np.abs(Ep - group).mean() < np.abs(qE - group).mean()
    assert np.all(np.diagonal(Cp, axis1=1, axis2=2) < np.diagonal(qC, axis1=1, axis2=2))
    # with the other first-level parameters carried along (independent a priori)
    fx = _fixture()
    free = np.flatnonzero(np.array(fx["pC"]) > 0)
    full_qE = np.array([np.array(s["Ep"])[free] for s in fx["subjects"]])
    full_qC = np.array([np.array(s["Cp"])[np.ix_(free, free)] for s in fx["subjects"]])
    index = [int(np.flatnonzero(free == i)[0]) for i in np.array(fx["peb"]["Pind"]) - 1]
    E2, _, dF2 = empirical_posteriors(
        peb, full_qE, full_qC, np.array(fx["pE"])[free], np.diag(np.array(fx["pC"])[free]), index
    )
    np.testing.assert_allclose(dF2, dF, atol=1e-8)
    np.testing.assert_allclose(E2[:, index], Ep, atol=1e-9)


def test_peb_input_errors():
    qE, qC, pE, pC, X, _ = _inputs()
    with pytest.raises(ValueError, match="fewer than the 2 second-level"):
        estimate_peb(qE[:1], qC[:1], pE, pC, X[:1])
    with pytest.raises(ValueError, match="constant"):
        estimate_peb(qE, qC, pE, pC, X[:, ::-1])
    bad = pC.copy()
    bad[0, 0] = 0.0
    with pytest.raises(ValueError, match="zero prior variance"):
        estimate_peb(qE, qC, pE, bad, X)
    with pytest.raises(ValueError, match="rank deficient"):
        estimate_peb(qE, qC, pE, pC, np.column_stack([X, X[:, 1]]))
