"""Bayesian model reduction and the model search (kp_science.dcm.reduction)."""

import numpy as np
import pytest

from kp_science.dcm import compare_models, reduce_peb, reduce_posterior, search_reduced_models
from kp_science.dcm.reduction import all_subsets
from tests.science.dcm.spm12_peb import _fixture, _peb

# SPM's first greedy round: the eight effects whose single removal costs least evidence
SPM_FIRST_ROUND = [0, 3, 5, 6, 7, 9, 10, 11]


# --- Bayesian model reduction against brute force ----------------------------------------------


def _linear_model(rng, n=5, n_obs=12, fixed=()):
    """A linear-Gaussian model y = Jθ + e with exact posterior and evidence."""
    J = rng.standard_normal((n_obs, n))
    Ce = np.diag(rng.uniform(0.5, 2.0, n_obs))
    pE = rng.normal(0, 0.3, n)
    var = rng.uniform(0.5, 2.0, n)
    var[list(fixed)] = 0.0
    pC = np.diag(var)
    y = J @ rng.normal(0, 1, n) + rng.multivariate_normal(np.zeros(n_obs), Ce)
    return J, Ce, y, pE, pC


def _exact(J, Ce, y, mE, mC):
    """Posterior mean/cov and log evidence of y = Jθ + e under θ ~ N(mE, mC) (mC may be
    singular): computed in covariance form, no inversion of mC."""
    S = J @ mC @ J.T + Ce
    r = y - J @ mE
    K = mC @ J.T @ np.linalg.inv(S)
    lnZ = -0.5 * (r @ np.linalg.solve(S, r) + np.linalg.slogdet(2 * np.pi * S)[1])
    return mE + K @ r, mC - K @ J @ mC, lnZ


def _shrunk_posterior(n_null: int, ratio: float, effects=(2.0, -1.5, 1.8, 2.5)):
    """Unit-variance priors; the data shrink n_null parameters to 0 (posterior variance
    prior/ratio) and pin the others at clear non-zero values."""
    n = n_null + len(effects)
    qE = np.r_[np.zeros(n_null), effects]
    qC = np.diag(np.r_[np.full(n_null, 1.0 / ratio), np.full(len(effects), 0.01)])
    return np.zeros(n), np.eye(n), qE, qC


def test_reduction_and_averaging_match_spm12():
    fx, red = _fixture(), reduce_peb(_peb())
    np.testing.assert_allclose(red.Pp.ravel(order="F"), fx["bma"]["Pp"], rtol=0, atol=3e-5)
    # SPM's averaged means are the mean of 1,000 random draws from the models' posteriors:
    # they agree within four of its Monte Carlo standard errors (a switched-off effect is
    # exactly 0 here, about 1e-6 in SPM, whose reduction gives it a precision of 1e8)
    mc_error = np.sqrt(np.diag(red.Cp) / 1000)
    diff = np.abs(red.Ep.ravel(order="F") - np.array(fx["bma"]["Ep"]))
    np.testing.assert_array_less(diff, 4 * mc_error + 1e-5)
    # SPM's final model space: effects 1, 2, 4, 8 free, the other eight switched off
    assert np.flatnonzero(~red.search.removed).tolist() == [1, 2, 4, 8]


def test_joint_removal_is_what_switches_effect_6_off():
    # SPM's greedy round first tries switching all eight candidates off together; that gains
    # more than one nat per candidate, so they go at once -- although the best model of the
    # round's 256 subsets keeps effect 6 (A(1,1) x covariate). Without the joint step the
    # search would keep it, and its Pp would be ~0.66 against SPM's 0.
    peb = _peb()
    pE, pC = peb.prior_mean.ravel(order="F"), peb.prior_cov
    qE, qC = peb.Ep.ravel(order="F"), peb.Cp
    off = np.zeros(12)
    single = ~np.eye(12, dtype=bool)
    dF1 = compare_models(pE, pC, qE, qC, single, off_mean=off).dF
    pool = np.sort(np.argsort(-dF1)[:8])
    assert pool.tolist() == SPM_FIRST_ROUND
    joint = np.ones((2, 12), bool)
    joint[0, pool] = False
    dF_joint = compare_models(pE, pC, qE, qC, joint, off_mean=off).dF
    assert dF_joint[0] - dF_joint[1] > 8
    subsets = np.ones((256, 12), bool)
    subsets[:, pool] = all_subsets(8)
    best = compare_models(pE, pC, qE, qC, subsets, off_mean=off).best
    assert best[6] and not best[pool[pool != 6]].any()


@pytest.mark.parametrize("seed", range(4))
def test_reduce_posterior_equals_direct_inversion(seed):
    rng = np.random.default_rng(seed)
    J, Ce, y, pE, pC = _linear_model(rng, fixed=(4,))
    qE, qC, lnZ_full = _exact(J, Ce, y, pE, pC)
    cases = []
    A = rng.standard_normal((4, 4))
    rC = np.zeros((5, 5))
    rC[:4, :4] = A @ A.T / 4 + 0.05 * np.eye(4)  # a correlated reduced prior
    rE = pE.copy()
    rE[:4] += rng.normal(0, 0.2, 4)
    cases.append((rE, rC))
    D = np.diag([1.0, 0.0, 1.0, 0.0, 0.0])  # switch parameters 1 and 3 off
    rE = pE.copy()
    rE[1] = 0.0
    cases.append((rE, D @ pC @ D))
    cases.append((pE, np.zeros((5, 5))))  # everything off
    for rE, rC in cases:
        red = reduce_posterior(pE, pC, qE, qC, rE, rC)
        sE, sC, lnZ = _exact(J, Ce, y, rE, rC)
        assert red.dF == pytest.approx(lnZ - lnZ_full, abs=1e-8)
        np.testing.assert_allclose(red.Ep, sE, atol=1e-9)
        np.testing.assert_allclose(red.Cp, sC, atol=1e-9)


def test_reduce_posterior_matches_precision_form():
    # the precision-form formula of docs/dcm-model.md, where every covariance is invertible
    rng = np.random.default_rng(7)
    n = 6
    A, B = rng.standard_normal((2, n, n))
    pC, rC = A @ A.T / n + np.eye(n), B @ B.T / n + 0.2 * np.eye(n)
    pE, rE = rng.normal(size=(2, n))
    J = rng.standard_normal((9, n))
    qP = np.linalg.inv(pC) + J.T @ J
    qC, qE = np.linalg.inv(qP), rng.normal(size=n)
    pP, rP = np.linalg.inv(pC), np.linalg.inv(rC)
    sP = qP + rP - pP
    sC = np.linalg.inv(sP)
    sE = sC @ (qP @ qE + rP @ rE - pP @ pE)
    dF = 0.5 * np.linalg.slogdet(rP @ qP @ sC @ pC)[1] - 0.5 * (
        qE @ qP @ qE + rE @ rP @ rE - pE @ pP @ pE - sE @ sP @ sE
    )
    red = reduce_posterior(pE, pC, qE, qC, rE, rC)
    assert red.dF == pytest.approx(dF, abs=1e-9)
    np.testing.assert_allclose(red.Ep, sE, atol=1e-10)
    np.testing.assert_allclose(red.Cp, sC, atol=1e-10)


def test_reduce_posterior_rejects_freeing_a_fixed_parameter():
    rng = np.random.default_rng(1)
    J, Ce, y, pE, pC = _linear_model(rng, fixed=(2,))
    qE, qC, _ = _exact(J, Ce, y, pE, pC)
    with pytest.raises(ValueError, match="fixes"):
        reduce_posterior(pE, pC, qE, qC, pE, np.eye(5))
    shifted = pE.copy()
    shifted[2] += 1.0
    with pytest.raises(ValueError, match="fixes"):
        reduce_posterior(pE, pC, qE, qC, shifted, pC)
    with pytest.raises(ValueError, match="shape"):
        reduce_posterior(pE, pC, qE[:3], qC, pE, pC)


def test_all_subsets_search_equals_brute_force():
    rng = np.random.default_rng(3)
    J, Ce, y, pE, pC = _linear_model(rng, n=6, n_obs=10, fixed=(5,))
    qE, qC, lnZ_full = _exact(J, Ce, y, pE, pC)
    search = search_reduced_models(pE, pC, qE, qC)
    assert search.rounds == 1 and search.n_models == 32  # 5 free: one exhaustive round
    lnZ = []
    for present in search.average.models:
        rC = np.diag(np.diag(pC) * present)
        lnZ.append(_exact(J, Ce, y, pE, rC)[2] - lnZ_full)
    np.testing.assert_allclose(search.average.dF, lnZ, atol=1e-8)
    w = np.exp(np.array(lnZ) - max(lnZ))
    w /= w.sum()
    np.testing.assert_allclose(search.Pp[:5], w @ search.average.models[:, :5], atol=1e-10)
    assert search.Pp[5] == 0.0  # fixed parameter
    np.testing.assert_allclose(search.average.posterior.sum(), 1.0)
    # model averaging: mixture mean of the reduced posteriors
    means = [_exact(J, Ce, y, pE, np.diag(np.diag(pC) * m))[0] for m in search.average.models]
    np.testing.assert_allclose(search.Ep, w @ np.array(means), atol=1e-9)


def test_greedy_search_prunes_null_parameters():
    rng = np.random.default_rng(5)
    n = 14  # more than 8 candidates: greedy rounds
    J = rng.standard_normal((60, n))
    truth = np.zeros(n)
    truth[[0, 3, 7]] = [1.5, -1.0, 2.0]
    y = J @ truth + 0.5 * rng.standard_normal(60)
    pE, pC = np.zeros(n), np.eye(n)
    qE, qC, _ = _exact(J, 0.25 * np.eye(60), y, pE, pC)
    search = search_reduced_models(pE, pC, qE, qC)
    assert search.rounds >= 2
    assert np.all(search.Pp[[0, 3, 7]] > 0.99)
    assert np.all(search.Pp[search.removed] == 0.0)
    assert search.Pp[np.setdiff1d(np.arange(n), [0, 3, 7])].max() < 0.5
    # candidates restrict the search; the others stay present
    keep = np.ones(n, bool)
    keep[1] = False
    assert search_reduced_models(pE, pC, qE, qC, candidates=keep).Pp[1] == pytest.approx(1.0)


def test_greedy_round_removes_a_plainly_redundant_pool_at_once():
    # 36 null + 4 real parameters. Switching one null parameter off gains ½ln(100) = 2.3
    # nats, more than the one nat per parameter the joint step asks, so every round removes
    # its pool together: pools of max(n/4, 8) = 10, 8, 8, 8 (40, 30, 22, 14 candidates), then
    # the last 6 are scored exhaustively.
    search = search_reduced_models(*_shrunk_posterior(36, 100.0))
    assert search.rounds == 5
    assert search.n_models == (40 + 2) + (30 + 2) + (22 + 2) + (14 + 2) + 2**6
    np.testing.assert_allclose(search.Pp[36:], 1.0)
    assert search.Pp[:36].max() < 0.5


def test_greedy_round_scores_subsets_when_the_joint_gain_is_small():
    # ½ln(2) = 0.35 nats per null parameter: the pool gains less than a nat per parameter,
    # so each round scores all 2^8 subsets of its 8 least costly candidates
    search = search_reduced_models(*_shrunk_posterior(12, 2.0))
    assert search.rounds == 2
    assert search.n_models == (16 + 2 + 256) + 2**8
    np.testing.assert_allclose(search.Pp[12:], 1.0)
