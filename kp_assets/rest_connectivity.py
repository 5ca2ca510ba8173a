"""``rest_connectivity``: Pearson r and Fisher z between ROI pairs at rest, per session."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_assets.task_runs import run_signals
from kp_resources.provenance import inherit_provenance
from kp_science.figures import markdown_image
from kp_science.roi_plots import connectivity_matrix_png
from kp_science.run_measures import REST_DTYPES, canonical_order, empty_rows, rest_rows
from kp_science.study.vocabulary import SESSIONS


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="rest_connectivity-1",
    description="Resting-state functional connectivity: Pearson r and Fisher z for every ROI "
    "pair of the cleaned, scrubbed resting signals.",
)
def rest_connectivity(
    context: dg.AssetExecutionContext, roi_timeseries: pd.DataFrame
) -> pd.DataFrame:
    tables, plots = [], {}
    for session in SESSIONS:
        signals = run_signals(roi_timeseries, session, "rest")
        if signals.empty:
            continue
        tables.append(rest_rows(signals).assign(session=session))
        ordered = canonical_order(signals)
        title = f"{context.partition_key} ses-{session} rest: Pearson r"
        plots[f"matrix_{session}"] = dg.MetadataValue.md(
            markdown_image(connectivity_matrix_png(ordered.corr(), title, vmax=1.0), title)
        )
    if not tables:  # no rest run was acquired: no resting features, and nothing to fail on
        context.log.warning(
            f"{context.partition_key}: no rest run in roi_timeseries, so no resting connectivity"
        )
        tables.append(empty_rows({"session": str} | REST_DTYPES))
    result = pd.concat(tables, ignore_index=True).assign(participant_id=context.partition_key)
    context.add_output_metadata(plots)
    columns = ["participant_id", "session", "roi_a", "roi_b", "r", "z"]
    return inherit_provenance(result[columns], roi_timeseries)
