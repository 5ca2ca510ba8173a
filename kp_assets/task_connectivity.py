"""``task_connectivity``: generalized PPI for every ordered ROI pair and task run (session ×
task × run)."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_assets.task_runs import task_run_table
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.study import StudyFolder
from kp_science.run_measures import GPPI_DTYPES, gppi_rows


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="task_connectivity-3",
    description="gPPI interaction betas seed → target for each condition (e.g. emotional) and "
    "task contrast, both directions of every ROI pair (McLaren et al. 2012), one row set per "
    "run.",
)
def task_connectivity(
    context: dg.AssetExecutionContext,
    scans: pd.DataFrame,
    roi_timeseries: pd.DataFrame,
    cleaning: ConfoundCleaning,
    study: StudyFolder,
) -> pd.DataFrame:
    return task_run_table(
        context, scans, roi_timeseries, cleaning, study.protocol(), gppi_rows, GPPI_DTYPES
    )
