"""Group-level DCM: Bayesian model reduction, PEB (parity with SPM12) and the study designs."""

from functools import cache

import numpy as np
import pandas as pd
import pytest

from kp_science.dcm import (
    GroupDCMConfig,
    compare_models,
    empirical_posteriors,
    estimate_peb,
    group_dcm,
    reduce_peb,
    reduce_posterior,
    search_reduced_models,
    simulate_first_level,
)
from kp_science.dcm.group import contrast_posterior
from kp_science.dcm.peb import _data, _terms, precision_components
from kp_science.dcm.reduction import all_subsets, free_energy_change
from tests.spm12 import spm12_fixture

# SPM's first greedy round: the eight effects whose single removal costs least evidence
SPM_FIRST_ROUND = [0, 3, 5, 6, 7, 9, 10, 11]


def _fixture() -> dict:
    return spm12_fixture("spm12_peb", "dev_peb_12subjects")


@cache
def _inputs():
    fx = _fixture()
    idx = np.array(fx["peb"]["Pind"]) - 1
    pE = np.array(fx["pE"])[idx]
    pC = np.diag(np.array(fx["pC"])[idx])
    qE = np.array([np.array(s["Ep"])[idx] for s in fx["subjects"]])
    qC = np.array([np.array(s["Cp"])[np.ix_(idx, idx)] for s in fx["subjects"]])
    F = np.array([s["F"] for s in fx["subjects"]])
    return qE, qC, pE, pC, np.array(fx["X"], float), F


@cache
def _peb():
    qE, qC, pE, pC, X, F = _inputs()
    return estimate_peb(qE, qC, pE, pC, X, F_first=F, parameters=_fixture()["peb"]["Pnames"])


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


def test_reduction_and_averaging_match_spm12():
    fx, red = _fixture(), reduce_peb(_peb())
    np.testing.assert_allclose(red.Pp.ravel(order="F"), fx["bma"]["Pp"], rtol=0, atol=0.05)
    np.testing.assert_allclose(red.Ep.ravel(order="F"), fx["bma"]["Ep"], rtol=0, atol=0.02)
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
    dF = (0.5 * np.linalg.slogdet(rP @ qP @ sC @ pC)[1]
          - 0.5 * (qE @ qP @ qE + rE @ rP @ rE - pE @ pP @ pE - sE @ sP @ sE))
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


def _shrunk_posterior(n_null: int, ratio: float, effects=(2.0, -1.5, 1.8, 2.5)):
    """Unit-variance priors; the data shrink n_null parameters to 0 (posterior variance
    prior/ratio) and pin the others at clear non-zero values."""
    n = n_null + len(effects)
    qE = np.r_[np.zeros(n_null), effects]
    qC = np.diag(np.r_[np.full(n_null, 1.0 / ratio), np.full(len(effects), 0.01)])
    return np.zeros(n), np.eye(n), qE, qC


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
    num_g = [(_terms(data, *split(theta + e), False)[0].sum()
              - _terms(data, *split(theta - e), False)[0].sum()) / (2 * eps) for e in steps]
    num_H = [(_terms(data, *split(theta + e), False)[1]
              - _terms(data, *split(theta - e), False)[1]) / (2 * eps) for e in steps]
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
    E2, _, dF2 = empirical_posteriors(peb, full_qE, full_qC, np.array(fx["pE"])[free],
                                      np.diag(np.array(fx["pC"])[free]), index)
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


# --- the study designs --------------------------------------------------------------------------


@cache
def _synthetic(n: int = 24, seed: int = 2):
    return simulate_first_level(n, seed, change={"A[vmpfc->amygdala]": 0.15},
                                baseline={"B[emotional][amygdala->vmpfc]": -0.25})


def test_group_designs_recover_planted_effects():
    fits, params, clinical = _synthetic()
    result = group_dcm(fits, params, clinical)
    effects = result.effects.set_index(["analysis", "covariate", "parameter"])
    assert result.excluded.empty
    assert set(effects.index.get_level_values("analysis")) == {"longitudinal", "baseline"}
    # 2 A connections between regions + 2 B parameters (self-connections are left out by
    # default) × (4 covariates + 2 within-arm slopes)
    assert len(effects) == 2 * 4 * 6
    assert not any("amygdala->amygdala" in p or "vmpfc->vmpfc" in p
                   for p in effects.index.get_level_values("parameter"))
    change = effects.loc[("longitudinal", "caps5_improvement", "A[vmpfc->amygdala]")]
    assert change["peb_mean"] > 0 and change["mean"] > 0 and change["Pp"] > 0.9
    base = effects.loc[("baseline", "caps5_improvement", "B[emotional][amygdala->vmpfc]")]
    assert base["peb_mean"] < 0 and base["mean"] < 0 and base["Pp"] > 0.9
    # the group means are those simulated (A[amygdala->vmpfc] 0.3 at baseline)
    mean = effects.loc[("baseline", "mean", "A[amygdala->vmpfc]")]
    assert mean["peb_mean"] == pytest.approx(0.3, abs=0.05)
    assert np.all((effects["Pp"] >= 0) & (effects["Pp"] <= 1))
    assert (effects["n_participants"] == 24).all()


def test_non_converged_and_incomplete_participants_are_listed():
    fits, params, clinical = _synthetic()
    fits = fits.copy()
    fits.loc[(fits.participant_id == "sub-03") & (fits.session == "post"), "converged"] = False
    fits = fits[~((fits.participant_id == "sub-05") & (fits.session == "post"))]
    clinical = clinical.copy()
    clinical.loc[clinical.participant_id == "sub-07", "caps5_improvement"] = np.nan
    result = group_dcm(fits, params, clinical)
    excluded = result.excluded.set_index(["analysis", "participant_id"])["reason"]
    assert "did not converge" in excluded[("longitudinal", "sub-03")]
    assert "no first-level DCM of session post" in excluded[("longitudinal", "sub-05")]
    assert "improvement" in excluded[("longitudinal", "sub-07")]
    assert "improvement" in excluded[("baseline", "sub-07")]
    assert ("baseline", "sub-03") not in excluded.index  # its pre fit converged
    assert len(result.analyses["longitudinal"].participants) == 21
    assert len(result.analyses["baseline"].participants) == 23


def test_different_model_structures_are_an_error():
    fits, params, clinical = _synthetic()
    fits = fits.copy()
    odd = fits.participant_id.isin(["sub-04", "sub-09"])
    fits.loc[odd, "free_parameters"] = pd.Series(
        [list(f)[:-1] for f in fits.loc[odd, "free_parameters"]], index=fits.index[odd])
    with pytest.raises(ValueError, match="sub-04, sub-09"):
        group_dcm(fits, params, clinical)
    params = params.copy()
    params.loc[(params.participant_id == "sub-11")
               & (params.parameter == "B[emotional][vmpfc->amygdala]"), "prior_variance"] = 0.5
    with pytest.raises(ValueError, match="sub-11"):
        group_dcm(*_synthetic()[:1], params, clinical)


def test_too_few_participants_is_an_error():
    fits, params, clinical = simulate_first_level(5, seed=1)
    fits = fits.copy()
    fits.loc[fits.participant_id.isin(["sub-01", "sub-02"]), "converged"] = False
    with pytest.raises(ValueError, match="3 participants are fewer than the 4 second-level"):
        group_dcm(fits, params, clinical, GroupDCMConfig(analyses=("baseline",)))


def test_group_configuration_errors():
    fits, params, clinical = _synthetic()
    with pytest.raises(ValueError, match="unknown analysis"):
        group_dcm(fits, params, clinical, GroupDCMConfig(analyses=("pooled",)))
    with pytest.raises(ValueError, match="not free parameters"):
        group_dcm(fits, params, clinical, GroupDCMConfig(parameters=("A[x->y]",)))
    two = pd.concat([fits, fits.assign(model="other")])
    with pytest.raises(ValueError, match="choose one"):
        group_dcm(two, params, clinical)
    with pytest.raises(ValueError, match="unknown change method 'ratio'"):
        group_dcm(fits, params, clinical, GroupDCMConfig(change="ratio"))


def test_change_as_difference_or_within_participant_peb():
    """Both ways of forming the change find the planted change effect."""
    fits, params, clinical = _synthetic()
    key = ("longitudinal", "caps5_improvement", "A[vmpfc->amygdala]")
    for change in ("difference", "within_peb"):
        result = group_dcm(fits, params, clinical, GroupDCMConfig(change=change))
        effect = result.effects.set_index(["analysis", "covariate", "parameter"]).loc[key]
        assert effect["peb_mean"] > 0 and effect["Pp"] > 0.9, (change, effect)
        analysis = result.analyses["longitudinal"]
        assert bool(analysis.within) == (change == "within_peb")


def test_within_arm_slope_is_the_contrast_of_improvement_and_interaction():
    fits, params, clinical = _synthetic()
    result = group_dcm(fits, params, clinical)
    effects = result.effects.set_index(["analysis", "covariate", "parameter"])
    peb = result.analyses["baseline"].peb
    p = len(peb.parameters)
    for i, name in enumerate(peb.parameters):
        slope, interaction = peb.Ep[i, 1], peb.Ep[i, 3]
        for arm, code in (("ketamine", 0.5), ("midazolam", -0.5)):
            row = effects.loc[("baseline", f"caps5_improvement[{arm}]", name)]
            assert row["mean"] == pytest.approx(slope + code * interaction, abs=1e-12)
            assert 0.0 <= row["Pp"] <= 1.0
    # a one-hot contrast is the BMR of switching that single effect off
    one = np.zeros(peb.Ep.size)
    one[1 * p + 2] = 1.0  # improvement effect on the third parameter
    _, _, pp = contrast_posterior(peb, one)
    keep = np.ones(peb.Ep.size)
    keep[1 * p + 2] = 0.0
    pE, pC = peb.prior_mean.ravel(order="F"), peb.prior_cov
    rC = pC * np.outer(keep, keep)
    dF = free_energy_change(pE, pC, peb.Ep.ravel(order="F"), peb.Cp, pE * keep, rC)
    assert pp == pytest.approx(1.0 / (1.0 + np.exp(dF)), abs=1e-9)
