"""Reading first-level DCM posteriors from the warehouse tables (kp_science.dcm.group_tables):
one run per session as stored, several runs combined by Bayesian fixed effects."""

import numpy as np
import pandas as pd
import pytest

from kp_science.dcm import simulate_first_level
from kp_science.dcm.group_tables import bayesian_fixed_effects, first_level_posteriors


def _gaussian_posterior(pE, pP, y, L):
    """Posterior (mean, covariance) of θ ~ N(pE, pP⁻¹) observed as y ~ N(θ, L⁻¹)."""
    C = np.linalg.inv(pP + L)
    return C @ (pP @ pE + L @ y), C


def test_fixed_effects_of_runs_is_the_posterior_of_all_their_data():
    rng = np.random.default_rng(0)
    p = 3
    pE, pC = np.array([0.1, 0.0, -0.2]), np.diag([0.5, 1.0, 0.25])
    pP = np.linalg.inv(pC)
    runs, L_total, Ly_total = [], np.zeros((p, p)), np.zeros(p)
    for _ in range(3):
        G = rng.standard_normal((p, p))
        L = G @ G.T + p * np.eye(p)  # a run's data precision, correlated
        y = rng.standard_normal(p)
        runs.append(_gaussian_posterior(pE, pP, y, L))
        L_total, Ly_total = L_total + L, Ly_total + L @ y
    joint_C = np.linalg.inv(pP + L_total)
    joint_m = joint_C @ (pP @ pE + Ly_total)
    mean, cov = bayesian_fixed_effects([m for m, _ in runs], [c for _, c in runs], pE, pC)
    np.testing.assert_allclose(mean, joint_m, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, joint_C, rtol=1e-10, atol=1e-14)
    # one run is returned as it is
    one_m, one_C = bayesian_fixed_effects([runs[0][0]], [runs[0][1]], pE, pC)
    assert np.array_equal(one_m, runs[0][0]) and np.array_equal(one_C, runs[0][1])


def test_posteriors_that_did_not_come_from_the_prior_cannot_be_combined():
    pE, pC = np.zeros(2), np.eye(2)
    # run posteriors wider than the prior: the combined precision Σ P_i − P0 is negative
    with pytest.raises(ValueError, match="not positive definite"):
        bayesian_fixed_effects([np.zeros(2)] * 2, [4 * np.eye(2)] * 2, pE, pC)


def _with_second_run(fits, params, pid, session, donor, converged=True):
    """The tables with a run 2 of ``pid`` ``session``: the ``donor``'s posterior of that
    session under ``pid``'s name (so the two runs differ)."""
    new_fit = fits[(fits.participant_id == donor) & (fits.session == session)].assign(
        participant_id=pid, run=2, converged=converged, free_energy=-123.5
    )
    new_params = params[(params.participant_id == donor) & (params.session == session)].assign(
        participant_id=pid, run=2
    )
    return (
        pd.concat([fits, new_fit], ignore_index=True),
        pd.concat([params, new_params], ignore_index=True),
    )


def _run_posterior(fits, params, pid, session, run):
    fit = fits[(fits.participant_id == pid) & (fits.session == session) & (fits.run == run)]
    (fit,) = fit.itertuples()
    table = params[
        (params.participant_id == pid) & (params.session == session) & (params.run == run)
    ].set_index("parameter")
    names = list(fit.free_parameters)
    cov = np.array([list(r) for r in fit.covariance])
    return names, table.loc[names, "mean"].to_numpy(float), cov, float(fit.free_energy)


def test_single_runs_are_read_as_stored():
    fits, params, _ = simulate_first_level(4, seed=1)
    first = first_level_posteriors(fits, params)
    assert len(first.posteriors) == 8
    names, mean, cov, F = _run_posterior(fits, params, "sub-03", "post", 1)
    index = [names.index(n) for n in first.names]
    got_mean, got_cov, got_F, converged = first.posteriors[("sub-03", "post")]
    assert np.array_equal(got_mean, mean[index])
    assert np.array_equal(got_cov, cov[np.ix_(index, index)])
    assert got_F == F and converged


def test_runs_of_a_session_are_combined_by_bayesian_fixed_effects():
    fits, params, _ = simulate_first_level(4, seed=1)
    before = first_level_posteriors(fits, params)
    fits2, params2 = _with_second_run(fits, params, "sub-01", "pre", donor="sub-02")
    first = first_level_posteriors(fits2, params2)

    names, m1, C1, F1 = _run_posterior(fits2, params2, "sub-01", "pre", 1)
    _, m2, C2, F2 = _run_posterior(fits2, params2, "sub-01", "pre", 2)
    prior = params2[params2.participant_id == "sub-01"].groupby("parameter").first()
    pE = prior.loc[names, "prior_mean"].to_numpy(float)
    pC = np.diag(prior.loc[names, "prior_variance"].to_numpy(float))
    # by hand, over every free parameter: P = P1 + P2 − P0, μ = P⁻¹(P1 μ1 + P2 μ2 − P0 pE)
    P0, P1, P2 = np.linalg.inv(pC), np.linalg.inv(C1), np.linalg.inv(C2)
    C = np.linalg.inv(P1 + P2 - P0)
    m = C @ (P1 @ m1 + P2 @ m2 - P0 @ pE)
    index = [names.index(n) for n in first.names]

    mean, cov, F, converged = first.posteriors[("sub-01", "pre")]
    np.testing.assert_allclose(mean, m[index], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cov, C[np.ix_(index, index)], rtol=1e-9, atol=1e-14)
    assert F == pytest.approx(F1 + F2) and converged
    # more precise than either run alone, and not the first run's posterior any more
    assert (np.diag(cov) < np.diag(C1[np.ix_(index, index)])).all()
    assert not np.allclose(mean, before.posteriors[("sub-01", "pre")][0])
    # every other session is as it was, bit for bit
    for key, (m0, c0, f0, ok0) in before.posteriors.items():
        if key != ("sub-01", "pre"):
            m_, c_, f_, ok_ = first.posteriors[key]
            assert np.array_equal(m_, m0) and np.array_equal(c_, c0) and (f_, ok_) == (f0, ok0)
    assert np.array_equal(first.pE, before.pE) and np.array_equal(first.pC, before.pC)

    # a run that did not converge leaves the session unconverged
    fits3, params3 = _with_second_run(fits, params, "sub-01", "pre", "sub-02", converged=False)
    assert not first_level_posteriors(fits3, params3).posteriors[("sub-01", "pre")][3]


def test_a_run_without_its_parameters_is_named():
    fits, params, _ = simulate_first_level(2, seed=1)
    fits2, params2 = _with_second_run(fits, params, "sub-01", "post", donor="sub-02")
    params2 = params2[~((params2.run == 2) & (params2.parameter == "decay"))]
    with pytest.raises(ValueError, match="sub-01 session post run 2"):
        first_level_posteriors(fits2, params2)
