"""The pipeline recovers what the simulator planted, and finds nothing in a --null study.

Both studies are 21 participants at 4 mm, materialized once per test session through the
real assets (fixtures in conftest.py); the planted truth is read from
``derivatives/simulation-truth``, which the pipeline never reads.
"""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from kp_resources.warehouse import query

HEADLINE = [
    "faces.gppi.vmpfc->amygdala.emotional",
    "conflict.activation.dacc.regulation",
    "rest.fc.vmpfc~insula_ant",
]


def _planted_changes(study) -> pd.DataFrame:
    truth = pd.read_csv(study / "derivatives/simulation-truth/parameters.tsv", sep="\t")
    wide = truth.pivot_table(
        index=["participant_id", "parameter"], columns="session", values="value"
    )
    return (wide["post"] - wide["pre"]).unstack("parameter")


def _improvement(study) -> pd.Series:
    clinical = pd.read_csv(study / "derivatives/simulation-truth/participants.tsv", sep="\t")
    return (clinical.caps5_pre - clinical.caps5_post).set_axis(clinical.participant_id)


def _measured_changes(warehouse) -> pd.DataFrame:
    changes = query(warehouse, "SELECT participant_id, feature, change FROM change_scores")
    return changes.pivot(index="participant_id", columns="feature", values="change")


@pytest.mark.parametrize("feature", HEADLINE)
def test_planted_change_is_recovered(recovery_study, feature):
    study, warehouse = recovery_study
    measured = _measured_changes(warehouse)[feature]
    planted = _planted_changes(study).loc[measured.index, feature]
    assert len(measured) == 21
    rho = spearmanr(measured, planted)[0]
    assert rho >= 0.7, f"{feature}: Spearman rho {rho:.2f} with the planted change"


def test_null_study_has_chance_level_relations(null_study):
    study, warehouse = null_study
    measured = _measured_changes(warehouse)
    improvement = _improvement(study).loc[measured.index]
    p = np.array([spearmanr(measured[f], improvement)[1] for f in measured.columns])
    # 18 activation contrasts, 60 faces + 150 conflict gPPI conditions, 15 rest pairs
    assert len(p) == 243
    # features are correlated, so allow twice the nominal rate before calling it a finding
    assert np.mean(p < 0.05) <= 0.10, f"{np.mean(p < 0.05):.1%} of features with p < 0.05"
    assert np.mean(p < 0.01) <= 0.03


def test_planted_study_relations_are_visible(recovery_study):
    """In the planted study the headline changes do relate to improvement (the null test
    above is not passing because nothing can ever be found)."""
    study, warehouse = recovery_study
    measured = _measured_changes(warehouse)
    improvement = _improvement(study).loc[measured.index]
    rho = spearmanr(measured["faces.gppi.vmpfc->amygdala.emotional"], improvement)[0]
    assert rho > 0.4
