"""``participant_status``: which participants are complete and current, and why not.

A participant enters the group models (``enet_*``, ``dcm_group_effects``) only when every
participant table has its partition, computed on the participant's files as they are now
(:func:`kp_resources.lineage.participant_status`) and its latest run did not fail. Anyone
else — withdrawn (folder gone), failed, changed since processed, incomplete, stale — is
listed here with the reason, left out of every group model, and hidden from the warehouse
views of the participant tables (the rows stay in the files: ``all_rows.<table>``).

It depends on every participant table, so the group refresh reruns it (and, through it,
every group model) whenever any participant's tables changed.
"""

import dagster as dg
import pandas as pd
from dagster_shared.error import SerializableErrorInfo

from kp_assets.automation import GROUP_REFRESH
from kp_resources.asset_metadata import markdown_table
from kp_resources.lineage import CURRENT
from kp_resources.lineage import participant_status as status_table
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.study.errors import StudyDataError

#: Every participant-partitioned table, upstream first (``scans`` first).
PARTICIPANT_TABLES = (
    "scans",
    "roi_timeseries",
    "roi_coverage",
    "roi_activation",
    "task_connectivity",
    "rest_connectivity",
    "session_features",
    "change_scores",
    "dcm_fits",
    "dcm_parameters",
)
PARTITION_TAG = "dagster/partition"
_RUNNING = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
_FAILED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def innermost_message(error: SerializableErrorInfo) -> str:
    """The message of the exception that started a chain (not Dagster's wrappers), without
    the exception's module path when it is kp's own :class:`StudyDataError` (whose message
    already names the file and the problem)."""
    while error.cause is not None:
        error = error.cause
    message = error.message.strip()
    prefix = f"{StudyDataError.__module__}.{StudyDataError.__name__}: "
    return message.removeprefix(prefix) if error.cls_name == StudyDataError.__name__ else message


def step_failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """``"<step>: <message>"`` of every failed step of a stored run."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    messages = []
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.step_failure_data.error is not None:
            messages.append(f"{event.step_key}: {innermost_message(event.step_failure_data.error)}")
    return messages


#: Participants asked about per query of the run storage (SQLite binds each as a variable).
_RUNS_PER_QUERY = 500


def latest_runs(instance: dg.DagsterInstance, pids: list[str]) -> dict[str, tuple[str, str]]:
    """``{pid: ("failed" | "processing", message)}`` for participants whose latest run
    failed or is running now. One query per :data:`_RUNS_PER_QUERY` participants (newest
    run first), not one per participant: a thousand participants cost milliseconds."""
    latest: dict[str, dg.DagsterRun] = {}
    for start in range(0, len(pids), _RUNS_PER_QUERY):
        batch = pids[start : start + _RUNS_PER_QUERY]
        for run in instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: batch})):
            latest.setdefault(run.tags[PARTITION_TAG], run)
    found = {}
    for pid in pids:
        run = latest.get(pid)
        if run is None:
            continue
        if run.status in _RUNNING:
            found[pid] = ("processing", f"run {run.run_id[:8]} of {pid} is in progress")
        elif run.status in _FAILED:
            errors = step_failure_messages(instance, run.run_id)
            what = "; ".join(errors) if errors else f"run {run.status.value.lower()}"
            found[pid] = ("failed", f"latest run {run.run_id[:8]} failed: {what}")
    return found


@dg.asset(
    deps=list(PARTICIPANT_TABLES),
    automation_condition=GROUP_REFRESH,
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="participant_status-1",
    description="One row per participant: current (complete, on the files as they are now) "
    "or withdrawn / processing / failed / not_processed / changed / incomplete / "
    "stale, with the reason. Group models use current participants only.",
)
def participant_status(
    context: dg.AssetExecutionContext, study: StudyFolder, warehouse: Warehouse
) -> pd.DataFrame:
    listing = study.discover()
    known = sorted(
        set(listing.participants) | set(context.instance.get_dynamic_partitions("participants"))
    )
    table = status_table(
        study.protocol(),
        warehouse.root,
        PARTICIPANT_TABLES,
        listing.participants,
        listing.skipped,
        latest_runs(context.instance, known),
    )
    others = table[table["status"] != CURRENT]
    for row in others.itertuples():
        context.log.warning(
            f"{row.participant_id} left out of the group models: {row.status}: {row.reason}"
        )
    counts = table["status"].value_counts().to_dict()
    context.add_output_metadata(
        {
            "n_current": int(counts.get(CURRENT, 0)),
            "n_not_current": len(others),
            "statuses": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
            "not_current": dg.MetadataValue.md(
                markdown_table(others[["participant_id", "status", "reason"]])
                if len(others)
                else "none"
            ),
        }
    )
    return table


def current_participants(status: pd.DataFrame) -> set[str]:
    """Participants whose status is current."""
    return set(status.loc[status["status"] == CURRENT, "participant_id"])


def not_current(status: pd.DataFrame) -> pd.DataFrame:
    """participant_id and reason (``"<status>: <reason>"``) of everyone not current."""
    rows = status[status["status"] != CURRENT]
    return pd.DataFrame(
        {
            "participant_id": rows["participant_id"].to_numpy(),
            "reason": (rows["status"] + ": " + rows["reason"]).to_numpy(),
        }
    )
