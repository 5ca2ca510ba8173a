"""Parametric empirical Bayes (kp_science.dcm.peb), checked against SPM12."""

import numpy as np
import pytest

from kp_science.dcm import empirical_posteriors, estimate_peb
from kp_science.dcm.peb import _data, _terms, precision_components
from tests.science.dcm.spm12_peb import _fixture, _inputs, _peb

# --- parity with SPM12 ------------------------------------------------------------------------


def test_peb_matches_spm12():
    fx, peb = _fixture(), _peb()
    assert peb.converged
    spm_Ep = np.array(fx["peb"]["Ep"])
    assert peb.Ep.shape == spm_Ep.shape == (6, 2)
    np.testing.assert_allclose(peb.Ep, spm_Ep, rtol=0, atol=0.02)
    assert peb.F == pytest.approx(fx["peb"]["F"], rel=0.01)
    # posterior SDs and correlations close too
    spm_Cp = np.array(fx["peb"]["Cp"])
    np.testing.assert_allclose(np.sqrt(np.diag(peb.Cp)), np.sqrt(np.diag(spm_Cp)), rtol=0.1)
    assert np.all(np.linalg.eigvalsh(peb.Cp) > 0)
    # the planted covariate effects have SPM's signs
    assert peb.Ep[2, 1] < 0 and peb.Ep[4, 1] < 0


# --- PEB internals ------------------------------------------------------------------------------


def test_peb_gradient_and_hessian_are_exact():
    qE, qC, pE, pC, X, _ = _inputs()
    Q = precision_components(pC, "all")
    data = _data(qE, qC, pE, pC, X, Q)
    rng = np.random.default_rng(0)
    theta = np.r_[rng.normal(0, 0.1, 12), rng.normal(0, 0.2, 6)]

    def split(t):
        return t[:12].reshape(6, 2, order="F"), t[12:]

    _, grad, H = _terms(data, *split(theta))
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
