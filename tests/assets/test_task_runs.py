"""The task models' inputs (kp_assets.task_runs) check the events as the scans asset does."""

import numpy as np
import pandas as pd
import pytest

from kp_resources.cleaning import ConfoundCleaning
from kp_science.study.layout import discover_participants, find_runs
from tests.assets.conftest import materialize_partitions


def test_models_check_the_events_as_scans_does(study_copy, tmp_path, instance, damages):
    from kp_assets.task_runs import run_model_inputs
    from kp_science.roi_signals import load_run_confounds
    from kp_science.study.errors import StudyDataError
    from kp_science.study.protocol import default_protocol
    from kp_science.study.validate import study_event_requirements, validate_run

    pid = discover_participants(study_copy)[0]
    warehouse = tmp_path / "wh"
    assert materialize_partitions(study_copy, warehouse, instance, [pid])[pid].success
    table = pd.read_parquet(warehouse / "scans" / f"participant={pid}" / "part-0.parquet")
    scan = table[(table["task"] == "conflict") & (table["session"] == "pre")].iloc[0]
    cleaning = ConfoundCleaning()
    _, kept = load_run_confounds(scan["bold_path"], cleaning.strategy(), scan["confounds_path"])
    volumes = np.arange(int(scan["n_volumes"]))
    roi_timeseries = pd.DataFrame(
        {
            "session": "pre",
            "task": "conflict",
            "run": 1,
            "volume": volumes,
            "time_s": volumes * 2.0,
            "scrubbed": ~np.isin(volumes, kept),
        }
    )
    needs = study_event_requirements(default_protocol(study_copy))
    inputs = run_model_inputs(scan, roi_timeseries, cleaning, needs)
    assert inputs.events["onset"].dtype == float and len(inputs.events) == scan["n_events"]

    path, problem = damages["events_misspelt_trial_type"](study_copy, pid)
    run = next(r for r in find_runs(study_copy, pid) if r.events_path == path)
    with pytest.raises(StudyDataError) as at_scans:
        validate_run(run, cleaning.strategy(), needs)
    with pytest.raises(StudyDataError) as at_models:
        run_model_inputs(scan, roi_timeseries, cleaning, needs)
    assert str(at_models.value) == str(at_scans.value) and problem in str(at_models.value)


def test_run_signals_selects_one_run_of_a_session_and_task():
    from kp_assets.task_runs import run_signals

    volumes = np.arange(4)
    rows = []
    for run in (1, 2):
        for roi in ("amygdala", "vmpfc"):
            rows.append(
                pd.DataFrame(
                    {
                        "session": "pre",
                        "task": "faces",
                        "run": run,
                        "roi": roi,
                        "volume": volumes,
                        "signal": 10.0 * run + volumes + (roi == "vmpfc") * 0.5,
                        "scrubbed": volumes == run,  # each run scrubs another volume
                    }
                )
            )
    table = pd.concat(rows, ignore_index=True)
    second = run_signals(table, "pre", "faces", 2)
    assert list(second.index) == [0, 1, 3] and list(second.columns) == ["amygdala", "vmpfc"]
    np.testing.assert_array_equal(second["amygdala"], [20.0, 21.0, 23.0])
    np.testing.assert_array_equal(
        run_signals(table, "pre", "faces", 1)["vmpfc"], [10.5, 12.5, 13.5]
    )
    assert run_signals(table, "post", "faces", 1).empty
    assert run_signals(table, "pre", "faces", 3).empty
