"""The per-run measure chain (kp_science.run_measures) on tiny synthetic runs: the same rows
as calling the cleaning, design, GLM, gPPI and FC steps one by one, with the documented
shapes and columns, and the run keys stacked in front."""

import numpy as np
import pandas as pd
import pytest

from kp_science.activation import (
    CONFOUND_PREFIX,
    clean_design,
    fit_roi_glm,
    task_conditions,
    task_design,
)
from kp_science.gppi import fit_gppi
from kp_science.rest_fc import pair_correlations
from kp_science.roi_signals import clean_roi_signals
from kp_science.rois import ROI_NAMES
from kp_science.run_measures import (
    ACTIVATION_DTYPES,
    GPPI_DTYPES,
    REST_DTYPES,
    activation_rows,
    gppi_rows,
    rest_rows,
    run_measures,
    stack_measures,
    task_run,
    with_keys,
)
from kp_science.session_features import change_table, feature_table
from kp_science.simulator.design import conflict_events, faces_events
from kp_science.simulator.images import cosine_regressors
from kp_science.study.protocol import default_vocabulary

TASKS = default_vocabulary().tasks

TR, N, REF = 2.0, 80, 0.5
ROIS = ["vmpfc", "amygdala", "dacc", "racc"]  # not in canonical order, on purpose
SCRUBBED = [20, 21, 55]


def _inputs(task: str | None, seed: int = 0):
    """Raw ROI means (N × ROIS, intensity around 800), confounds, kept volumes, events."""
    rng = np.random.default_rng(seed)
    events = None
    if task is not None:
        events = (faces_events if task == "faces" else conflict_events)(N, TR, rng)
    confounds = pd.DataFrame(cosine_regressors(N, TR)).assign(
        motion=rng.standard_normal(N).cumsum() * 0.05
    )
    kept = np.setdiff1d(np.arange(N), SCRUBBED)
    raw = pd.DataFrame(800.0 + 4.0 * rng.standard_normal((N, len(ROIS))), columns=ROIS)
    return raw, confounds, kept, events


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_task_run_chain_equals_the_steps_one_by_one(task):
    raw, confounds, kept, events = _inputs(task)
    measures = run_measures(raw, confounds, kept, TR, TASKS.get(task), events, REF)

    signals = clean_roi_signals(raw, confounds, kept, TR)
    conditions = task_conditions(events, TASKS[task])
    design = clean_design(task_design(conditions, N, TR, REF), confounds, kept, TR)
    activation = fit_roi_glm(signals, design, TASKS[task].contrasts)
    gppi = fit_gppi(signals, design, conditions, confounds, kept, N, TR, REF, TASKS[task].contrasts)
    pd.testing.assert_frame_equal(measures.activation, activation, check_exact=True)
    pd.testing.assert_frame_equal(measures.gppi, gppi, check_exact=True)

    # shapes and columns: every ROI × contrast; every ordered pair × (conditions + contrasts)
    n_conditions = conditions["trial_type"].nunique()
    assert list(measures.activation.columns) == list(ACTIVATION_DTYPES)
    assert len(measures.activation) == len(ROIS) * len(TASKS[task].contrasts)
    assert list(measures.gppi.columns) == list(GPPI_DTYPES)
    assert len(measures.gppi) == (
        len(ROIS) * (len(ROIS) - 1) * (n_conditions + len(TASKS[task].contrasts))
    )
    assert (measures.gppi["seed"] != measures.gppi["target"]).all()
    # a task run has no resting rows, but the columns are there
    assert measures.rest.empty and list(measures.rest.columns) == list(REST_DTYPES)
    assert np.isfinite(measures.activation[["beta", "se", "t"]].to_numpy()).all()


def test_task_run_design_is_cleaned_on_the_kept_volumes_with_a_constant():
    raw, confounds, kept, events = _inputs("conflict")
    signals = clean_roi_signals(raw, confounds, kept, TR)
    run = task_run(signals, events, TASKS["conflict"], confounds, kept, N, TR, REF)
    assert list(run.design.index) == list(kept) == list(run.signals.index)
    conditions = sorted(set(run.conditions["trial_type"]))
    assert {"cC", "cI", "iC", "iI", "first"} >= set(conditions)
    # conditions, then one column per confound, then the constant
    confound_columns = [f"{CONFOUND_PREFIX}{i}" for i in range(confounds.shape[1])]
    assert list(run.design.columns) == [*conditions, *confound_columns, "constant"]
    # the task regressors were cleaned of the confounds: orthogonal to them at kept volumes,
    # and the confound columns span the confounds there
    centred = confounds.to_numpy()[kept] - confounds.to_numpy()[kept].mean(axis=0)
    assert np.abs(centred.T @ run.design[conditions].to_numpy()).max() < 1e-8
    basis = run.design[confound_columns].to_numpy()
    np.testing.assert_allclose(basis @ (basis.T @ centred), centred, atol=1e-10)
    pd.testing.assert_frame_equal(
        activation_rows(run), fit_roi_glm(signals, run.design, TASKS["conflict"].contrasts)
    )
    assert len(gppi_rows(run)) > 0


def test_rest_run_chain_is_fc_of_the_cleaned_signals_in_canonical_order():
    raw, confounds, kept, _ = _inputs(None)
    measures = run_measures(raw, confounds, kept, TR, TASKS["rest"])
    signals = clean_roi_signals(raw, confounds, kept, TR)
    canonical = [r for r in ROI_NAMES if r in ROIS]
    assert canonical != ROIS
    pd.testing.assert_frame_equal(
        measures.rest.drop(columns="n_volumes_kept"),
        pair_correlations(signals[canonical]),
        check_exact=True,
    )
    # the run's kept volumes: its weight when session_features combines runs
    assert (measures.rest["n_volumes_kept"] == len(kept)).all()
    assert list(measures.rest.columns) == list(REST_DTYPES)
    pd.testing.assert_frame_equal(rest_rows(signals), measures.rest)
    assert len(measures.rest) == len(ROIS) * (len(ROIS) - 1) // 2
    order = {r: i for i, r in enumerate(ROI_NAMES)}
    assert all(
        order[a] < order[b] for a, b in zip(measures.rest.roi_a, measures.rest.roi_b, strict=True)
    )
    assert measures.activation.empty and list(measures.activation.columns) == list(
        ACTIVATION_DTYPES
    )
    assert measures.gppi.empty and list(measures.gppi.columns) == list(GPPI_DTYPES)


def test_stacked_measures_carry_the_run_keys_in_front_and_give_change_scores():
    runs = []
    for i, session in enumerate(["pre", "post"]):
        for task in ["faces", "rest"]:
            raw, confounds, kept, events = _inputs(None if task == "rest" else task, seed=i)
            keys = {"participant_id": "sub-01", "session": session, "task": task}
            runs.append(
                (keys, run_measures(raw, confounds, kept, TR, TASKS.get(task), events, REF))
            )
    stacked = stack_measures(runs)
    keys = ["participant_id", "session", "task"]
    assert list(stacked.activation.columns) == keys + list(ACTIVATION_DTYPES)
    assert list(stacked.gppi.columns) == keys + list(GPPI_DTYPES)
    assert list(stacked.rest.columns) == keys + list(REST_DTYPES)
    assert stacked.activation["session"].tolist() == ["pre"] * len(ROIS) + ["post"] * len(ROIS)
    assert set(stacked.rest["task"]) == {"rest"}
    pd.testing.assert_frame_equal(
        stacked.gppi[stacked.gppi.session == "post"].drop(columns=keys).reset_index(drop=True),
        runs[2][1].gppi,
    )
    # the inputs were not changed by the keys
    assert list(runs[0][1].activation.columns) == list(ACTIVATION_DTYPES)

    change = change_table(feature_table(stacked.activation, stacked.gppi, stacked.rest))
    n_pairs = len(ROIS) * (len(ROIS) - 1)
    # faces: one activation contrast per ROI, two gPPI conditions per ordered pair, rest pairs
    assert len(change) == len(ROIS) + 2 * n_pairs + n_pairs // 2
    np.testing.assert_array_equal(change["change"], change["post"] - change["pre"])


def test_stack_of_no_task_runs_has_typed_empty_tables():
    raw, confounds, kept, _ = _inputs(None)
    keys = {"participant_id": "sub-01", "session": "pre", "task": "rest"}
    stacked = stack_measures([(keys, run_measures(raw, confounds, kept, TR, TASKS["rest"]))])
    assert stacked.activation.empty and stacked.gppi.empty and len(stacked.rest) == 6
    assert list(stacked.gppi.columns) == list(keys) + list(GPPI_DTYPES)
    assert stacked.gppi["beta"].dtype == float
    features = feature_table(stacked.activation, stacked.gppi, stacked.rest)
    assert set(features["family"]) == {"rest.fc"}
    assert change_table(features).empty


def test_with_keys_leaves_the_table_alone():
    table = pd.DataFrame({"roi": ["a"], "beta": [1.0]})
    keyed = with_keys(table, {"participant_id": "sub-01", "session": "pre"})
    assert list(keyed.columns) == ["participant_id", "session", "roi", "beta"]
    assert list(table.columns) == ["roi", "beta"]


def test_runs_of_a_session_are_stacked_by_run_and_combined_by_fixed_effects():
    """Two faces runs and two rest runs in one session: the stacked per-run tables keep both
    runs, the session features are their fixed-effects combination."""
    from kp_science.session_features import (
        fisher_z_fixed_effects,
        inverse_variance_fixed_effects,
    )

    runs = []
    for run in (1, 2):
        for task in ("faces", "rest"):
            raw, confounds, kept, events = _inputs(None if task == "rest" else task, seed=run)
            if run == 2:  # a shorter second run (60 volumes): other weights
                raw, confounds, kept = raw.iloc[:60], confounds.iloc[:60], kept[kept < 60]
                events = None if events is None else events[events.onset < 100]
            keys = {"participant_id": "sub-01", "session": "pre", "task": task, "run": run}
            runs.append((keys, run_measures(raw, confounds, kept, TR, TASKS[task], events, REF)))
    stacked = stack_measures(runs)
    assert stacked.activation["run"].tolist() == [1] * len(ROIS) + [2] * len(ROIS)
    assert sorted(set(stacked.rest["n_volumes_kept"])) == [57, 77]

    features = feature_table(stacked.activation, stacked.gppi, stacked.rest).set_index("feature")
    assert (features["n_runs"] == 2).all()
    expected = inverse_variance_fixed_effects(
        stacked.activation, ["participant_id", "session", "task", "roi", "contrast"]
    )
    for row in expected.itertuples():
        one, two = stacked.activation[stacked.activation.roi == row.roi].itertuples()
        by_hand = (one.beta / one.se**2 + two.beta / two.se**2) / (1 / one.se**2 + 1 / two.se**2)
        assert row.beta == pytest.approx(by_hand, rel=1e-12)
        value = features.loc[f"faces.activation.{row.roi}.{row.contrast}", "value"]
        assert value == pytest.approx(by_hand, rel=1e-12)
    fc = fisher_z_fixed_effects(
        stacked.rest, ["participant_id", "session", "task", "roi_a", "roi_b"]
    )
    for row in fc.itertuples():
        one, two = stacked.rest[
            (stacked.rest.roi_a == row.roi_a) & (stacked.rest.roi_b == row.roi_b)
        ].itertuples()
        by_hand = (74 * one.z + 54 * two.z) / 128
        assert row.z == pytest.approx(by_hand, rel=1e-12)
        assert features.loc[f"rest.fc.{row.roi_a}~{row.roi_b}", "value"] == pytest.approx(
            by_hand, rel=1e-12
        )
