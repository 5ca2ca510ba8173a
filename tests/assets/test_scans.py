"""The scans asset (kp_assets.scans): the table of validated runs, and the participants and runs
it refuses."""

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from kp_assets.partitions import participants
from kp_assets.scans import scans
from kp_resources.parquet_files import read_parquet_kv
from kp_resources.warehouse import query
from kp_science.study.layout import discover_participants, find_runs
from kp_science.study.protocol import PROTOCOL_FILE
from tests.assets.conftest import _resources, failure_text, materialize_partitions, warnings_of

SCANS_COLUMNS = [
    "participant_id",
    "session",
    "task",
    "run",
    "bold_path",
    "sha256",
    "n_volumes",
    "tr",
    "mean_fd",
    "max_fd",
    "n_fd_spikes",
    "tsnr",
    "shape_x",
    "shape_y",
    "shape_z",
    "voxel_size_x",
    "voxel_size_y",
    "voxel_size_z",
    "events_sha256",
    "confounds_sha256",
]


def written_for(warehouse: Path, pid: str) -> list[Path]:
    return [p for p in warehouse.rglob("*") if pid in str(p.relative_to(warehouse))]


# --- sessions, event requirements, models, clinical ranges ------------------------------------


def _rename_session(study: Path, pid: str, old: str, new: str) -> Path:
    """Rename ``ses-<old>`` of ``pid`` to ``ses-<new>``, file names included (as a misnamed
    but consistent session would look)."""
    folder = study / pid / f"ses-{new}"
    (study / pid / f"ses-{old}").rename(folder)
    for path in folder.glob("func/*"):
        path.rename(path.with_name(path.name.replace(f"_ses-{old}_", f"_ses-{new}_")))
    return folder


def test_scans_table(clean_warehouse, study_root):
    for pid in discover_participants(study_root):
        path = clean_warehouse / "scans" / f"participant={pid}" / "part-0.parquet"
        df = pd.read_parquet(path)
        assert [c for c in SCANS_COLUMNS if c not in df.columns] == []
        assert set(df["participant_id"]) == {pid}
        assert len(df) == 3 * df["session"].nunique()
        assert (df["run"] == 1).all() and (df["n_volumes"] == 24).all()
        assert (df["tr"] == 2.0).all() and (df["tsnr"] > 1).all()
        # validated runs never store NaN QC
        assert np.isfinite(df["mean_fd"]).all() and np.isfinite(df["tsnr"]).all()
        assert df.loc[df["task"] == "rest", "events_sha256"].isna().all()
        assert df.loc[df["task"] != "rest", "events_sha256"].notna().all()
        # provenance: every file read, with its hash
        sources = json.loads(read_parquet_kv(path)["kp.source_sha256"])
        for _, row in df.iterrows():
            assert sources[row["bold_path"]] == row["sha256"]
            assert sources[row["confounds_path"]] == row["confounds_sha256"]
        assert len(sources) == 4 * len(df) + df["events_path"].notna().sum()


# The cases the brief names; every other damage is covered at validate_run level.
@pytest.mark.parametrize(
    "case",
    [
        "truncate_bold",
        "sidecar_tr_mismatch",
        "remove_events",
        "negative_onset",
        "bold_3d",
        "confounds_missing_column",
        "confounds_nan_in_motion",
        "bold_zero_volume",
        "unreadable_bold",
        "events_misspelt_trial_type",
        "onset_past_run_end",
    ],
)
def test_bad_participant_fails_alone(study_copy, tmp_path, instance, damages, case):
    pids = discover_participants(study_copy)
    bad = pids[1]
    path, problem = damages[case](study_copy, bad)
    warehouse = tmp_path / "warehouse"

    results = materialize_partitions(study_copy, warehouse, instance, pids)

    assert not results[bad].success
    message = failure_text(results[bad])
    assert f"{path}: " in message and problem in message, message
    assert written_for(warehouse, bad) == []
    for pid in pids:
        if pid != bad:
            assert results[pid].success
            assert (warehouse / "scans" / f"participant={pid}" / "part-0.parquet").is_file()


def test_invalid_folder_never_becomes_a_path(study_copy, tmp_path, instance):
    bad = "sub-01;DROP"
    (study_copy / bad / "ses-pre" / "func").mkdir(parents=True)
    assert bad not in discover_participants(study_copy)
    warehouse = tmp_path / "warehouse"
    # Even if such a key were added by hand, the asset refuses it before building a path.
    results = materialize_partitions(study_copy, warehouse, instance, [bad, "sub-01"])
    assert not results[bad].success
    assert "invalid participant label 'sub-01;DROP'" in failure_text(results[bad])
    assert written_for(warehouse, "DROP") == []
    assert results["sub-01"].success


def test_participant_without_runs_fails(study_copy, tmp_path, instance):
    (study_copy / "sub-09").mkdir()
    results = materialize_partitions(study_copy, tmp_path / "wh", instance, ["sub-09"])
    assert "no preprocessed BOLD runs" in failure_text(results["sub-09"])


def test_baseline_only_participant(study_copy, tmp_path, instance):
    import shutil

    pid = discover_participants(study_copy)[0]
    shutil.rmtree(study_copy / pid / "ses-post", ignore_errors=True)
    warehouse = tmp_path / "warehouse"
    assert materialize_partitions(study_copy, warehouse, instance, [pid])[pid].success
    df = pd.read_parquet(warehouse / "scans" / f"participant={pid}" / "part-0.parquet")
    assert set(df["session"]) == {"pre"} and len(df) == 3


def test_every_run_is_validated_before_failing(study_copy, tmp_path, instance, damages):
    pid = discover_participants(study_copy)[0]
    damages["remove_events"](study_copy, pid)  # conflict, pre
    damages["confounds_short"](study_copy, pid)  # faces, pre
    result = materialize_partitions(study_copy, tmp_path / "wh", instance, [pid])[pid]
    message = failure_text(result)
    assert "events file is missing" in message  # runs are validated conflict before faces
    assert "and 1 more problem(s)" in message
    assert written_for(tmp_path / "wh", pid) == []


def test_unknown_session_is_left_out_with_a_warning(study_copy, tmp_path, instance):
    pids = discover_participants(study_copy)
    pid = pids[1]
    folder = _rename_session(study_copy, pid, "post", "baseline")
    warehouse = tmp_path / "warehouse"
    results = materialize_partitions(study_copy, warehouse, instance, pids)
    assert all(r.success for r in results.values())
    warned = [w for w in warnings_of(results[pid], instance) if str(folder) in w]
    assert warned and "session label 'baseline' is not one of pre, post" in warned[0]
    assert "its 3 run(s) are left out of the analysis" in warned[0]
    df = pd.read_parquet(warehouse / "scans" / f"participant={pid}" / "part-0.parquet")
    assert set(df["session"]) == {"pre"} and len(df) == 3
    (materialization,) = results[pid].asset_materializations_for_node("scans")
    assert materialization.metadata["left_out_sessions"].value == "ses-baseline"
    # the other participants are not concerned
    other = results[pids[0]]
    assert not [w for w in warnings_of(other, instance) if "session label" in w]


def test_several_runs_of_a_task_are_all_inventoried(study_copy, tmp_path, instance):
    pid = discover_participants(study_copy)[0]
    func = study_copy / pid / "ses-pre" / "func"
    for path in func.glob("*task-rest*"):
        shutil.copy(path, path.with_name(path.name.replace("_task-rest_", "_task-rest_run-2_")))
    warehouse = tmp_path / "warehouse"
    assert materialize_partitions(study_copy, warehouse, instance, [pid])[pid].success
    df = pd.read_parquet(warehouse / "scans" / f"participant={pid}" / "part-0.parquet")
    rest = df[(df["task"] == "rest") & (df["session"] == "pre")]
    assert sorted(rest["run"]) == [1, 2]
    assert rest.loc[rest["run"] == 2, "bold_path"].str.contains("_task-rest_run-2_").all()


def test_unknown_task_is_left_out_with_a_warning(study_copy, tmp_path, instance):
    pid = discover_participants(study_copy)[0]
    func = study_copy / pid / "ses-pre" / "func"
    for path in func.glob("*task-rest*"):
        path.rename(path.with_name(path.name.replace("_task-rest_", "_task-Rest_")))
    (bold,) = func.glob("*task-Rest*preproc_bold.nii*")
    warehouse = tmp_path / "warehouse"
    result = materialize_partitions(study_copy, warehouse, instance, [pid])[pid]
    assert result.success
    warned = [w for w in warnings_of(result, instance) if str(bold) in w]
    assert warned and "task label 'Rest' is not one of the protocol's tasks" in warned[0]
    assert "(did you mean 'rest'?)" in warned[0]
    df = pd.read_parquet(warehouse / "scans" / f"participant={pid}" / "part-0.parquet")
    assert "Rest" not in set(df["task"])
    assert len(df[df["session"] == "pre"]) == 2
    (materialization,) = result.asset_materializations_for_node("scans")
    assert materialization.metadata["left_out_tasks"].value == "task-Rest"


def test_only_unknown_sessions_fail(study_copy, tmp_path, instance):
    import shutil

    pid = discover_participants(study_copy)[0]
    shutil.rmtree(study_copy / pid / "ses-post", ignore_errors=True)
    folder = _rename_session(study_copy, pid, "pre", "Pre")
    result = materialize_partitions(study_copy, tmp_path / "wh", instance, [pid])[pid]
    assert not result.success
    message = failure_text(result)
    assert f"{folder}: no runs in the sessions the analysis uses (ses-pre, ses-post)" in message
    assert "did you mean 'pre'?" in message
    assert written_for(tmp_path / "wh", pid) == []


def test_dcm_inputs_are_required_of_the_events(study_copy, tmp_path, instance):
    """An input of the protocol's DCM that the faces events never switch on fails scans."""
    pid = discover_participants(study_copy)[0]
    protocol = yaml.safe_load((study_copy / PROTOCOL_FILE).read_text())
    protocol["tasks"]["faces"]["conditions"].append("fearful")
    protocol["dcm"]["inputs"] = {"faces": ["emotional", "neutral"], "fearful": ["fearful"]}
    (study_copy / PROTOCOL_FILE).write_text(yaml.safe_dump(protocol))
    result = materialize_partitions(study_copy, tmp_path / "wh", instance, [pid])[pid]
    assert not result.success
    message = failure_text(result)
    faces_events = next(r for r in find_runs(study_copy, pid) if r.task == "faces").events_path
    assert f"{faces_events}: no fearful trials" in message
    assert "the DCM inputs faces, fearful need trial_type" in message


@pytest.mark.parametrize("removed", [("rest",), ("faces", "conflict")])
def test_participant_without_some_tasks_goes_on(tmp_path_factory, tmp_path, instance, removed):
    """A run never acquired gives no features of its kind; it is no library error."""
    import shutil

    from kp_assets.definitions import build_definitions
    from tests.one_participant import PID, one_participant_study

    study = Path(shutil.copytree(one_participant_study(tmp_path_factory), tmp_path / "study"))
    for task in removed:
        for path in study.glob(f"{PID}/ses-*/func/*_task-{task}_*"):
            path.unlink()
    warehouse = tmp_path / "warehouse"
    instance.add_dynamic_partitions(participants.name, [PID])
    job = build_definitions(study, warehouse).resolve_job_def("participant_assets")
    result = job.execute_in_process(partition_key=PID, instance=instance, raise_on_error=False)
    assert result.success, failure_text(result)
    empty = (
        ["rest_connectivity"] if removed == ("rest",) else ["roi_activation", "task_connectivity"]
    )
    for table in empty:
        assert pd.read_parquet(warehouse / table / f"participant={PID}").empty
        assert any(
            f"so no {'resting' if table.startswith('rest') else table}" in w
            for w in warnings_of(result, instance)
        )
    features = pd.read_parquet(warehouse / "session_features" / f"participant={PID}")
    families = set(features["family"])
    assert families and not {f for f in families if f.split(".")[0] in removed}


def test_failing_run_checks_are_recorded_and_block_nothing(study_root, tmp_path):
    warehouse = tmp_path / "warehouse"
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(participants.name, ["sub-01"])
    # thresholds no run can meet: every run is flagged, the table is still written
    result = dg.materialize(
        [scans],
        partition_key="sub-01",
        instance=instance,
        resources=_resources(study_root, warehouse, max_mean_fd_mm=0.0, min_tsnr=1e6),
    )
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["scans_motion_check"].passed
    assert not evaluations["scans_tsnr_check"].passed
    assert len(query(warehouse, "SELECT * FROM scans")) == 6
    failed = query(warehouse, "SELECT * FROM checks WHERE NOT passed ORDER BY check_name")
    assert failed.check_name.tolist() == ["scans_motion_check", "scans_tsnr_check"]
    assert (failed.partition == "sub-01").all() and (failed.severity == "WARN").all()
    assert "6 of 6 runs with mean FD > 0.0 mm" in failed.summary.iloc[0]

    # default thresholds: the same runs pass, and the newer evaluation replaces the old row
    result = dg.materialize(
        [scans],
        partition_key="sub-01",
        instance=instance,
        resources=_resources(study_root, warehouse),
    )
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert query(warehouse, "SELECT count(*) AS n FROM checks WHERE NOT passed").n[0] == 0
