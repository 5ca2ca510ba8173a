"""``session_features`` and ``change_scores``: every imaging measure as a named feature.

Feature names (stable, readable): ``<task>.activation.<roi>.<contrast>`` (beta),
``<task>.gppi.<seed>-><target>.<condition>`` (interaction beta of one condition, e.g.
``faces.gppi.vmpfc->amygdala.emotional``), ``rest.fc.<a>~<b>`` (Fisher z). The family is the
first two parts (``faces.gppi``). Change = post − pre, only for participants with both
sessions.

gPPI task contrasts (``emotional_vs_neutral``, ``regulation``, ``monitoring``) stay in
``task_connectivity`` but are not features: each is an exact linear combination of the
per-condition terms, so as predictors they add no information and split a model's weight
between exact copies of the same measurement.
"""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_resources.parquet_io import inherit_provenance
from kp_science.activation import CONTRASTS

COLUMNS = ["participant_id", "session", "feature", "family", "value"]


def feature_table(activation: pd.DataFrame, connectivity: pd.DataFrame,
                  rest: pd.DataFrame) -> pd.DataFrame:
    """The long session × feature table from the three measure tables."""
    task_contrasts = {(task, name) for task, contrasts in CONTRASTS.items() for name in contrasts}
    is_condition = [(t, c) not in task_contrasts
                    for t, c in zip(connectivity["task"], connectivity["contrast"], strict=True)]
    # a Series, not a list: an empty list would select columns (none), not rows
    connectivity = connectivity[pd.Series(is_condition, index=connectivity.index, dtype=bool)]
    parts = [
        activation.assign(
            feature=activation["task"] + ".activation." + activation["roi"] + "."
            + activation["contrast"], family=activation["task"] + ".activation",
            value=activation["beta"]),
        connectivity.assign(
            feature=connectivity["task"] + ".gppi." + connectivity["seed"] + "->"
            + connectivity["target"] + "." + connectivity["contrast"],
            family=connectivity["task"] + ".gppi", value=connectivity["beta"]),
        rest.assign(feature="rest.fc." + rest["roi_a"] + "~" + rest["roi_b"], family="rest.fc",
                    value=rest["z"]),
    ]
    return pd.concat([p[COLUMNS] for p in parts], ignore_index=True)


def change_table(features: pd.DataFrame) -> pd.DataFrame:
    """post − pre per participant × feature; features missing a session are left out."""
    wide = features.pivot_table(index=["participant_id", "feature"], columns="session",
                                values="value", aggfunc="first")
    if not {"pre", "post"} <= set(wide.columns):
        return pd.DataFrame(columns=["participant_id", "feature", "pre", "post", "change"])
    wide = wide[["pre", "post"]].dropna().reset_index()
    wide.columns.name = None
    wide["change"] = wide["post"] - wide["pre"]
    return wide[["participant_id", "feature", "pre", "post", "change"]]


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="session_features-2",
    description="One row per participant × session × feature (activation betas, gPPI betas, "
                "resting Fisher z), with the feature's family.",
)
def session_features(context: dg.AssetExecutionContext, roi_activation: pd.DataFrame,
                     task_connectivity: pd.DataFrame,
                     rest_connectivity: pd.DataFrame) -> pd.DataFrame:
    table = feature_table(roi_activation, task_connectivity, rest_connectivity)
    context.add_output_metadata({"n_features": int(table["feature"].nunique()),
                                 "sessions": ", ".join(sorted(table["session"].unique()))})
    return inherit_provenance(table, roi_activation, task_connectivity, rest_connectivity)


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="change_scores-1",
    description="post − pre of every feature; empty until the post session has arrived.",
)
def change_scores(context: dg.AssetExecutionContext,
                  session_features: pd.DataFrame) -> pd.DataFrame:
    table = change_table(session_features)
    if table.empty:
        context.log.info(f"{context.partition_key}: no post session yet, no change scores")
    return inherit_provenance(table, session_features)
