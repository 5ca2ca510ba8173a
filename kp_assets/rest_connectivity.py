"""``rest_connectivity``: Pearson r and Fisher z between ROI pairs at rest, per session."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_assets.task_runs import empty_table, run_signals
from kp_resources.parquet_io import inherit_provenance
from kp_science.rest_fc import pair_correlations
from kp_science.roi_plots import connectivity_matrix_png, markdown_image


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="rest_connectivity-1",
    description="Resting-state functional connectivity: Pearson r and Fisher z for every ROI "
                "pair of the cleaned, scrubbed resting signals.",
)
def rest_connectivity(context: dg.AssetExecutionContext,
                      roi_timeseries: pd.DataFrame) -> pd.DataFrame:
    from kp_science.rois import ROI_NAMES

    tables, plots = [], {}
    for session in ("pre", "post"):
        signals = run_signals(roi_timeseries, session, "rest")
        if signals.empty:
            continue
        ordered = signals[[r for r in ROI_NAMES if r in signals.columns]]
        tables.append(pair_correlations(ordered).assign(session=session))
        title = f"{context.partition_key} ses-{session} rest: Pearson r"
        plots[f"matrix_{session}"] = dg.MetadataValue.md(markdown_image(
            connectivity_matrix_png(ordered.corr(), title, vmax=1.0), title))
    if not tables:  # no rest run was acquired: no resting features, and nothing to fail on
        context.log.warning(f"{context.partition_key}: no rest run in roi_timeseries, so no "
                            "resting connectivity")
        tables.append(empty_table(session=str, roi_a=str, roi_b=str, r=float, z=float))
    result = pd.concat(tables, ignore_index=True).assign(participant_id=context.partition_key)
    context.add_output_metadata(plots)
    columns = ["participant_id", "session", "roi_a", "roi_b", "r", "z"]
    return inherit_provenance(result[columns], roi_timeseries)
