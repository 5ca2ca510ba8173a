"""Detection and false-positive rates of every paper_table row on fixed seeds
(kp_science.finding_rates), on the region-level path.

``bench/recovery.py`` measures the rates over more studies with the default 1000
permutations and 500 bootstraps (README, "How often each finding is found"); here ten planted
and twenty null 21-participant studies with 50 permutations and 25 bootstraps keep the suite
short (p ≥ 1/51 ≈ 0.02 still passes the 0.05 rule; 100 and 50 gave the same counts but the
depression covariate's, 4 then 3, and 100 took a third longer). The floors are the counts these
seeds gave (2026-12-05) less two studies (BLAS kernels
move a seed or two across the selection edge, see below), so a change that loses detections
fails; a finding these seeds never detect at N = 21 has floor 0 (the design's power at the
planted size, which ``kp power`` measures) and is held by its sign floor. The ceiling on null
studies is the issue's: a finding is supported in at most 10 % of them (2 of 20).
"""

import numpy as np
import pandas as pd
import pytest

from kp_resources.dcm_models import DCMModels
from kp_science.finding_rates import (
    VOCABULARY,
    AnalysisSettings,
    finding_rates,
    many_findings,
    participants_for_power,
    power_conditions,
    power_figure_png,
    study_findings,
    with_settings,
)
from kp_science.prediction.headline import FINDINGS
from tests.conftest import cores_per_process

PLANTED_SEEDS = list(range(100, 110))
NULL_SEEDS = list(range(200, 220))
SETTINGS = with_settings(
    AnalysisSettings(masks=DCMModels().masks(VOCABULARY.dcm)),
    n_permutations=50,
    n_bootstraps=25,
)
# supported in at least this many of the ten planted studies (measured count in comments)
DETECTED_AT_LEAST: dict[str, int] = {
    "vmpfc_amygdala_faces": 0,  # 0: the main model's permutation p < 0.05 is rare at N = 21
    "drug_interaction": 0,  # 0
    "madrs_covariate": 1,  # 3
    "dacc_conflict_ketamine": 0,  # 1
    "insula_rest_ketamine": 0,  # 1
    "dcm_amygdala_to_vmpfc": 1,  # 3
    "dcm_vmpfc_to_amygdala_ketamine": 3,  # 5
    "dcm_baseline_inhibition": 6,  # 8
}
# an estimate with the published sign in at least this many (measured count in comments)
SAME_DIRECTION_AT_LEAST: dict[str, int] = {
    "vmpfc_amygdala_faces": 8,  # 10
    "drug_interaction": 0,  # 1: the interaction term is rarely selected
    "madrs_covariate": 6,  # 8
    "dacc_conflict_ketamine": 6,  # 8
    "insula_rest_ketamine": 5,  # 7
    "dcm_amygdala_to_vmpfc": 5,  # 7
    "dcm_vmpfc_to_amygdala_ketamine": 8,  # 10
    "dcm_baseline_inhibition": 8,  # 10
}
MAX_FALSE_POSITIVES = 2  # of 20 null studies: 10 %


@pytest.fixture(scope="module")
def findings() -> pd.DataFrame:
    conditions = [(s, 21, 1.0) for s in PLANTED_SEEDS] + [(s, 21, 0.0) for s in NULL_SEEDS]
    return many_findings(conditions, SETTINGS, processes=cores_per_process())


@pytest.fixture(scope="module")
def rates(findings) -> pd.DataFrame:
    table = finding_rates(findings)
    print(table.to_string())
    return table


def _rate(rates: pd.DataFrame, scale: float, column: str) -> pd.Series:
    rows = rates[rates.effect_scale == scale].set_index("finding")
    return (rows[column] * rows["studies"]).round().astype(int)


@pytest.mark.slow  # thirty region-level studies through the whole analysis
def test_every_finding_has_its_detection_floor_on_planted_studies(rates):
    assert set(rates.finding) == {f.key for f in FINDINGS}
    detected = _rate(rates, 1.0, "supported")
    signed = _rate(rates, 1.0, "same_direction")
    low = {k: (int(detected[k]), n) for k, n in DETECTED_AT_LEAST.items() if detected[k] < n}
    assert not low, f"detected in fewer planted studies than the floor: {low}"
    wrong = {k: (int(signed[k]), n) for k, n in SAME_DIRECTION_AT_LEAST.items() if signed[k] < n}
    assert not wrong, f"published sign in fewer planted studies than the floor: {wrong}"
    assert set(DETECTED_AT_LEAST) == set(SAME_DIRECTION_AT_LEAST) == set(detected.index)


@pytest.mark.slow
def test_no_finding_is_supported_in_more_than_a_tenth_of_null_studies(rates):
    false_positives = _rate(rates, 0.0, "supported")
    assert (rates[rates.effect_scale == 0].studies == len(NULL_SEEDS)).all()
    high = false_positives[false_positives > MAX_FALSE_POSITIVES]
    assert high.empty, f"supported in more than {MAX_FALSE_POSITIVES}/20 null studies: {high}"


@pytest.mark.slow
def test_rows_carry_their_conditions_and_evidence(findings):
    assert len(findings) == 8 * (len(PLANTED_SEEDS) + len(NULL_SEEDS))
    first = findings[findings.seed == PLANTED_SEEDS[0]]
    assert list(first.finding) == [f.key for f in FINDINGS]
    assert (first.participants == 21).all() and (first.effect_scale == 1.0).all()
    assert first.evidence.str.len().gt(0).all()
    # a supported row passed every rule; an unsupported one names a failed rule
    assert not findings.loc[findings.supported, "evidence"].str.contains("✗").any()
    assert findings.loc[~findings.supported, "evidence"].str.contains("✗").all()


def test_one_study_is_reproducible():
    fast = with_settings(SETTINGS, n_permutations=0, n_bootstraps=0)
    a = study_findings(7, fast, participants=12, volumes=60)
    b = study_findings(7, fast, participants=12, volumes=60)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert np.isnan(a.permutation_p).all() and not a.supported.any()  # no permutation test


def test_power_conditions_give_every_study_its_own_seed():
    conditions = power_conditions([21, 42], [0.0, 1.0], studies=3, first_seed=50)
    assert len(conditions) == 12 and len({seed for seed, _, _ in conditions}) == 12
    assert conditions[:4] == [(50, 21, 0.0), (51, 21, 0.0), (52, 21, 0.0), (53, 21, 1.0)]
    with pytest.raises(ValueError, match="needs participant counts"):
        power_conditions([21], [], studies=3, first_seed=0)


def test_participants_for_power_is_the_smallest_count_reaching_the_target():
    rates = pd.DataFrame(
        {
            "participants": [21, 42, 63] * 2 + [21, 42, 63],
            "effect_scale": [1.0] * 6 + [0.5] * 3,
            "finding": ["a"] * 3 + ["b"] * 3 + ["a"] * 3,
            "supported": [0.3, 0.8, 0.9, 0.1, 0.5, 0.7, 0.1, 0.2, 0.85],
        }
    )
    needed = participants_for_power(rates, 0.8)
    assert needed["a"] == 42 and np.isnan(needed["b"])
    assert participants_for_power(rates, 0.8, effect_scale=0.5)["a"] == 63
    assert power_figure_png(rates.assign(studies=10))[:4] == b"\x89PNG"
