"""The per-run measure chain: cleaned ROI signals → task design → activation GLM → gPPI, and
resting connectivity.

One chain for every caller: the feature assets run its steps (``roi_timeseries`` cleans,
``roi_activation`` / ``task_connectivity`` / ``rest_connectivity`` fit, ``session_features``
/ ``change_scores`` name and difference, :mod:`.session_features`), and the region-level
path of :mod:`kp_science.finding_rates` runs :func:`run_measures` on simulated ROI means.
The steps, per run:

1. **Cleaning** (:func:`kp_science.roi_signals.clean_roi_signals`): raw ROI means
   (n_volumes × ROIs, intensity) → percent signal change, confounds regressed out,
   scrubbed volumes dropped (kept volumes × ROIs).
2. **Design** (:func:`task_run`): the task's conditions (:func:`.activation.task_conditions`),
   Glover-convolved regressors at the slice-timing reference, cleaned of the same confounds
   at the same kept volumes, the confounds themselves (an orthonormal basis) and a constant
   (kept volumes × conditions + confounds + 1, :func:`.activation.clean_design`).
3. **Activation** (:func:`activation_rows`): AR(1) GLM of every ROI on the design, the
   task's contrasts (the protocol's :class:`~kp_science.study.protocol.TaskSpec`): nilearn's
   ``FirstLevelModel`` with the confounds in the design and the scrubbed volumes masked out,
   degrees of freedom kept volumes − design columns (confounds counted).
4. **gPPI** (:func:`gppi_rows`): every ordered seed → target pair, every condition and task
   contrast (:func:`.gppi.fit_gppi`), the same confounds in every seed's design.
5. **Rest FC** (:func:`rest_rows`): Pearson r and Fisher z of every ROI pair, ROIs in the
   canonical order of :data:`.rois.ROI_NAMES`, with the run's kept volumes (the weight of
   the run when :mod:`.session_features` combines a session's runs).

Everything here is per run: the tables keep one row per run × measure (the callers key them
by session, task and run), and :mod:`.session_features` combines the runs of a session by
fixed effects. Task-run rows follow the column order of the signals they are given (the
caller decides it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kp_science.activation import clean_design, fit_roi_glm, task_conditions, task_design
from kp_science.gppi import fit_gppi
from kp_science.rest_fc import pair_correlations
from kp_science.roi_signals import clean_roi_signals
from kp_science.rois import ROI_NAMES
from kp_science.study.protocol import TaskSpec

# columns and types of each measure's rows (without the run's keys)
ACTIVATION_DTYPES: dict[str, type] = {
    "roi": str,
    "contrast": str,
    "beta": float,
    "se": float,
    "t": float,
}
GPPI_DTYPES: dict[str, type] = {
    "seed": str,
    "target": str,
    "contrast": str,
    "beta": float,
    "se": float,
    "t": float,
}
REST_DTYPES: dict[str, type] = {
    "roi_a": str,
    "roi_b": str,
    "r": float,
    "z": float,
    "n_volumes_kept": int,
}


def empty_rows(dtypes: Mapping[str, type]) -> pd.DataFrame:
    """A table without rows whose columns have the given types."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})


@dataclass(frozen=True)
class TaskRun:
    """One task run, ready for its models.

    ``task``: its task label; ``contrasts``: the task's contrasts (name → weights over the
    model conditions, from the protocol's :class:`~kp_science.study.protocol.TaskSpec`);
    ``signals``: cleaned ROI signals (kept volumes × ROIs, % signal change, indexed by the
    kept volume numbers); ``conditions``: onset (s), duration (s), trial_type — the task's
    model conditions (:func:`.activation.task_conditions`); ``design``: the activation
    model's design for the same rows (kept volumes × conditions + confounds + ``constant``:
    the cleaned task regressors, the confounds' columns, :func:`.activation.clean_design`);
    ``confounds`` (n_volumes × confounds) and ``kept`` (indices of the kept volumes): what
    cleaned both;
    ``n_volumes``: volumes acquired; ``tr`` (s); ``slice_time_ref``: reference time of each
    volume as a fraction of TR.
    """

    task: str
    contrasts: Mapping[str, Mapping[str, float]]
    signals: pd.DataFrame
    conditions: pd.DataFrame
    design: pd.DataFrame
    confounds: pd.DataFrame
    kept: np.ndarray
    n_volumes: int
    tr: float
    slice_time_ref: float


def task_run(
    signals: pd.DataFrame,
    events: pd.DataFrame,
    task: TaskSpec,
    confounds: pd.DataFrame,
    kept: np.ndarray,
    n_volumes: int,
    tr: float,
    slice_time_ref: float,
) -> TaskRun:
    """A task run's conditions and cleaned design, with what its models need.

    ``signals``: cleaned ROI signals (kept volumes × ROIs); ``events``: onset (s), duration
    (s), trial_type as in the events file; ``task``: the protocol's task (conditions, contrasts);
    ``confounds`` (n_volumes × confounds) and ``kept`` (kept volume indices): what cleaned
    ``signals``; ``tr`` (s); ``slice_time_ref``: fraction of TR.
    """
    conditions = task_conditions(events, task)
    design = clean_design(
        task_design(conditions, n_volumes, tr, slice_time_ref), confounds, kept, tr
    )
    return TaskRun(
        task.label,
        task.contrasts,
        signals,
        conditions,
        design,
        confounds,
        kept,
        n_volumes,
        tr,
        slice_time_ref,
    )


def activation_rows(run: TaskRun) -> pd.DataFrame:
    """Activation of every ROI: rows roi, contrast, beta (% signal change per unit regressor),
    se, t, contrast-major, for the task's contrasts (:func:`.activation.fit_roi_glm`)."""
    return fit_roi_glm(run.signals, run.design, run.contrasts)


def gppi_rows(run: TaskRun) -> pd.DataFrame:
    """gPPI of every ordered ROI pair: rows seed, target, contrast, beta, se, t, for every
    condition and the task's contrasts over the interaction terms (:func:`.gppi.fit_gppi`)."""
    return fit_gppi(
        run.signals,
        run.design,
        run.conditions,
        run.confounds,
        run.kept,
        run.n_volumes,
        run.tr,
        run.slice_time_ref,
        run.contrasts,
    )


def canonical_order(signals: pd.DataFrame) -> pd.DataFrame:
    """``signals`` with its ROI columns in the order of :data:`.rois.ROI_NAMES` (columns that
    are not region names are left out)."""
    return signals[[r for r in ROI_NAMES if r in signals.columns]]


def rest_rows(signals: pd.DataFrame) -> pd.DataFrame:
    """Resting connectivity of cleaned ROI signals (kept volumes × ROIs): rows roi_a, roi_b,
    r (Pearson), z (Fisher), n_volumes_kept (the signals' rows), one per unordered pair in
    canonical ROI order (:func:`canonical_order`, :func:`.rest_fc.pair_correlations`)."""
    pairs = pair_correlations(canonical_order(signals))
    return pairs.assign(n_volumes_kept=len(signals)).astype({"n_volumes_kept": int})


@dataclass(frozen=True)
class RunMeasures:
    """The measures of one run (or, from :func:`stack_measures`, of many): ``activation``
    (:data:`ACTIVATION_DTYPES` columns), ``gppi`` (:data:`GPPI_DTYPES`) and ``rest``
    (:data:`REST_DTYPES`); a task run has no rest rows and a rest run no task rows."""

    activation: pd.DataFrame
    gppi: pd.DataFrame
    rest: pd.DataFrame


def run_measures(
    raw: pd.DataFrame,
    confounds: pd.DataFrame,
    kept: np.ndarray,
    tr: float,
    task: TaskSpec | None = None,
    events: pd.DataFrame | None = None,
    slice_time_ref: float = 0.0,
) -> RunMeasures:
    """The whole chain on one run, from its raw ROI means.

    ``raw``: ROI means (n_volumes × ROIs, image intensity); ``confounds`` (n_volumes ×
    confounds) and ``kept`` (indices of the volumes scrubbing keeps): the cleaning;
    ``tr`` (s); ``events`` (onset, duration, trial_type; None for a resting run) and
    ``task`` (the protocol's task, for a task run); ``slice_time_ref``:
    reference time of each volume as a fraction of TR.
    """
    signals = clean_roi_signals(raw, confounds, kept, tr)
    if events is None or task is None:
        return RunMeasures(
            empty_rows(ACTIVATION_DTYPES), empty_rows(GPPI_DTYPES), rest_rows(signals)
        )
    run = task_run(signals, events, task, confounds, kept, len(raw), tr, slice_time_ref)
    return RunMeasures(activation_rows(run), gppi_rows(run), empty_rows(REST_DTYPES))


def with_keys(table: pd.DataFrame, keys: Mapping[str, Any]) -> pd.DataFrame:
    """``table`` with the ``keys`` (e.g. participant_id, session, task) as its first columns;
    ``table`` itself is left as it is."""
    keyed = table.copy(deep=False)
    for position, (name, value) in enumerate(keys.items()):
        keyed.insert(position, name, value)
    return keyed


def stack_measures(runs: Iterable[tuple[Mapping[str, object], RunMeasures]]) -> RunMeasures:
    """The measures of many runs in one :class:`RunMeasures`, each row prefixed with its run's
    keys (:func:`with_keys`; every run must have the same key names), runs in order."""
    parts: list[list[pd.DataFrame]] = [[], [], []]
    names: list[str] = []
    for keys, measures in runs:
        names = list(keys)
        tables = (measures.activation, measures.gppi, measures.rest)
        for kind, table in zip(parts, tables, strict=True):
            if len(table):
                kind.append(with_keys(table, keys))
    stacked = []
    for kind, dtypes in zip(parts, (ACTIVATION_DTYPES, GPPI_DTYPES, REST_DTYPES), strict=True):
        stacked.append(
            pd.concat(kind, ignore_index=True)
            if kind
            else empty_rows(dict.fromkeys(names, str) | dtypes)
        )
    return RunMeasures(*stacked)
