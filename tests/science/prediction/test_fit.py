"""Fitting every variant (kp_science.prediction.fit), and the paper table and plots made from
the fitted tables (headline, plots)."""

import numpy as np
import pandas as pd
import pytest

from kp_science.prediction import (
    DEFAULT_VARIANTS,
    EnetSettings,
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


def test_plots_are_png(tables):
    for png in (
        plot_observed_vs_predicted(tables["enet_predictions"], "main"),
        plot_coefficients(tables["enet_coefficients"], "main"),
        plot_cv_curve(tables["enet_cv_curve"], "main"),
    ):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
