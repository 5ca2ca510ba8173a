"""Session features and change scores: every imaging measure of a participant as a named
feature (its runs combined by fixed effects), and its post − pre change.

Feature names (stable, readable): ``<task>.activation.<roi>.<contrast>`` (beta),
``<task>.gppi.<seed>-><target>.<condition>`` (interaction beta of one condition, e.g.
``faces.gppi.vmpfc->amygdala.emotional``), ``<rest task>.fc.<a>~<b>`` (Fisher z; this
trial's rest task is ``rest``: ``rest.fc.vmpfc~insula_ant``). The family is the first two
parts (``faces.gppi``). Change = post − pre, only for participants with both sessions.

**Several runs of a task in a session** are combined into one session value by fixed
effects (every run measures the same session-level quantity; no between-run variance is
modelled):

- activation and gPPI betas by inverse-variance weighting of the per-run betas,
  ``beta = Σ b_i / se_i² / Σ 1 / se_i²`` with ``se = (Σ 1 / se_i²)^-½``
  (:func:`inverse_variance_fixed_effects`);
- resting connectivity by the weighted mean of the per-run Fisher z with weights
  ``n_i − 3`` (``n_i``: the run's kept volumes; ``1 / (n − 3)`` is the sampling variance of
  Fisher z), ``r = tanh(z)`` (:func:`fisher_z_fixed_effects`).

A session with a single run of a task keeps that run's values exactly (no arithmetic is
done on them). Among several runs, one whose weight (1/se², n − 3) is not a finite positive
number makes the combined value NaN (and a feature with NaN gets no change score).

gPPI task contrasts (``emotional_vs_neutral``, ``regulation``, ``monitoring``) stay in the
gPPI table but are not features: each is an exact linear combination of the per-condition
terms, so as predictors they add no information and split a model's weight between exact
copies of the same measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kp_science.study.protocol import TaskSpec, default_vocabulary

COLUMNS = ["participant_id", "session", "feature", "family", "value", "n_runs"]
CHANGE_COLUMNS = ["participant_id", "feature", "pre", "post", "change"]
# the keys of a session-level measure: the run (if any) is what fixed effects combine over
ACTIVATION_KEYS = ["participant_id", "session", "task", "roi", "contrast"]
GPPI_KEYS = ["participant_id", "session", "task", "seed", "target", "contrast"]
REST_KEYS = ["participant_id", "session", "task", "roi_a", "roi_b"]


def _run_groups(table: pd.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The runs of each estimate: (rows,) group number of every row (groups numbered in order
    of first appearance) and (rows,) True at the first row of each group."""
    group = table.groupby(list(keys), sort=False, dropna=False).ngroup().to_numpy(int)
    return group, ~pd.Series(group).duplicated().to_numpy()


def _group_mean(
    value: np.ndarray, weights: np.ndarray, group: np.ndarray, first: np.ndarray
) -> np.ndarray:
    """(groups,) weighted mean of ``value`` (rows,) over each group's rows; a group of one row
    keeps its value untouched, and in a larger group a non-finite or non-positive weight
    makes the mean NaN."""
    n_groups = int(first.sum())
    weights = np.where(np.isfinite(weights) & (weights > 0), weights, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(group, weights * value, n_groups) / np.bincount(group, weights, n_groups)
    # one run: its own value, bit for bit (the division could move the last digit)
    return np.where(np.bincount(group, minlength=n_groups) == 1, value[first], mean)


def inverse_variance_fixed_effects(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Fixed-effects combination of per-run estimates: one row per group of ``keys``.

    ``table``: one row per run × estimate with the ``keys`` columns, ``beta`` (any unit) and
    ``se`` (its standard error, same unit); the runs are the rows sharing the keys. Returns
    the keys, ``beta = Σ (b_i / se_i²) / Σ (1 / se_i²)``, ``se = (Σ 1 / se_i²)^-½`` and
    ``n_runs``, groups in order of first appearance. A single row keeps its beta and se.
    """
    group, first = _run_groups(table, keys)
    se = table["se"].to_numpy(float)
    with np.errstate(divide="ignore"):
        precision = 1.0 / se**2
    # an unusable se (0, NaN, inf) makes both the beta and the se of its group NaN
    precision = np.where(np.isfinite(precision) & (precision > 0), precision, np.nan)
    beta = _group_mean(table["beta"].to_numpy(float), precision, group, first)
    n_runs = np.bincount(group, minlength=int(first.sum()))
    with np.errstate(divide="ignore", invalid="ignore"):
        combined = 1.0 / np.sqrt(np.bincount(group, precision, int(first.sum())))
    se = np.where(n_runs == 1, se[first], combined)
    return (
        table.loc[first, list(keys)].reset_index(drop=True).assign(beta=beta, se=se, n_runs=n_runs)
    )


def fisher_z_fixed_effects(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Fixed-effects combination of per-run correlations: one row per group of ``keys``.

    ``table``: one row per run × ROI pair with the ``keys`` columns, ``r`` (Pearson), ``z``
    (its Fisher z) and ``n_volumes_kept`` (the run's kept volumes, n). Returns the keys,
    ``r = tanh(z)``, ``z = Σ (n_i − 3) z_i / Σ (n_i − 3)``, ``n_volumes_kept = Σ n_i`` and
    ``n_runs``, groups in order of first appearance. A single row keeps its r and z.
    """
    group, first = _run_groups(table, keys)
    n = table["n_volumes_kept"].to_numpy(float)
    z = _group_mean(table["z"].to_numpy(float), n - 3, group, first)
    n_runs = np.bincount(group, minlength=int(first.sum()))
    r = np.where(n_runs == 1, table["r"].to_numpy(float)[first], np.tanh(z))
    return (
        table.loc[first, list(keys)]
        .reset_index(drop=True)
        .assign(
            r=r,
            z=z,
            n_volumes_kept=np.bincount(group, n, int(first.sum())).astype(int),
            n_runs=n_runs,
        )
    )


def _with_rest_task(rest: pd.DataFrame) -> pd.DataFrame:
    """``rest`` with a ``task`` column (tables written before runs had none: they hold the
    default protocol's rest task)."""
    if "task" in rest.columns:
        return rest
    return rest.assign(task=default_vocabulary().rest_tasks[0])


def feature_table(
    activation: pd.DataFrame,
    connectivity: pd.DataFrame,
    rest: pd.DataFrame,
    tasks: Mapping[str, TaskSpec] | None = None,
) -> pd.DataFrame:
    """The long session × feature table (:data:`COLUMNS`) from the three per-run tables.

    ``activation``: participant_id, session, task, (run,) roi, contrast, beta (% signal
    change), se; ``connectivity`` (gPPI): participant_id, session, task, (run,) seed, target,
    contrast, beta, se; ``rest``: participant_id, session, (task, run,) roi_a, roi_b, r, z
    (Fisher z), n_volumes_kept. The runs of a session are combined by fixed effects (module
    docstring): ``value`` is the combined beta of activation and gPPI rows (gPPI task
    contrasts left out) and the combined Fisher z of resting rows; ``n_runs`` is how many
    runs it combines. ``tasks``: the protocol's tasks (default: this trial's), naming the
    gPPI task contrasts. Rows in the order activation, gPPI, rest, each in its table's order
    of first appearance (a table of single runs keeps its own order and values).
    """
    tasks = default_vocabulary().tasks if tasks is None else tasks
    task_contrasts = {(label, name) for label, spec in tasks.items() for name in spec.contrasts}
    is_condition = [
        (t, c) not in task_contrasts
        for t, c in zip(connectivity["task"], connectivity["contrast"], strict=True)
    ]
    # a Series, not a list: an empty list would select columns (none), not rows
    connectivity = connectivity[pd.Series(is_condition, index=connectivity.index, dtype=bool)]
    activation = inverse_variance_fixed_effects(activation, ACTIVATION_KEYS)
    connectivity = inverse_variance_fixed_effects(connectivity, GPPI_KEYS)
    rest = fisher_z_fixed_effects(_with_rest_task(rest), REST_KEYS)
    parts = [
        activation.assign(
            feature=activation["task"]
            + ".activation."
            + activation["roi"]
            + "."
            + activation["contrast"],
            family=activation["task"] + ".activation",
            value=activation["beta"],
        ),
        connectivity.assign(
            feature=connectivity["task"]
            + ".gppi."
            + connectivity["seed"]
            + "->"
            + connectivity["target"]
            + "."
            + connectivity["contrast"],
            family=connectivity["task"] + ".gppi",
            value=connectivity["beta"],
        ),
        rest.assign(
            feature=rest["task"] + ".fc." + rest["roi_a"] + "~" + rest["roi_b"],
            family=rest["task"] + ".fc",
            value=rest["z"],
        ),
    ]
    table = pd.concat([p[COLUMNS] for p in parts], ignore_index=True)
    return table.astype({"value": float, "n_runs": int})


def change_table(features: pd.DataFrame, sessions: tuple[str, str] | None = None) -> pd.DataFrame:
    """post − pre per participant × feature (:data:`CHANGE_COLUMNS`, sorted by participant
    and feature) from a :func:`feature_table`; ``sessions``: the (baseline, follow-up)
    session labels (default: this trial's ``pre``, ``post``), whose values become the
    ``pre`` and ``post`` columns. Features missing a session (or NaN in one) are left out,
    and without both sessions the table is empty."""
    baseline, follow_up = default_vocabulary().sessions if sessions is None else sessions
    wide = features.pivot_table(
        index=["participant_id", "feature"], columns="session", values="value", aggfunc="first"
    )
    if not {baseline, follow_up} <= set(wide.columns):
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    wide = wide[[baseline, follow_up]].dropna().reset_index()
    wide = wide.rename(columns={baseline: "pre", follow_up: "post"})
    wide.columns.name = None
    wide["change"] = wide["post"] - wide["pre"]
    return wide[CHANGE_COLUMNS]
