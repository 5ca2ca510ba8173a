"""The per-session feature table and the change scores (kp_science.session_features)."""

import pandas as pd

from kp_science.session_features import change_table, feature_table


def test_feature_names_and_change_scores():
    act = pd.DataFrame(
        {
            "participant_id": "sub-01",
            "session": ["pre", "post"],
            "task": "conflict",
            "roi": "dacc",
            "contrast": "regulation",
            "beta": [1.0, 0.25],
        }
    )
    ppi = pd.DataFrame(
        {
            "participant_id": "sub-01",
            "session": ["pre", "post"] * 3,
            "task": "faces",
            "seed": "vmpfc",
            "target": "amygdala",
            "contrast": ["emotional"] * 2 + ["neutral"] * 2 + ["emotional_vs_neutral"] * 2,
            "beta": [0.1, 0.4, 0.0, 0.1, 0.1, 0.3],
        }
    )
    rest = pd.DataFrame(
        {
            "participant_id": "sub-01",
            "session": ["pre"],
            "roi_a": "vmpfc",
            "roi_b": "insula_ant",
            "r": 0.2,
            "z": 0.25,
        }
    )
    features = feature_table(act, ppi, rest)
    # the gPPI task contrast (emotional − neutral) is not a feature: the conditions are
    assert set(features.feature) == {
        "conflict.activation.dacc.regulation",
        "faces.gppi.vmpfc->amygdala.emotional",
        "faces.gppi.vmpfc->amygdala.neutral",
        "rest.fc.vmpfc~insula_ant",
    }
    assert set(features.family) == {"conflict.activation", "faces.gppi", "rest.fc"}
    change = change_table(features).set_index("feature")
    # the resting feature has no post value: it gets no change score
    assert list(change.index) == [
        "conflict.activation.dacc.regulation",
        "faces.gppi.vmpfc->amygdala.emotional",
        "faces.gppi.vmpfc->amygdala.neutral",
    ]
    assert change.loc["conflict.activation.dacc.regulation", "change"] == -0.75
    assert change_table(features[features.session == "pre"]).empty
