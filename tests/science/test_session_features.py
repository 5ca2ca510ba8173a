"""The per-session feature table, its fixed-effects combination of runs, and the change
scores (kp_science.session_features)."""

import numpy as np
import pandas as pd
import pytest

from kp_science.session_features import (
    change_table,
    feature_table,
    fisher_z_fixed_effects,
    inverse_variance_fixed_effects,
)


def _tables():
    act = pd.DataFrame(
        {
            "participant_id": "sub-01",
            "session": ["pre", "post"],
            "task": "conflict",
            "run": 1,
            "roi": "dacc",
            "contrast": "regulation",
            "beta": [1.0, 0.25],
            "se": [0.5, 0.4],
            "t": [2.0, 0.625],
        }
    )
    ppi = pd.DataFrame(
        {
            "participant_id": "sub-01",
            "session": ["pre", "post"] * 3,
            "task": "faces",
            "run": 1,
            "seed": "vmpfc",
            "target": "amygdala",
            "contrast": ["emotional"] * 2 + ["neutral"] * 2 + ["emotional_vs_neutral"] * 2,
            "beta": [0.1, 0.4, 0.0, 0.1, 0.1, 0.3],
            "se": 0.2,
            "t": [0.5, 2.0, 0.0, 0.5, 0.5, 1.5],
        }
    )
    rest = pd.DataFrame(
        {
            "participant_id": "sub-01",
            "session": ["pre"],
            "task": "rest",
            "run": 1,
            "roi_a": "vmpfc",
            "roi_b": "insula_ant",
            "r": 0.2,
            "z": 0.25,
            "n_volumes_kept": 100,
        }
    )
    return act, ppi, rest


def test_feature_names_and_change_scores():
    act, ppi, rest = _tables()
    features = feature_table(act, ppi, rest)
    # the gPPI task contrast (emotional − neutral) is not a feature: the conditions are
    assert set(features.feature) == {
        "conflict.activation.dacc.regulation",
        "faces.gppi.vmpfc->amygdala.emotional",
        "faces.gppi.vmpfc->amygdala.neutral",
        "rest.fc.vmpfc~insula_ant",
    }
    assert set(features.family) == {"conflict.activation", "faces.gppi", "rest.fc"}
    assert (features.n_runs == 1).all()
    change = change_table(features).set_index("feature")
    # the resting feature has no post value: it gets no change score
    assert list(change.index) == [
        "conflict.activation.dacc.regulation",
        "faces.gppi.vmpfc->amygdala.emotional",
        "faces.gppi.vmpfc->amygdala.neutral",
    ]
    assert change.loc["conflict.activation.dacc.regulation", "change"] == -0.75
    assert change_table(features[features.session == "pre"]).empty


def test_single_runs_keep_their_values_and_order_bit_for_bit():
    act, ppi, rest = _tables()
    # values whose inverse-variance "combination" with themselves could move the last digit
    act = act.assign(beta=[0.1 + 0.2, 1 / 3], se=[0.3, 0.7])
    rest = rest.assign(r=np.tanh(0.7) + 1e-16, z=0.7)
    features = feature_table(act, ppi, rest)
    assert features.value.tolist() == [
        *act.beta,
        *ppi.beta[ppi.contrast != "emotional_vs_neutral"],
        *rest.z,
    ]
    assert features.session.tolist() == ["pre", "post"] + ["pre", "post"] * 2 + ["pre"]
    combined = fisher_z_fixed_effects(rest, ["session", "roi_a", "roi_b"])
    assert combined.r.tolist() == rest.r.tolist()  # not tanh(z)
    ivw = inverse_variance_fixed_effects(act, ["session", "roi", "contrast"])
    assert ivw.se.tolist() == act.se.tolist() and ivw.beta.tolist() == act.beta.tolist()


def test_two_runs_are_combined_by_fixed_effects():
    act, ppi, rest = _tables()
    # run 2 of every measure in the pre session, with its own beta/se and kept volumes
    act2 = act[act.session == "pre"].assign(run=2, beta=-0.5, se=1.0)
    ppi2 = ppi[ppi.session == "pre"].assign(run=2, beta=[0.7, 0.3, 0.9], se=[0.1, 0.4, 0.1])
    rest2 = rest.assign(run=2, r=np.tanh(0.5), z=0.5, n_volumes_kept=53)
    features = feature_table(
        pd.concat([act, act2]), pd.concat([ppi, ppi2]), pd.concat([rest, rest2])
    ).set_index(["session", "feature"])

    # by hand: beta = (b1/se1² + b2/se2²) / (1/se1² + 1/se2²)
    dacc = (1.0 / 0.5**2 + -0.5 / 1.0**2) / (1 / 0.5**2 + 1 / 1.0**2)
    assert dacc == pytest.approx(0.7)
    assert features.loc[("pre", "conflict.activation.dacc.regulation"), "value"] == pytest.approx(
        dacc, rel=1e-14
    )
    emotional = (0.1 / 0.2**2 + 0.7 / 0.1**2) / (1 / 0.2**2 + 1 / 0.1**2)  # = 0.58
    assert features.loc[("pre", "faces.gppi.vmpfc->amygdala.emotional"), "value"] == (
        pytest.approx(emotional, rel=1e-14)
    )
    neutral = (0.0 / 0.2**2 + 0.3 / 0.4**2) / (1 / 0.2**2 + 1 / 0.4**2)  # = 0.06
    assert features.loc[("pre", "faces.gppi.vmpfc->amygdala.neutral"), "value"] == (
        pytest.approx(neutral, rel=1e-14)
    )
    # rest: z = ((100 − 3)·0.25 + (53 − 3)·0.5) / (97 + 50)
    z = (97 * 0.25 + 50 * 0.5) / 147
    assert features.loc[("pre", "rest.fc.vmpfc~insula_ant"), "value"] == pytest.approx(z, rel=1e-14)
    assert features.loc[("pre", "conflict.activation.dacc.regulation"), "n_runs"] == 2
    # the post session has one run: its values as they were
    assert features.loc[("post", "conflict.activation.dacc.regulation"), "value"] == 0.25
    assert features.loc[("post", "faces.gppi.vmpfc->amygdala.emotional"), "n_runs"] == 1
    # one feature per session, whatever the runs
    assert not features.index.duplicated().any()

    change = change_table(features.reset_index()).set_index("feature")
    assert change.loc["conflict.activation.dacc.regulation", "change"] == pytest.approx(0.25 - dacc)


def test_fixed_effects_se_r_and_order():
    table = pd.DataFrame(
        {
            "roi": ["b", "a", "b", "a"],  # first appearance decides the order: b, a
            "beta": [1.0, 2.0, 3.0, 4.0],
            "se": [1.0, 2.0, 2.0, 2.0],
        }
    )
    combined = inverse_variance_fixed_effects(table, ["roi"])
    assert combined.roi.tolist() == ["b", "a"]
    np.testing.assert_allclose(combined.beta, [(1 + 3 / 4) / (1 + 1 / 4), 3.0], rtol=1e-14)
    np.testing.assert_allclose(combined.se, [(1 + 1 / 4) ** -0.5, 2 / np.sqrt(2)], rtol=1e-14)
    assert combined.n_runs.tolist() == [2, 2]

    rest = pd.DataFrame(
        {
            "pair": ["x", "x", "x"],
            "r": np.tanh([0.1, 0.2, 0.4]),
            "z": [0.1, 0.2, 0.4],
            "n_volumes_kept": [13, 23, 43],
        }
    )
    fc = fisher_z_fixed_effects(rest, ["pair"])
    z = (10 * 0.1 + 20 * 0.2 + 40 * 0.4) / 70
    assert fc.z.tolist() == pytest.approx([z], rel=1e-14)
    assert fc.r.tolist() == pytest.approx([np.tanh(z)], rel=1e-14)
    assert fc.n_volumes_kept.tolist() == [79] and fc.n_runs.tolist() == [3]


def test_an_unusable_run_makes_the_combination_nan_and_leaves_no_change_score():
    act, ppi, rest = _tables()
    act2 = act[act.session == "pre"].assign(run=2, se=np.nan)
    rest2 = rest.assign(run=2, n_volumes_kept=3)  # weight n − 3 = 0
    features = feature_table(pd.concat([act, act2]), ppi, pd.concat([rest, rest2]))
    nan = features[features.value.isna()]
    assert set(nan.feature) == {"conflict.activation.dacc.regulation", "rest.fc.vmpfc~insula_ant"}
    assert set(nan.session) == {"pre"}
    assert "conflict.activation.dacc.regulation" not in set(change_table(features).feature)


def test_rest_task_names_the_feature_and_sessions_name_the_change():
    act, ppi, rest = _tables()
    renamed = {"pre": "base", "post": "week4"}
    act, ppi = (t.assign(session=t.session.map(renamed)) for t in (act, ppi))
    rest = rest.assign(session="base", task="restingstate")
    features = feature_table(act, ppi, rest)
    assert "restingstate.fc.vmpfc~insula_ant" in set(features.feature)
    assert "restingstate.fc" in set(features.family)
    change = change_table(features, ("base", "week4")).set_index("feature")
    assert change.loc["conflict.activation.dacc.regulation", "pre"] == 1.0
    assert change.loc["conflict.activation.dacc.regulation", "change"] == -0.75
    # the default labels (pre, post) are not this study's: no change scores
    assert change_table(features).empty
    # a resting table without a task column is this trial's rest
    old = feature_table(*_tables()[:2], _tables()[2].drop(columns=["task", "run"]))
    assert "rest.fc.vmpfc~insula_ant" in set(old.feature)
