"""The planted effects (kp_science.simulator.effects): relations with improvement, a stable
loop, the drug interaction."""

import numpy as np
import pandas as pd
import pytest

from kp_science.simulator import SimulationOptions
from kp_science.simulator.effects import (
    HEADLINE_EFFECTS,
    MAX_LOOP_GAIN,
    simulate_clinical,
    simulate_parameters,
)
from kp_science.simulator.study import plan_study


def _changes(parameters: pd.DataFrame, name: str, baseline: bool) -> pd.Series:
    wide = parameters[parameters.parameter == name].pivot(
        index="participant_id", columns="session", values="value"
    )
    return wide["pre"] if baseline else wide["post"] - wide["pre"]


@pytest.mark.parametrize("null", [False, True])
def test_planted_relations_explain_30_to_60_percent(null):
    rs = []
    for seed in range(5):
        planted, _ = plan_study(
            SimulationOptions(
                participants=21,
                seed=seed,
                effect_scale=0.0 if null else 1.0,
                volumes={"faces": 16, "conflict": 16, "rest": 16},
            )
        )
        clinical = planted.clinical.set_index("participant_id")
        assert abs((clinical.arm == "ketamine").sum() - (clinical.arm == "midazolam").sum()) <= 1
        improvement = clinical.caps5_pre - clinical.caps5_post
        for effect in HEADLINE_EFFECTS:
            scope = clinical.arm.isin(effect.arms)
            values = _changes(planted.parameters, effect.parameter, effect.baseline)
            r = np.corrcoef(values[scope], improvement[scope])[0, 1]
            if null:
                rs.append(r)
            else:
                assert 0.3 <= r**2 <= 0.6, (effect.parameter, r**2)
                assert np.sign(r) == effect.direction
    if null:
        # no planted relation: correlations scatter around zero like sampling noise
        assert abs(np.mean(rs)) < 0.15
        assert np.mean(np.square(rs)) < 0.15


@pytest.mark.parametrize("null", [False, True])
def test_amygdala_vmpfc_loop_stays_stable(null):
    """stabilise_loop: in every session the loop gain a12·a21 / σ1σ2 stays at or below
    MAX_LOOP_GAIN with emotional faces off and on (their B modulations added)."""
    gains = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        clinical = simulate_clinical(21, rng)
        wide = simulate_parameters(clinical, 0.0 if null else 1.0, rng).parameters.pivot_table(
            index=["participant_id", "session"], columns="parameter", values="value"
        )
        a12, a21, b12, b21 = (
            wide[f"dcm.{name}"]
            for name in (
                "A[vmpfc->amygdala]",
                "A[amygdala->vmpfc]",
                "B[emotional][vmpfc->amygdala]",
                "B[emotional][amygdala->vmpfc]",
            )
        )
        decay = 0.25 * np.exp(wide["dcm.A[amygdala->amygdala]"] + wide["dcm.A[vmpfc->vmpfc]"])
        gains.append(np.maximum(a12 * a21, (a12 + b12) * (a21 + b21)) / decay)
        # and the forward connection stays excitatory (or zero) with emotional faces on
        assert (a21 + b21 >= -1e-12).all(), seed
    gains = pd.concat(gains)
    assert gains.max() <= MAX_LOOP_GAIN + 1e-9
    assert (gains > MAX_LOOP_GAIN - 1e-9).any()  # the guard did act on some draws


def test_drug_interaction_is_steeper_on_ketamine():
    planted, _ = plan_study(SimulationOptions(participants=40, seed=1))
    clinical = planted.clinical.set_index("participant_id")
    improvement = clinical.caps5_pre - clinical.caps5_post
    change = _changes(planted.parameters, "faces.gppi.vmpfc->amygdala.emotional", False)
    slopes = {
        arm: np.polyfit(improvement[clinical.arm == arm], change[clinical.arm == arm], 1)[0]
        for arm in ("ketamine", "midazolam")
    }
    assert slopes["ketamine"] > 1.5 * slopes["midazolam"] > 0


def test_a_session_whose_loop_rules_conflict_still_integrates():
    """Seed 5032 with 42 participants draws, in sub-36's post session, excitatory feedback
    (A[vmpfc->amygdala] 0.24) with a strongly negative planted B[emotional][amygdala->vmpfc]
    (−0.77): the loop rules conflicted, the forward connection stayed inhibitory with
    emotional faces on, and the balloon model's flow went to zero (NaN BOLD)."""
    from kp_science.simulator.study import DEFAULT_VOLUMES, SimulationOptions, plan_study

    options = SimulationOptions(42, 5032, 4.0, dict(DEFAULT_VOLUMES), 2.0, 0.0)
    with np.errstate(all="raise"):
        _, jobs = plan_study(options)
    assert all(np.isfinite(b).all() for job in jobs for b in job.dcm_bold.values())
