"""``roi_activation``: ROI-level first-level GLM betas and t values per session × task."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_assets.task_runs import task_runs
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.provenance import inherit_provenance
from kp_science.run_measures import ACTIVATION_DTYPES, activation_rows, empty_rows


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="roi_activation-1",
    description="Task activation per ROI and contrast (faces: emotional_vs_neutral; conflict: "
    "regulation = iI − cI, monitoring = incongruent − congruent): beta (% signal), "
    "se, t from an AR(1) GLM on the cleaned ROI signals.",
)
def roi_activation(
    context: dg.AssetExecutionContext,
    scans: pd.DataFrame,
    roi_timeseries: pd.DataFrame,
    cleaning: ConfoundCleaning,
) -> pd.DataFrame:
    tables = []
    for session, run in task_runs(scans, roi_timeseries, cleaning):
        tables.append(activation_rows(run).assign(session=session, task=run.task))
    if not tables:  # no task run was acquired: no task features, and nothing to fail on
        context.log.warning(
            f"{context.partition_key}: no faces or conflict run in scans, so no roi_activation"
        )
        tables.append(empty_rows({"session": str, "task": str} | ACTIVATION_DTYPES))
    result = pd.concat(tables, ignore_index=True).assign(participant_id=context.partition_key)
    columns = ["participant_id", "session", "task", "roi", "contrast", "beta", "se", "t"]
    return inherit_provenance(result[columns], roi_timeseries)
