"""Model variants and their design matrices (kp_science.prediction.variants)."""

import numpy as np
import pandas as pd
import pytest

from kp_science.prediction import DEFAULT_VARIANTS, ModelVariant, design_matrix
from kp_science.prediction.synthetic import PLANTED, synthetic_study
from kp_science.prediction.variants import feature_of_term, interaction_term, measures_of

VARIANTS = {v.name: v for v in DEFAULT_VARIANTS}


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
        X["madrs_improvement"], clin.set_index("participant_id").loc[X.index, "madrs_improvement"]
    )

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


def test_the_protocol_families_restrict_the_measures():
    changes = pd.DataFrame(
        {
            "participant_id": ["sub-01"] * 3,
            "feature": ["faces.gppi.a->b.emotional", "faces.activation.a.x", "rest.fc.a~b"],
            "change": [1.0, 2.0, 3.0],
        }
    )
    assert measures_of(changes, None) is changes
    kept = measures_of(changes, ("gppi", "fc"))
    assert list(kept["feature"]) == ["faces.gppi.a->b.emotional", "rest.fc.a~b"]
    assert measures_of(changes, ()).empty


def test_an_interaction_term_names_its_feature():
    feature = "faces.gppi.vmpfc->amygdala.emotional"
    assert feature_of_term(interaction_term(feature)) == feature
    assert feature_of_term(feature) == feature and feature_of_term("arm") == "arm"
