"""The DCM findings reported (kp_science.dcm.findings)."""

import numpy as np
import pandas as pd

from kp_science.dcm.findings import DCM_FINDINGS, dcm_findings


def test_findings_take_their_effect_and_say_why_when_missing():
    effects = pd.DataFrame(
        {
            "analysis": ["longitudinal"],
            "covariate": ["caps5_improvement"],
            "parameter": ["B[emotional][amygdala->vmpfc]"],
            "mean": [-0.2],
            "Pp": [0.97],
        }
    )
    table = dcm_findings(effects).set_index("finding")
    first = table.loc[DCM_FINDINGS[0].key]
    assert first.estimate == -0.2 and first.pp == 0.97 and "−" in first.note
    assert np.isnan(table.loc[DCM_FINDINGS[2].key, "estimate"])
    assert "no baseline effect" in table.loc[DCM_FINDINGS[2].key, "note"]


def test_an_effect_switched_off_by_model_reduction_has_no_estimate():
    effects = pd.DataFrame(
        {
            "analysis": ["longitudinal", "longitudinal"],
            "covariate": ["caps5_improvement", "caps5_improvement[ketamine]"],
            "parameter": ["B[emotional][amygdala->vmpfc]", "A[vmpfc->amygdala]"],
            "mean": [0.0, 0.0],
            "sd": [0.0, 0.05],  # the second is an estimate that happens to be 0
            "Pp": [0.08, 0.5],
        }
    )
    table = dcm_findings(effects).set_index("finding")
    pruned = table.loc[DCM_FINDINGS[0].key]
    assert np.isnan(pruned.estimate) and pruned.pp == 0.08
    assert "switched off by Bayesian model reduction (Pp = 0.08)" in pruned.note
    assert table.loc[DCM_FINDINGS[1].key, "estimate"] == 0.0
