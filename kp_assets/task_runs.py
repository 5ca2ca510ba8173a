"""What the task models of one participant need, gathered once per run from the warehouse.

``roi_activation`` and ``task_connectivity`` both fit models on the cleaned ROI signals of
``roi_timeseries``; they need the same events, confounds and kept volumes to build designs
that are cleaned exactly like the signals.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMModels
from kp_resources.provenance import inherit_provenance
from kp_science.roi_signals import load_run_confounds
from kp_science.run_measures import TaskRun, empty_rows, task_run
from kp_science.study.errors import StudyDataError
from kp_science.study.reading import CHANGED_SINCE_SCANS
from kp_science.study.validate import EventRequirements, default_event_requirements, read_events
from kp_science.study.vocabulary import EVENT_TASKS


def event_requirements(dcm_models: DCMModels | None = None) -> dict[str, EventRequirements]:
    """Task → what its models need from every events file: the task contrasts
    (:func:`kp_science.study.validate.default_event_requirements`) and, for the DCM's task, the
    trial types of the ``dcm_models`` inputs. ``scans`` checks these, and the models check
    the same again when they read the events, so both agree."""
    needs = default_event_requirements()
    if dcm_models is None:
        return needs
    inputs = dcm_models.input_trial_types()
    trial_types = tuple(dict.fromkeys(t for types in inputs.values() for t in types))
    who = f"the DCM inputs {', '.join(inputs)}"
    task = dcm_models.task
    if task in needs:
        base = needs[task]
        needs[task] = replace(
            base,
            required=tuple(dict.fromkeys(base.required + trial_types)),
            needed_by=f"{base.needed_by} and {who}",
        )
    else:
        needs[task] = EventRequirements(required=trial_types, needed_by=who)
    return needs


def run_signals(roi_timeseries: pd.DataFrame, session: str, task: str) -> pd.DataFrame:
    """Cleaned signals of one run (kept volumes × ROIs) from the long table."""
    rows = roi_timeseries[
        (roi_timeseries["session"] == session)
        & (roi_timeseries["task"] == task)
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
    requirements: Mapping[str, EventRequirements] | None = None,
) -> RunModelInputs:
    """Load a task run's confounds and events, checking that the cleaning settings still
    give the volumes ``roi_timeseries`` kept and validating the events as ``scans`` did
    (``requirements``: see :func:`event_requirements`; default: the task contrasts')."""
    rows = roi_timeseries[
        (roi_timeseries["session"] == scan["session"])
        & (roi_timeseries["task"] == scan["task"])
        & (roi_timeseries["run"] == scan["run"])
    ]
    confounds, kept = load_run_confounds(scan["bold_path"], cleaning.strategy())
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
    needs = event_requirements() if requirements is None else requirements
    events, sha = read_events(
        Path(scan["events_path"]),
        needs.get(scan["task"]),
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
    tasks: tuple[str, ...] = EVENT_TASKS,
) -> list[tuple[str, TaskRun]]:
    """(session, run ready for its models) of every task run of ``scans`` in ``tasks``: the
    cleaned signals of ``roi_timeseries`` with the design
    :func:`kp_science.run_measures.task_run` builds from the run's events and confounds."""
    runs = []
    for _, scan in scans[scans["task"].isin(tasks)].iterrows():
        session, task = scan["session"], scan["task"]
        shared = run_model_inputs(scan, roi_timeseries, cleaning)
        runs.append(
            (
                session,
                task_run(
                    run_signals(roi_timeseries, session, task),
                    shared.events,
                    task,
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
    rows: Callable[[TaskRun], pd.DataFrame],
    dtypes: Mapping[str, object],
) -> pd.DataFrame:
    """One participant's table of a per-task-run measure: ``rows(run)`` for every task run,
    keyed by participant_id, session and task (in that order, then the measure's ``dtypes``
    columns). No task run at all gives an empty table with those columns and a warning."""
    tables = []
    for session, run in task_runs(scans, roi_timeseries, cleaning):
        table = rows(run)
        tables.append(table.assign(session=session, task=run.task))
        context.log.info(f"ses-{session} task-{run.task}: {len(table)} rows")
    if not tables:  # no task run was acquired: no task features, and nothing to fail on
        context.log.warning(
            f"{context.partition_key}: no run of the tasks {', '.join(EVENT_TASKS)} in scans, "
            f"so no {context.asset_key.to_user_string()}"
        )
        tables.append(empty_rows({"session": str, "task": str} | dict(dtypes)))
    result = pd.concat(tables, ignore_index=True).assign(participant_id=context.partition_key)
    columns = ["participant_id", "session", "task", *dtypes]
    return inherit_provenance(result[columns], roi_timeseries)
