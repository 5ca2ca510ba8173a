"""The ``scans`` and ``clinical`` assets, materialized into a temporary Parquet warehouse."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from kp_assets.clinical import clinical
from kp_assets.partitions import participants
from kp_assets.scans import scans
from kp_resources.parquet_io import ParquetIOManager, read_parquet_kv
from kp_resources.quality import QualityThresholds
from kp_resources.study import CLINICAL_COLUMNS, StudyFolder, discover_participants
from kp_resources.warehouse import Warehouse

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


def materialize(assets, study: Path, warehouse: Path, instance, partition_key=None):
    return dg.materialize(
        assets,
        partition_key=partition_key,
        instance=instance,
        resources={
            "study": StudyFolder(root=str(study)),
            "io_manager": ParquetIOManager(root=str(warehouse)),
            "warehouse": Warehouse(root=str(warehouse)),
            "quality": QualityThresholds(),
        },
        raise_on_error=False,
    )


def materialize_partitions(study: Path, warehouse: Path, instance, pids) -> dict:
    """Materialize ``scans`` for each participant; ``{pid: ExecuteInProcessResult}``."""
    instance.add_dynamic_partitions(participants.name, list(pids))
    return {pid: materialize([scans], study, warehouse, instance, pid) for pid in pids}


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
    "case", ["truncate_bold", "sidecar_tr_mismatch", "remove_events", "negative_onset", "bold_3d"]
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
