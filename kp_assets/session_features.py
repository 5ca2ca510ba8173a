"""``session_features`` and ``change_scores``: every imaging measure as a named feature, a
session's runs combined by fixed effects, and its post − pre change (names, families and the
combination: :mod:`kp_science.session_features`).
"""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_resources.provenance import inherit_provenance
from kp_resources.study import StudyFolder
from kp_science.session_features import change_table, feature_table


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="session_features-3",
    description="One row per participant × session × feature (activation betas, gPPI betas, "
    "resting Fisher z), with the feature's family; several runs of a task are combined by "
    "fixed effects (betas by inverse-variance weighting, Fisher z weighted by n − 3), n_runs "
    "says how many.",
)
def session_features(
    context: dg.AssetExecutionContext,
    roi_activation: pd.DataFrame,
    task_connectivity: pd.DataFrame,
    rest_connectivity: pd.DataFrame,
    study: StudyFolder,
) -> pd.DataFrame:
    table = feature_table(
        roi_activation, task_connectivity, rest_connectivity, study.protocol().tasks
    )
    context.add_output_metadata(
        {
            "n_features": int(table["feature"].nunique()),
            "sessions": ", ".join(sorted(table["session"].unique())),
            "max_runs_combined": int(table["n_runs"].max()) if len(table) else 0,
        }
    )
    return inherit_provenance(table, roi_activation, task_connectivity, rest_connectivity)


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="change_scores-2",
    description="post − pre (follow-up − baseline session) of every feature; empty until the "
    "follow-up session has arrived.",
)
def change_scores(
    context: dg.AssetExecutionContext, session_features: pd.DataFrame, study: StudyFolder
) -> pd.DataFrame:
    table = change_table(session_features, study.protocol().sessions)
    if table.empty:
        context.log.info(f"{context.partition_key}: no post session yet, no change scores")
    return inherit_provenance(table, session_features)
