"""The clinical asset (kp_assets.clinical) and its completeness check."""

import json

import dagster as dg
import pandas as pd

from kp_assets.clinical import clinical, clinical_completeness_check
from kp_assets.partitions import participants
from kp_resources.parquet_files import read_parquet_kv
from kp_resources.parquet_io import ParquetIOManager
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse, query
from kp_science.study.clinical import clinical_columns
from kp_science.study.layout import discover_participants
from kp_science.study.protocol import default_vocabulary
from tests.assets.conftest import _resources, failure_text, materialize, warnings_of


def test_clinical_table(clean_warehouse, study_root):
    df = pd.read_parquet(clean_warehouse / "clinical" / "part-0.parquet")
    columns = clinical_columns(default_vocabulary())
    assert list(df.columns[: len(columns)]) == columns
    assert list(df["participant_id"]) == discover_participants(study_root)
    sources = json.loads(
        read_parquet_kv(clean_warehouse / "clinical" / "part-0.parquet")["kp.source_sha256"]
    )
    assert str(study_root / "participants.tsv") in sources


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


def test_impossible_clinical_value_is_rejected_and_reported(study_copy, tmp_path, instance):
    from kp_assets.clinical import clinical_completeness_check

    path = study_copy / "phenotype" / "caps5.tsv"
    caps = pd.read_csv(path, sep="\t", dtype=str)
    pid = caps.loc[4, "participant_id"]
    caps.loc[4, "caps5_total"] = "999"
    caps.to_csv(path, sep="\t", index=False)
    warehouse = tmp_path / "warehouse"
    result = dg.materialize(
        [dg.AssetSpec("scans", partitions_def=participants), clinical, clinical_completeness_check],
        selection=dg.AssetSelection.assets(clinical)
        | dg.AssetSelection.checks(clinical_completeness_check),
        instance=instance,
        resources={
            "study": StudyFolder(root=str(study_copy)),
            "io_manager": ParquetIOManager(root=str(warehouse)),
            "warehouse": Warehouse(root=str(warehouse)),
        },
    )
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


def test_clinical_completeness_names_the_incomplete_participant(study_copy, tmp_path):
    caps = pd.read_csv(study_copy / "phenotype" / "caps5.tsv", sep="\t")
    caps = caps[~((caps.participant_id == "sub-02") & (caps.session == "post"))]
    caps.to_csv(study_copy / "phenotype" / "caps5.tsv", sep="\t", index=False)
    warehouse = tmp_path / "warehouse"
    result = dg.materialize(
        [dg.AssetSpec("scans", partitions_def=participants), clinical, clinical_completeness_check],
        selection=dg.AssetSelection.assets(clinical)
        | dg.AssetSelection.checks(clinical_completeness_check),
        resources=_resources(study_copy, warehouse),
    )
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "sub-02: missing caps5_post" in evaluation.metadata["summary"].value
    row = query(warehouse, "SELECT * FROM checks WHERE check_name = 'clinical_completeness_check'")
    assert not row.passed[0] and "sub-02" in row.summary[0]
