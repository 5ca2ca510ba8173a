"""``roi_activation``: ROI-level first-level GLM betas and t values per task run (session ×
task × run)."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_assets.task_runs import task_run_table
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.study import StudyFolder
from kp_science.run_measures import ACTIVATION_DTYPES, activation_rows


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="roi_activation-3",
    description="Task activation per ROI and contrast (the study protocol's; this trial: faces "
    "emotional_vs_neutral; conflict regulation = iI − cI, monitoring = incongruent − "
    "congruent): beta (% signal), se, t from an AR(1) GLM on the cleaned ROI signals, one "
    "row set per run.",
)
def roi_activation(
    context: dg.AssetExecutionContext,
    scans: pd.DataFrame,
    roi_timeseries: pd.DataFrame,
    cleaning: ConfoundCleaning,
    study: StudyFolder,
) -> pd.DataFrame:
    return task_run_table(
        context,
        scans,
        roi_timeseries,
        cleaning,
        study.protocol(),
        activation_rows,
        ACTIVATION_DTYPES,
    )
