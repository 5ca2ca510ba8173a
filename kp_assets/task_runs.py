"""What the task models of one participant need, gathered once per run from the warehouse.

``roi_activation`` and ``task_connectivity`` both fit models on the cleaned ROI signals of
``roi_timeseries``; they need the same events, confounds and kept volumes to build designs
that are cleaned exactly like the signals. Every run of a task is modelled on its own: the
tables carry ``run``, and ``session_features`` combines a session's runs.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from kp_resources.cleaning import ConfoundCleaning
from kp_resources.provenance import inherit_provenance
from kp_science.roi_signals import load_run_confounds
from kp_science.run_measures import TaskRun, empty_rows, task_run
from kp_science.study.errors import StudyDataError
from kp_science.study.protocol import StudyProtocol
from kp_science.study.reading import CHANGED_SINCE_SCANS
from kp_science.study.validate import EventRequirements, read_events, study_event_requirements


def run_signals(roi_timeseries: pd.DataFrame, session: str, task: str, run: int) -> pd.DataFrame:
    """Cleaned signals of one run (kept volumes × ROIs, % signal change) from the long table;
    no rows if the table has no such run."""
    rows = roi_timeseries[
        (roi_timeseries["session"] == session)
        & (roi_timeseries["task"] == task)
        & (roi_timeseries["run"] == run)
        & ~roi_timeseries["scrubbed"]
    ]
    return rows.pivot(index="volume", columns="roi", values="signal")


@dataclass
class RunModelInputs:
    """What every model of one task run shares: the confounds and kept volume indices that
    cleaned its ROI signals, its validated events and the slice-timing reference (fraction
    of TR)."""

    confounds: pd.DataFrame
    kept: np.ndarray
    events: pd.DataFrame
    slice_time_ref: float


def run_model_inputs(
    scan: pd.Series,
    roi_timeseries: pd.DataFrame,
    cleaning: ConfoundCleaning,
    requirements: Mapping[str, EventRequirements],
) -> RunModelInputs:
    """Load a task run's confounds and events, checking that the cleaning settings still
    give the volumes ``roi_timeseries`` kept and validating the events as ``scans`` did
    (``requirements``: :func:`kp_science.study.validate.study_event_requirements`)."""
    rows = roi_timeseries[
        (roi_timeseries["session"] == scan["session"])
        & (roi_timeseries["task"] == scan["task"])
        & (roi_timeseries["run"] == scan["run"])
    ]
    confounds, kept = load_run_confounds(
        scan["bold_path"], cleaning.strategy(), scan["confounds_path"]
    )
    if not np.array_equal(kept, np.sort(rows.loc[~rows["scrubbed"], "volume"].unique())):
        raise StudyDataError(
            scan["confounds_path"],
            "kept volumes differ from roi_timeseries (cleaning settings changed: rematerialize it)",
        )
    if pd.isna(scan["events_path"]):
        raise StudyDataError(
            scan["bold_path"],
            f"task run '{scan['task']}' has no events file in the scans inventory",
        )
    events, sha = read_events(
        Path(scan["events_path"]),
        requirements.get(scan["task"]),
        int(scan["n_volumes"]),
        float(scan["tr"]),
    )
    if sha != scan["events_sha256"]:
        raise StudyDataError(scan["events_path"], CHANGED_SINCE_SCANS)
    return RunModelInputs(confounds, kept, events, float(rows["time_s"].min()) / float(scan["tr"]))


def task_runs(
    scans: pd.DataFrame,
    roi_timeseries: pd.DataFrame,
    cleaning: ConfoundCleaning,
    protocol: StudyProtocol,
) -> list[tuple[str, int, TaskRun]]:
    """(session, run number, run ready for its models) of every run of ``scans`` of one of
    the protocol's event tasks, in the order of ``scans``: the cleaned signals of
    ``roi_timeseries`` with the design :func:`kp_science.run_measures.task_run` builds from
    the run's events and confounds."""
    runs = []
    requirements = study_event_requirements(protocol)
    for _, scan in scans[scans["task"].isin(protocol.event_tasks)].iterrows():
        session, task, number = scan["session"], scan["task"], int(scan["run"])
        shared = run_model_inputs(scan, roi_timeseries, cleaning, requirements)
        runs.append(
            (
                session,
                number,
                task_run(
                    run_signals(roi_timeseries, session, task, number),
                    shared.events,
                    protocol.tasks[task],
                    shared.confounds,
                    shared.kept,
                    int(scan["n_volumes"]),
                    float(scan["tr"]),
                    shared.slice_time_ref,
                ),
            )
        )
    return runs


def task_run_table(
    context: dg.AssetExecutionContext,
    scans: pd.DataFrame,
    roi_timeseries: pd.DataFrame,
    cleaning: ConfoundCleaning,
    protocol: StudyProtocol,
    rows: Callable[[TaskRun], pd.DataFrame],
    dtypes: Mapping[str, object],
) -> pd.DataFrame:
    """One participant's table of a per-task-run measure: ``rows(run)`` for every task run,
    keyed by participant_id, session, task and run (the run number, in that order, then the
    measure's ``dtypes`` columns). No task run at all gives an empty table with those columns
    and a warning."""
    tables = []
    for session, number, run in task_runs(scans, roi_timeseries, cleaning, protocol):
        table = rows(run)
        tables.append(table.assign(session=session, task=run.task, run=number))
        context.log.info(f"ses-{session} task-{run.task} run-{number}: {len(table)} rows")
    if not tables:  # no task run was acquired: no task features, and nothing to fail on
        context.log.warning(
            f"{context.partition_key}: no run of the tasks {', '.join(protocol.event_tasks)} "
            "in scans, "
            f"so no {context.asset_key.to_user_string()}"
        )
        tables.append(empty_rows({"session": str, "task": str, "run": int} | dict(dtypes)))
    result = pd.concat(tables, ignore_index=True).assign(participant_id=context.partition_key)
    columns = ["participant_id", "session", "task", "run", *dtypes]
    return inherit_provenance(result[columns].astype({"run": int}), roi_timeseries)
