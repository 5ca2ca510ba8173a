"""``rest_connectivity``: Pearson r and Fisher z between ROI pairs, per resting run."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_assets.task_runs import run_signals
from kp_resources.provenance import inherit_provenance
from kp_resources.study import StudyFolder
from kp_science.figures import markdown_image
from kp_science.roi_plots import connectivity_matrix_png
from kp_science.run_measures import REST_DTYPES, canonical_order, empty_rows, rest_rows
from kp_science.study.protocol import StudyProtocol

KEYS = {"session": str, "task": str, "run": int}
COLUMNS = ["participant_id", *KEYS, *REST_DTYPES]


def rest_runs(roi_timeseries: pd.DataFrame, protocol: StudyProtocol) -> list[tuple[str, str, int]]:
    """(session, task, run) of every resting run in ``roi_timeseries``: sessions and tasks in
    protocol order, runs in number order."""
    present = set(
        zip(roi_timeseries["session"], roi_timeseries["task"], roi_timeseries["run"], strict=True)
    )
    return [
        (session, task, int(run))
        for session in protocol.sessions
        for task in protocol.rest_tasks
        for run in sorted(r for s, t, r in present if (s, t) == (session, task))
    ]


@dg.asset(
    partitions_def=participants,
    group_name="features",
    kinds={"pandas", "parquet"},
    code_version="rest_connectivity-2",
    description="Resting-state functional connectivity per resting run: Pearson r and Fisher z "
    "for every ROI pair of the cleaned, scrubbed signals, and the run's kept volumes "
    "(session_features combines a session's runs by their weights n − 3).",
)
def rest_connectivity(
    context: dg.AssetExecutionContext, roi_timeseries: pd.DataFrame, study: StudyFolder
) -> pd.DataFrame:
    protocol = study.protocol()
    runs = rest_runs(roi_timeseries, protocol)
    several = len(runs) > len({session for session, _, _ in runs})
    tables, plots = [], {}
    for session, task, run in runs:
        signals = run_signals(roi_timeseries, session, task, run)
        if signals.empty:
            continue
        tables.append(rest_rows(signals).assign(session=session, task=task, run=run))
        # one resting run per session keeps the plot's name (matrix_<session>)
        name = f"matrix_{session}" + (f"_{task}_run-{run}" if several else "")
        title = f"{context.partition_key} ses-{session} task-{task} run-{run}: Pearson r"
        plots[name] = dg.MetadataValue.md(
            markdown_image(
                connectivity_matrix_png(canonical_order(signals).corr(), title, vmax=1.0), title
            )
        )
    if not tables:  # no rest run was acquired: no resting features, and nothing to fail on
        context.log.warning(
            f"{context.partition_key}: no run of the rest task(s) "
            f"{', '.join(protocol.rest_tasks) or '(none in the protocol)'} in roi_timeseries, "
            "so no resting connectivity"
        )
        tables.append(empty_rows(KEYS | REST_DTYPES))
    result = pd.concat(tables, ignore_index=True).assign(participant_id=context.partition_key)
    context.add_output_metadata(plots)
    return inherit_provenance(result[COLUMNS].astype({"run": int}), roi_timeseries)
