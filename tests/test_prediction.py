"""Elastic-net prediction (issue 4): solver exactness, LOO selection, variants, evaluation,
tables. Small grids and few permutations keep the file fast."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import ElasticNet, enet_path
from sklearn.preprocessing import StandardScaler

from kp_science.prediction import (
    DEFAULT_VARIANTS,
    EnetSettings,
    ModelVariant,
    bootstrap_selection,
    design_matrix,
    enet_paths,
    fit_all,
    fit_variant,
    loo_select,
    loo_select_sklearn,
    nested_loo,
    paper_table,
    permutation_test,
    plot_coefficients,
    plot_cv_curve,
    plot_observed_vs_predicted,
    refit_selected,
)
from kp_science.prediction.elastic_net import select_best
from kp_science.prediction.synthetic import PLANTED, synthetic_study

SMALL = dict(l1_ratios=(0.3, 0.7, 1.0), n_alphas=12)
VARIANTS = {v.name: v for v in DEFAULT_VARIANTS}


def _zscore(X):
    return (X - X.mean(axis=0)) / X.std(axis=0)


def _signal(n=16, p=20, seed=0, beta=3.0, noise=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = beta * X[:, 0] - 0.5 * beta * X[:, 1] + noise * rng.standard_normal(n)
    return X, y


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
        _, ref, _ = enet_path(X, Yc[b], l1_ratio=l1_ratio, alphas=alphas[b], tol=1e-13,
                              max_iter=1_000_000)
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
    _, coefs, stats = enet_paths(X, Y, mu, lam, return_coefs=True, pdas_iter=pdas_iter,
                                 max_iter=max_iter)
    assert (stats.monotone_steps if max_iter else stats.fallbacks) > 0
    for b in range(len(Y)):
        _, ref, _ = enet_path(X, Yc[b], l1_ratio=l1_ratio, alphas=alphas[b], tol=1e-13,
                              max_iter=1_000_000)
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
    _, ref, _ = enet_path(X, yc, l1_ratio=l1_ratio, alphas=alphas, tol=1e-14,
                          max_iter=1_000_000)
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
    _, coefs, _ = enet_paths(X, y[None], 16 * alphas[None], 0 * alphas[None],
                             return_coefs=True)
    _, ref, _ = enet_path(X, y, l1_ratio=1.0, alphas=alphas, tol=1e-14, max_iter=1_000_000)
    fit = X @ coefs[0].T
    assert np.abs(fit - X @ ref).max() < 1e-6  # fitted values are unique for the lasso


# --- LOO selection ------------------------------------------------------------------------


def test_loo_selection_equals_bruteforce_sklearn():
    X, y = _signal(n=14, p=30, seed=2, beta=1.5, noise=1.5)
    fast = loo_select(X, y, **SMALL)
    ref, _ = loo_select_sklearn(X, y, tol=1e-12, **SMALL)
    assert fast.best == ref.best
    np.testing.assert_allclose(fast.loo_mse, ref.loo_mse, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fast.loo_pred, ref.loo_pred, atol=1e-6)
    # refit at the selected point equals scikit-learn on the z-scored data
    model = refit_selected(X, y, fast)
    sk = ElasticNet(alpha=fast.alpha, l1_ratio=fast.l1_ratio, tol=1e-12, max_iter=1_000_000)
    sk.fit(_zscore(X), y)
    assert np.abs(model.beta_std - sk.coef_).max() < 1e-6
    np.testing.assert_allclose(model.beta_fully_std, model.beta_std / y.std())


def test_scaling_is_fold_internal():
    """LOO predictions must equal a fit whose scaler saw the training rows only. An outlying
    participant makes a leak (scaler fitted with the held-out row) visible."""
    X, y = _signal(n=12, p=8, seed=4, beta=2.0)
    X[0] += 25.0  # participant 0 is far from the others on every feature
    sel = loo_select(X, y, l1_ratios=(0.5,), n_alphas=8)
    r, t = 0, 5
    alpha = sel.alphas[r, t]

    def loo_pred(scaler_rows_for):
        pred = np.empty(len(y))
        for k in range(len(y)):
            train = np.delete(np.arange(len(y)), k)
            scaler = StandardScaler().fit(X[scaler_rows_for(train)])
            model = ElasticNet(alpha=alpha, l1_ratio=0.5, tol=1e-12, max_iter=1_000_000)
            model.fit(scaler.transform(X[train]), y[train])
            pred[k] = model.predict(scaler.transform(X[k : k + 1]))[0]
        return pred

    honest = loo_pred(lambda train: train)
    leaky = loo_pred(lambda train: np.arange(len(y)))
    np.testing.assert_allclose(sel.loo_pred[r, t], honest, atol=1e-6)
    assert np.abs(sel.loo_pred[r, t] - leaky).max() > 1e-3  # the test can see a leak


def test_ties_go_to_larger_penalty():
    mse = np.array([[2.0, 1.0, 1.0 + 1e-12, 3.0], [2.0, 1.5, 2.0, 2.0]])
    alphas = np.array([[8.0, 4.0, 2.0, 1.0], [4.0, 2.0, 1.0, 0.5]])
    assert select_best(mse, alphas, np.array([0.5, 1.0])) == (0, 1)
    # equal alphas too: the larger l1_ratio (the sparser model)
    mse[1, 0] = 1.0
    assert select_best(mse, alphas, np.array([0.5, 1.0])) == (1, 0)


# --- design matrices ----------------------------------------------------------------------


def test_design_matrix_variants():
    cs, clin = synthetic_study(n=12, n_features=6, seed=0)
    X, y, report = design_matrix(cs, clin, VARIANTS["main"])
    assert X.shape == (12, 6) and list(X.index) == sorted(clin["participant_id"])
    assert y.name == "caps5_improvement" and report.excluded.empty

    X, _, _ = design_matrix(cs, clin, VARIANTS["interaction"])
    feats = sorted(cs["feature"].unique())
    assert list(X.columns) == feats + ["arm"] + [f + ":arm" for f in feats]
    arm = clin.set_index("participant_id")["arm"].loc[X.index]
    np.testing.assert_array_equal(X["arm"], np.where(arm == "ketamine", 0.5, -0.5))
    f = PLANTED[0]
    np.testing.assert_allclose(X[f + ":arm"], X[f] * X["arm"])

    X, _, _ = design_matrix(cs, clin, VARIANTS["covariate"])
    assert list(X.columns) == feats + ["madrs_improvement"]
    np.testing.assert_allclose(
        X["madrs_improvement"], clin.set_index("participant_id").loc[X.index,
                                                                    "madrs_improvement"])

    X, y, report = design_matrix(cs, clin, VARIANTS["ketamine_only"], min_participants=5)
    ket = set(clin.loc[clin["arm"] == "ketamine", "participant_id"])
    assert set(X.index) == ket and len(y) == len(ket)
    assert set(report.excluded["participant_id"]) == set(clin["participant_id"]) - ket
    assert report.excluded["reason"].str.contains("midazolam").all()

    X, _, _ = design_matrix(cs, clin, ModelVariant("rest_only", families=("rest.fc",)))
    assert all(c.startswith("rest.fc.") for c in X.columns) and len(X.columns) >= 1


def test_design_matrix_exclusions_constant_and_minimum():
    cs, clin = synthetic_study(n=12, n_features=6, seed=0)
    cs = cs[~((cs["participant_id"] == "sub-03") & (cs["feature"] == PLANTED[1]))]
    clin = clin.copy()
    clin.loc[clin["participant_id"] == "sub-05", "caps5_improvement"] = np.nan
    cs = cs.copy()
    cs.loc[cs["feature"] == PLANTED[2], "change"] = 1.5  # constant
    X, y, report = design_matrix(cs, clin, VARIANTS["main"])
    reasons = report.excluded.set_index("participant_id")["reason"]
    assert reasons["sub-03"].startswith("missing 1 of 6 change scores")
    assert reasons["sub-05"] == "missing caps5_improvement"
    assert len(X) == 10 and not y.isna().any()
    assert report.dropped_constant == [PLANTED[2]] and PLANTED[2] not in X.columns
    with pytest.raises(ValueError, match=r"only 10 participant\(s\).*at least 11"):
        design_matrix(cs, clin, VARIANTS["main"], min_participants=11)
    with pytest.raises(ValueError, match="only 4 participant"):
        design_matrix(cs, clin, VARIANTS["ketamine_only"])


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
        res = permutation_test(X, y, n_permutations=19, seed=seed,
                               l1_ratios=(0.5, 1.0), n_alphas=8)
        ps.append(res.p_value)
        if seed < 3:  # pruning changes the work, never the p-value
            exact = permutation_test(X, y, n_permutations=19, seed=seed,
                                     l1_ratios=(0.5, 1.0), n_alphas=8, exact_null=True)
            assert exact.p_value == res.p_value
            assert exact.n_as_good == int((exact.null_mse <= res.observed_mse * (1 + 1e-9))
                                          .sum())
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
    assert rho[_extremes_first(rho)].tolist() == [1.0, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4,
                                                  0.6, 0.5]
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
    res = bootstrap_selection(X, y, n_resamples=60, seed=0, l1_ratio=sel.l1_ratio,
                              alpha=sel.alpha, n_alphas=12)
    assert ((res.frequency >= 0) & (res.frequency <= 1)).all()
    assert res.frequency[0] >= 0.9
    assert np.median(res.frequency[2:]) < res.frequency[0]


# --- tables, paper table, plots -----------------------------------------------------------

FAST = EnetSettings(l1_ratios=(0.5, 1.0), n_alphas=10, n_permutations=9, n_bootstraps=20,
                    n_jobs=1)


@pytest.fixture(scope="module")
def tables():
    cs, clin = synthetic_study(n=21, n_features=12, seed=3, strength=0.9)
    return fit_all(cs, clin, DEFAULT_VARIANTS, FAST)


def test_fit_all_tables_contract(tables):
    summary = tables["enet_summary"]
    assert list(summary["model"]) == [v.name for v in DEFAULT_VARIANTS]
    assert (summary["status"] == "ok").all()
    for col in ("model", "n_participants", "n_features", "l1_ratio", "alpha", "loo_mse",
                "loo_r", "nested_r", "nested_rmse", "permutation_p", "n_permutations"):
        assert col in summary
    assert set(tables["enet_coefficients"].columns) >= {
        "model", "term", "beta_std", "beta_fully_std", "selection_frequency"}
    assert set(tables["enet_predictions"].columns) >= {
        "model", "participant_id", "observed", "predicted", "nested_predicted"}
    assert set(tables["enet_cv_curve"].columns) >= {"model", "l1_ratio", "alpha", "loo_mse"}
    curve = tables["enet_cv_curve"]
    assert len(curve[curve["model"] == "main"]) == 2 * 10
    assert (curve.groupby("model")["selected"].sum() == 1).all()
    inter = tables["enet_coefficients"].query("model == 'interaction'")
    assert "arm" in set(inter["term"]) and f"{PLANTED[0]}:arm" in set(inter["term"])
    pred = tables["enet_predictions"].query("model == 'ketamine_only'")
    assert len(pred) == 11


def test_fit_all_reports_unfittable_variant():
    cs, clin = synthetic_study(n=14, n_features=5, seed=1)
    out = fit_all(cs, clin, [VARIANTS["main"], VARIANTS["ketamine_only"]], FAST)
    status = out["enet_summary"].set_index("model")["status"]
    assert status["main"] == "ok"
    assert "only 7 participant(s)" in status["ketamine_only"]
    assert set(out["enet_coefficients"]["model"]) == {"main"}


def test_fit_variant_excluded_participants_listed():
    cs, clin = synthetic_study(n=14, n_features=5, seed=1)
    cs = cs[cs["participant_id"] != "sub-02"]
    out = fit_variant(cs, clin, VARIANTS["main"], FAST)
    assert list(out["enet_exclusions"]["participant_id"]) == ["sub-02"]
    assert out["enet_summary"]["n_participants"].iloc[0] == 13


def test_paper_table_rows(tables):
    table = paper_table(tables)
    assert len(table) == 8
    assert list(table["published"].iloc[:5]) == [2.90, 0.86, 0.69, -2.82, 0.60]
    assert list(table["model"].iloc[:5]) == ["main", "interaction", "covariate",
                                             "ketamine_only", "ketamine_only"]
    dcm = table.iloc[5:]
    assert dcm["estimate"].isna().all()
    assert (dcm["note"] == "DCM group analysis not available").all()
    for _, row in table.iloc[:5].iterrows():
        if np.isnan(row["estimate"]):
            assert row["note"] in ("not selected (β = 0)",
                                   "term not in model (feature absent or constant)")
    # the planted vmPFC–amygdala effect is found with the published sign
    assert table.iloc[0]["estimate"] > 0

    # a zero coefficient is "not selected"; DCM estimates are used when given
    coefs = tables["enet_coefficients"].copy()
    coefs.loc[coefs["term"] == PLANTED[0], "beta_std"] = 0.0
    dcm_in = pd.DataFrame({"finding": ["dcm_amygdala_to_vmpfc"], "estimate": [-0.12]})
    table = paper_table({**tables, "enet_coefficients": coefs}, dcm=dcm_in)
    assert np.isnan(table.iloc[0]["estimate"])
    assert table.iloc[0]["note"] == "not selected (β = 0)"
    assert table.iloc[5]["estimate"] == -0.12 and table.iloc[5]["same_direction"]


def test_plots_are_png(tables):
    for png in (
        plot_observed_vs_predicted(tables["enet_predictions"], "main"),
        plot_coefficients(tables["enet_coefficients"], "main"),
        plot_cv_curve(tables["enet_cv_curve"], "main"),
    ):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_worker_threads_give_the_same_results():
    X, y = _signal(n=14, p=15, seed=8, beta=1.0, noise=1.5)
    one = permutation_test(X, y, n_permutations=30, seed=2, n_jobs=1, **SMALL)
    two = permutation_test(X, y, n_permutations=30, seed=2, n_jobs=2, **SMALL)
    assert one.p_value == two.p_value
    np.testing.assert_allclose(nested_loo(X, y, n_jobs=2, **SMALL).predicted,
                               nested_loo(X, y, n_jobs=1, **SMALL).predicted, atol=1e-10)
