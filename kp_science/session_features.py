"""Session features and change scores: every imaging measure of a participant as a named
feature, and its post − pre change.

Feature names (stable, readable): ``<task>.activation.<roi>.<contrast>`` (beta),
``<task>.gppi.<seed>-><target>.<condition>`` (interaction beta of one condition, e.g.
``faces.gppi.vmpfc->amygdala.emotional``), ``rest.fc.<a>~<b>`` (Fisher z). The family is the
first two parts (``faces.gppi``). Change = post − pre, only for participants with both
sessions.

gPPI task contrasts (``emotional_vs_neutral``, ``regulation``, ``monitoring``) stay in the
gPPI table but are not features: each is an exact linear combination of the per-condition
terms, so as predictors they add no information and split a model's weight between exact
copies of the same measurement.
"""

from __future__ import annotations

import pandas as pd

from kp_science.activation import CONTRASTS

COLUMNS = ["participant_id", "session", "feature", "family", "value"]
CHANGE_COLUMNS = ["participant_id", "feature", "pre", "post", "change"]


def feature_table(
    activation: pd.DataFrame, connectivity: pd.DataFrame, rest: pd.DataFrame
) -> pd.DataFrame:
    """The long session × feature table (:data:`COLUMNS`) from the three measure tables.

    ``activation``: participant_id, session, task, roi, contrast, beta (% signal change);
    ``connectivity`` (gPPI): participant_id, session, task, seed, target, contrast, beta;
    ``rest``: participant_id, session, roi_a, roi_b, z (Fisher z). ``value`` is the beta of
    activation and gPPI rows (gPPI task contrasts left out, see the module docstring) and the
    Fisher z of resting rows; rows in that order (activation, gPPI, rest), each table's own
    row order kept.
    """
    task_contrasts = {(task, name) for task, contrasts in CONTRASTS.items() for name in contrasts}
    is_condition = [
        (t, c) not in task_contrasts
        for t, c in zip(connectivity["task"], connectivity["contrast"], strict=True)
    ]
    # a Series, not a list: an empty list would select columns (none), not rows
    connectivity = connectivity[pd.Series(is_condition, index=connectivity.index, dtype=bool)]
    parts = [
        activation.assign(
            feature=activation["task"]
            + ".activation."
            + activation["roi"]
            + "."
            + activation["contrast"],
            family=activation["task"] + ".activation",
            value=activation["beta"],
        ),
        connectivity.assign(
            feature=connectivity["task"]
            + ".gppi."
            + connectivity["seed"]
            + "->"
            + connectivity["target"]
            + "."
            + connectivity["contrast"],
            family=connectivity["task"] + ".gppi",
            value=connectivity["beta"],
        ),
        rest.assign(
            feature="rest.fc." + rest["roi_a"] + "~" + rest["roi_b"],
            family="rest.fc",
            value=rest["z"],
        ),
    ]
    return pd.concat([p[COLUMNS] for p in parts], ignore_index=True)


def change_table(features: pd.DataFrame) -> pd.DataFrame:
    """post − pre per participant × feature (:data:`CHANGE_COLUMNS`, sorted by participant
    and feature) from a :func:`feature_table`; features missing a session are left out, and
    without both sessions the table is empty."""
    wide = features.pivot_table(
        index=["participant_id", "feature"], columns="session", values="value", aggfunc="first"
    )
    if not {"pre", "post"} <= set(wide.columns):
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    wide = wide[["pre", "post"]].dropna().reset_index()
    wide.columns.name = None
    wide["change"] = wide["post"] - wide["pre"]
    return wide[CHANGE_COLUMNS]
