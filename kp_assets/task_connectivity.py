"""``task_connectivity``: generalized PPI for every ordered ROI pair, session and task."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_assets.task_runs import task_runs
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.provenance import inherit_provenance
from kp_science.run_measures import GPPI_DTYPES, empty_rows, gppi_rows


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="task_connectivity-1",
    description="gPPI interaction betas seed → target for each condition (e.g. emotional) and "
    "task contrast, both directions of every ROI pair (McLaren et al. 2012).",
)
def task_connectivity(
    context: dg.AssetExecutionContext,
    scans: pd.DataFrame,
    roi_timeseries: pd.DataFrame,
    cleaning: ConfoundCleaning,
) -> pd.DataFrame:
    tables = []
    for session, run in task_runs(scans, roi_timeseries, cleaning):
        table = gppi_rows(run)
        tables.append(table.assign(session=session, task=run.task))
        context.log.info(f"gPPI ses-{session} task-{run.task}: {len(table)} betas")
    if not tables:  # no task run was acquired: no task features, and nothing to fail on
        context.log.warning(
            f"{context.partition_key}: no faces or conflict run in scans, so no task_connectivity"
        )
        tables.append(empty_rows({"session": str, "task": str} | GPPI_DTYPES))
    result = pd.concat(tables, ignore_index=True).assign(participant_id=context.partition_key)
    columns = ["participant_id", "session", "task", "seed", "target", "contrast", "beta", "se", "t"]
    return inherit_provenance(result[columns], roi_timeseries)
