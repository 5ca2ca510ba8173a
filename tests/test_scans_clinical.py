"""The ``scans`` and ``clinical`` assets, materialized into a temporary Parquet warehouse."""

import json
import logging
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from kp_assets.clinical import clinical
from kp_assets.partitions import participants
from kp_assets.scans import scans
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMModels
from kp_resources.parquet_files import read_parquet_kv
from kp_resources.parquet_io import ParquetIOManager
from kp_resources.quality import QualityThresholds
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.study.clinical import CLINICAL_COLUMNS
from kp_science.study.layout import discover_participants, find_runs

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


def materialize(assets, study: Path, warehouse: Path, instance, partition_key=None,
                **resources):
    """``dg.materialize`` with the project's resources (``resources`` replace some by key)."""
    return dg.materialize(
        assets,
        partition_key=partition_key,
        instance=instance,
        resources={
            "study": StudyFolder(root=str(study)),
            "io_manager": ParquetIOManager(root=str(warehouse)),
            "warehouse": Warehouse(root=str(warehouse)),
            "quality": QualityThresholds(),
            "cleaning": ConfoundCleaning(),
            "dcm_models": DCMModels(),
        } | resources,
        raise_on_error=False,
    )


def materialize_partitions(study: Path, warehouse: Path, instance, pids, **resources) -> dict:
    """Materialize ``scans`` for each participant; ``{pid: ExecuteInProcessResult}``."""
    instance.add_dynamic_partitions(participants.name, list(pids))
    return {pid: materialize([scans], study, warehouse, instance, pid, **resources)
            for pid in pids}


def warnings_of(result, instance) -> list[str]:
    """The warnings the run logged (``context.log.warning``)."""
    return [entry.user_message for entry in instance.all_logs(result.run_id)
            if entry.level == logging.WARNING]


def failure_text(result) -> str:
    """Every message in the failed step's error chain, one per line."""
    (event,) = result.get_step_failure_events()
    error, lines = event.step_failure_data.error, []
    while error is not None:
        lines.append(error.message)
        error = error.cause
    return "\n".join(lines)


def written_for(warehouse: Path, pid: str) -> list[Path]:
    return [p for p in warehouse.rglob("*") if pid in str(p.relative_to(warehouse))]


@pytest.fixture
def instance():
    # In-memory: several times faster per run than a sqlite test instance.
    return dg.DagsterInstance.ephemeral()


@pytest.fixture(scope="module")
def clean_warehouse(study_root, tmp_path_factory):
    """All scans partitions and clinical of the clean study, materialized once."""
    warehouse = tmp_path_factory.mktemp("warehouse")
    inst = dg.DagsterInstance.ephemeral()
    results = materialize_partitions(study_root, warehouse, inst, discover_participants(study_root))
    results["clinical"] = materialize([clinical], study_root, warehouse, inst)
    assert all(r.success for r in results.values())
    return warehouse


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


def test_clinical_table(clean_warehouse, study_root):
    df = pd.read_parquet(clean_warehouse / "clinical" / "part-0.parquet")
    assert list(df.columns[: len(CLINICAL_COLUMNS)]) == CLINICAL_COLUMNS
    assert list(df["participant_id"]) == discover_participants(study_root)
    sources = json.loads(
        read_parquet_kv(clean_warehouse / "clinical" / "part-0.parquet")["kp.source_sha256"]
    )
    assert str(study_root / "participants.tsv") in sources


# The cases the brief names; every other damage is covered at validate_run level.
@pytest.mark.parametrize(
    "case", ["truncate_bold", "sidecar_tr_mismatch", "remove_events", "negative_onset", "bold_3d",
             "confounds_missing_column", "confounds_nan_in_motion", "bold_zero_volume",
             "unreadable_bold", "events_misspelt_trial_type", "onset_past_run_end"]
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


def test_clinical_duplicate_participant_fails(study_copy, tmp_path, instance):
    path = study_copy / "participants.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[1]]))
    dup = lines[1].split("\t")[0]
    warehouse = tmp_path / "warehouse"
    result = materialize([clinical], study_copy, warehouse, instance)
    assert not result.success
    message = failure_text(result)
    assert f"{path}: duplicated participant_id {dup}" in message, message
    assert not (warehouse / "clinical").exists()


def test_every_run_is_validated_before_failing(study_copy, tmp_path, instance, damages):
    pid = discover_participants(study_copy)[0]
    damages["remove_events"](study_copy, pid)  # conflict, pre
    damages["confounds_short"](study_copy, pid)  # faces, pre
    result = materialize_partitions(study_copy, tmp_path / "wh", instance, [pid])[pid]
    message = failure_text(result)
    assert "events file is missing" in message  # runs are validated conflict before faces
    assert "and 1 more problem(s)" in message
    assert written_for(tmp_path / "wh", pid) == []


# --- sessions, event requirements, models, clinical ranges ------------------------------------


def _rename_session(study: Path, pid: str, old: str, new: str) -> Path:
    """Rename ``ses-<old>`` of ``pid`` to ``ses-<new>``, file names included (as a misnamed
    but consistent session would look)."""
    folder = study / pid / f"ses-{new}"
    (study / pid / f"ses-{old}").rename(folder)
    for path in folder.glob("func/*"):
        path.rename(path.with_name(path.name.replace(f"_ses-{old}_", f"_ses-{new}_")))
    return folder


def test_unknown_session_is_left_out_with_a_warning(study_copy, tmp_path, instance):
    pids = discover_participants(study_copy)
    pid = pids[1]
    folder = _rename_session(study_copy, pid, "post", "baseline")
    warehouse = tmp_path / "warehouse"
    results = materialize_partitions(study_copy, warehouse, instance, pids)
    assert all(r.success for r in results.values())
    warned = [w for w in warnings_of(results[pid], instance) if str(folder) in w]
    assert warned and "session label 'baseline' is not one of pre, post" in warned[0]
    assert "its 3 run(s) are left out of the inventory" in warned[0]
    df = pd.read_parquet(warehouse / "scans" / f"participant={pid}" / "part-0.parquet")
    assert set(df["session"]) == {"pre"} and len(df) == 3
    (materialization,) = results[pid].asset_materializations_for_node("scans")
    assert materialization.metadata["left_out_sessions"].value == "ses-baseline"
    # the other participants are not concerned
    other = results[pids[0]]
    assert not [w for w in warnings_of(other, instance) if "session label" in w]


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
    """An input of the configured DCM that the faces events never switch on fails scans."""
    pid = discover_participants(study_copy)[0]
    models = DCMModels(inputs=[{"name": "faces", "trial_types": ["emotional", "neutral"]},
                               {"name": "fearful", "trial_types": ["fearful"]}],
                       models=[{"name": "m", "a": [[1, 1], [1, 1]],
                                "b": [[[0, 0], [0, 0]], [[0, 1], [1, 0]]],
                                "c": [[1, 0], [0, 0]]}])
    result = materialize_partitions(study_copy, tmp_path / "wh", instance, [pid],
                                    dcm_models=models)[pid]
    assert not result.success
    message = failure_text(result)
    faces_events = next(r for r in find_runs(study_copy, pid) if r.task == "faces").events_path
    assert (f"{faces_events}: no fearful trials: the faces contrast(s) emotional_vs_neutral and "
            "the DCM inputs faces, fearful need trial_type emotional, neutral, fearful") in message


def test_models_check_the_events_as_scans_does(study_copy, tmp_path, instance, damages):
    from kp_assets.task_runs import event_requirements, run_model_inputs
    from kp_science.roi_signals import load_run_confounds
    from kp_science.study.errors import StudyDataError
    from kp_science.study.validate import validate_run

    pid = discover_participants(study_copy)[0]
    warehouse = tmp_path / "wh"
    assert materialize_partitions(study_copy, warehouse, instance, [pid])[pid].success
    table = pd.read_parquet(warehouse / "scans" / f"participant={pid}" / "part-0.parquet")
    scan = table[(table["task"] == "conflict") & (table["session"] == "pre")].iloc[0]
    cleaning = ConfoundCleaning()
    _, kept = load_run_confounds(scan["bold_path"], cleaning.strategy())
    volumes = np.arange(int(scan["n_volumes"]))
    roi_timeseries = pd.DataFrame({"session": "pre", "task": "conflict", "run": 1,
                                   "volume": volumes, "time_s": volumes * 2.0,
                                   "scrubbed": ~np.isin(volumes, kept)})
    needs = event_requirements(DCMModels())
    inputs = run_model_inputs(scan, roi_timeseries, cleaning, needs)
    assert inputs.events["onset"].dtype == float and len(inputs.events) == scan["n_events"]

    path, problem = damages["events_misspelt_trial_type"](study_copy, pid)
    run = next(r for r in find_runs(study_copy, pid) if r.events_path == path)
    with pytest.raises(StudyDataError) as at_scans:
        validate_run(run, cleaning.strategy(), needs)
    with pytest.raises(StudyDataError) as at_models:
        run_model_inputs(scan, roi_timeseries, cleaning, needs)
    assert str(at_models.value) == str(at_scans.value) and problem in str(at_models.value)


def test_impossible_clinical_value_is_rejected_and_reported(study_copy, tmp_path, instance):
    from kp_assets.clinical import clinical_completeness_check

    path = study_copy / "phenotype" / "caps5.tsv"
    caps = pd.read_csv(path, sep="\t", dtype=str)
    pid = caps.loc[4, "participant_id"]
    caps.loc[4, "caps5_total"] = "999"
    caps.to_csv(path, sep="\t", index=False)
    warehouse = tmp_path / "warehouse"
    result = dg.materialize(
        [dg.AssetSpec("scans", partitions_def=participants), clinical,
         clinical_completeness_check],
        selection=dg.AssetSelection.assets(clinical)
        | dg.AssetSelection.checks(clinical_completeness_check),
        instance=instance,
        resources={"study": StudyFolder(root=str(study_copy)),
                   "io_manager": ParquetIOManager(root=str(warehouse)),
                   "warehouse": Warehouse(root=str(warehouse))})
    assert result.success  # one bad value does not stop the table
    problem = "phenotype/caps5.tsv row 5: caps5_total 999 outside 0–80"
    df = pd.read_parquet(warehouse / "clinical" / "part-0.parquet").set_index("participant_id")
    assert df.loc[pid, "clinical_problems"] == problem
    assert df.drop(index=pid)["clinical_problems"].eq("").all()
    assert df[f"caps5_{caps.loc[4, 'session']}"].isna().sum() == 1
    assert any(problem in w and pid in w for w in warnings_of(result, instance))
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert f"{pid}: {problem}" in evaluation.metadata["summary"].value


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
    empty = (["rest_connectivity"] if removed == ("rest",)
             else ["roi_activation", "task_connectivity"])
    for table in empty:
        assert pd.read_parquet(warehouse / table / f"participant={PID}").empty
        assert any(f"so no {'resting' if table.startswith('rest') else table}" in w
                   for w in warnings_of(result, instance))
    features = pd.read_parquet(warehouse / "session_features" / f"participant={PID}")
    families = set(features["family"])
    assert families and not {f for f in families if f.split(".")[0] in removed}
