"""``session_features`` and ``change_scores``: every imaging measure as a named feature, and
its post − pre change (names, families and rules: :mod:`kp_science.session_features`).
"""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_resources.provenance import inherit_provenance
from kp_science.session_features import change_table, feature_table


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="session_features-2",
    description="One row per participant × session × feature (activation betas, gPPI betas, "
    "resting Fisher z), with the feature's family.",
)
def session_features(
    context: dg.AssetExecutionContext,
    roi_activation: pd.DataFrame,
    task_connectivity: pd.DataFrame,
    rest_connectivity: pd.DataFrame,
) -> pd.DataFrame:
    table = feature_table(roi_activation, task_connectivity, rest_connectivity)
    context.add_output_metadata(
        {
            "n_features": int(table["feature"].nunique()),
            "sessions": ", ".join(sorted(table["session"].unique())),
        }
    )
    return inherit_provenance(table, roi_activation, task_connectivity, rest_connectivity)


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="change_scores-1",
    description="post − pre of every feature; empty until the post session has arrived.",
)
def change_scores(
    context: dg.AssetExecutionContext, session_features: pd.DataFrame
) -> pd.DataFrame:
    table = change_table(session_features)
    if table.empty:
        context.log.info(f"{context.partition_key}: no post session yet, no change scores")
    return inherit_provenance(table, session_features)
