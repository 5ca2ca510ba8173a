"""Fitting every variant (kp_science.prediction.fit), and the paper table and plots made from
the fitted tables (headline, plots)."""

import numpy as np
import pandas as pd
import pytest

from kp_science.prediction import (
    DEFAULT_VARIANTS,
    EnetSettings,
    SupportRules,
    fit_all,
    fit_variant,
    paper_table,
    plot_coefficients,
    plot_cv_curve,
    plot_observed_vs_predicted,
)
from kp_science.prediction.synthetic import PLANTED, synthetic_study

VARIANTS = {v.name: v for v in DEFAULT_VARIANTS}


# --- tables, paper table, plots -----------------------------------------------------------

FAST = EnetSettings(l1_ratios=(0.5, 1.0), n_alphas=10, n_permutations=9, n_bootstraps=20, n_jobs=1)


@pytest.fixture(scope="module")
def tables():
    cs, clin = synthetic_study(n=21, n_features=12, seed=3, strength=0.9)
    return fit_all(cs, clin, DEFAULT_VARIANTS, FAST)


def test_fit_all_tables_contract(tables):
    summary = tables["enet_summary"]
    assert list(summary["model"]) == [v.name for v in DEFAULT_VARIANTS]
    assert (summary["status"] == "ok").all()
    for col in (
        "model",
        "n_participants",
        "n_features",
        "l1_ratio",
        "alpha",
        "loo_mse",
        "loo_r",
        "nested_r",
        "nested_rmse",
        "permutation_p",
        "n_permutations",
    ):
        assert col in summary
    assert set(tables["enet_coefficients"].columns) >= {
        "model",
        "term",
        "beta_std",
        "beta_fully_std",
        "selection_frequency",
    }
    assert set(tables["enet_predictions"].columns) >= {
        "model",
        "participant_id",
        "observed",
        "predicted",
        "nested_predicted",
    }
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
    assert list(table["model"].iloc[:5]) == [
        "main",
        "interaction",
        "covariate",
        "ketamine_only",
        "ketamine_only",
    ]
    dcm = table.iloc[5:]
    assert dcm["estimate"].isna().all()
    assert (dcm["note"] == "DCM group analysis not available").all()
    for _, row in table.iloc[:5].iterrows():
        if np.isnan(row["estimate"]):
            assert row["note"] in (
                "not selected (β = 0)",
                "term not in model (feature absent or constant)",
            )
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


def _one_finding_tables(p: float, frequency: float, beta: float) -> dict[str, pd.DataFrame]:
    """enet tables where only the main model's vmPFC–amygdala term is fitted."""
    summary = pd.DataFrame({"model": ["main"], "status": ["ok"], "permutation_p": [p]})
    coefs = pd.DataFrame(
        {
            "model": ["main"],
            "term": [PLANTED[0]],
            "beta_std": [beta],
            "beta_fully_std": [beta / 10],
            "selection_frequency": [frequency],
        }
    )
    return {"enet_summary": summary, "enet_coefficients": coefs}


@pytest.mark.parametrize(
    ("p", "frequency", "beta", "supported", "failed"),
    [
        (0.01, 0.8, 2.0, True, None),
        (0.05, 0.8, 2.0, False, "permutation p = 0.050"),  # p must be *below* 0.05
        (0.01, 0.49, 2.0, False, "selected in 49%"),
        (0.01, 0.8, -2.0, False, "published sign"),
        (np.nan, 0.8, 2.0, False, "permutation p = nan"),  # no permutation test run
    ],
)
def test_an_elastic_net_finding_is_supported_only_when_every_rule_passes(
    p, frequency, beta, supported, failed
):
    row = paper_table(_one_finding_tables(p, frequency, beta)).iloc[0]
    assert bool(row["supported"]) is supported
    assert row["permutation_p"] == p or (np.isnan(p) and np.isnan(row["permutation_p"]))
    if failed:
        assert f"✗ {failed}" in row["evidence"], row["evidence"]
    else:
        assert "✗" not in row["evidence"]
    # rows whose model was not fitted are never supported
    assert not paper_table(_one_finding_tables(p, frequency, beta))["supported"].iloc[1:].any()


def test_support_rules_are_configurable_and_checked():
    tables = _one_finding_tables(0.03, 0.6, 2.0)
    assert paper_table(tables).iloc[0]["supported"]
    assert not paper_table(tables, rules=SupportRules(max_permutation_p=0.01)).iloc[0]["supported"]
    assert not paper_table(tables, rules=SupportRules(min_selection_frequency=0.7)).iloc[0][
        "supported"
    ]
    with pytest.raises(ValueError, match="min_pp must be within"):
        SupportRules(min_pp=95)


def test_a_dcm_finding_needs_its_sign_and_pp():
    tables = _one_finding_tables(0.01, 0.8, 2.0)
    dcm = pd.DataFrame(
        {
            "finding": [
                "dcm_amygdala_to_vmpfc",
                "dcm_vmpfc_to_amygdala_ketamine",
                "dcm_baseline_inhibition",
            ],
            "estimate": [-0.2, -0.1, np.nan],  # the third switched off by model reduction
            "pp": [0.97, 0.90, 0.1],
            "note": ["", "", "switched off by Bayesian model reduction (Pp = 0.10)"],
        }
    )
    rows = paper_table(tables, dcm=dcm).set_index("finding")
    assert rows.loc["dcm_amygdala_to_vmpfc", "supported"]
    assert not rows.loc["dcm_vmpfc_to_amygdala_ketamine", "supported"]
    assert "✗ Pp = 0.900 (needs ≥ 0.95)" in rows.loc["dcm_vmpfc_to_amygdala_ketamine", "evidence"]
    assert rows.loc["dcm_vmpfc_to_amygdala_ketamine", "same_direction"]
    pruned = rows.loc["dcm_baseline_inhibition"]
    assert not pruned["supported"] and np.isnan(pruned["estimate"])
    assert pruned["same_direction"] is not False and np.isnan(pruned["same_direction"])
    assert "switched off" in pruned["note"]
    looser = paper_table(tables, dcm=dcm, rules=SupportRules(min_pp=0.9)).set_index("finding")
    assert looser.loc["dcm_vmpfc_to_amygdala_ketamine", "supported"]


def test_plots_are_png(tables):
    for png in (
        plot_observed_vs_predicted(tables["enet_predictions"], "main"),
        plot_coefficients(tables["enet_coefficients"], "main"),
        plot_cv_curve(tables["enet_cv_curve"], "main"),
    ):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_a_figure_of_rows_drawn_before_is_not_drawn_again(tables):
    """The enet asset and the study report draw the same figures: equal rows (also read
    back with other string dtypes, among other models' rows) give the drawn PNG again;
    changed rows are drawn anew."""
    curve = tables["enet_cv_curve"]
    first = plot_cv_curve(curve, "main")
    read_back = curve.astype({"model": "string"}).iloc[::-1].sort_index()
    assert plot_cv_curve(read_back, "main") is first
    changed = curve.copy()
    changed.loc[changed["model"] == "main", "loo_mse"] *= 1.5
    redrawn = plot_cv_curve(changed, "main")
    assert redrawn is not first and redrawn != first
