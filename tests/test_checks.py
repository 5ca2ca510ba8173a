"""Quality checks: thresholds from configuration, failures visible in Dagster and in SQL, and
nothing blocked."""

import dagster as dg
import pandas as pd

from kp_assets.clinical import clinical, clinical_completeness_check
from kp_assets.partitions import participants
from kp_assets.scans import scans
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMModels
from kp_resources.parquet_io import ParquetIOManager
from kp_resources.quality import QualityThresholds
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse, query


def _resources(study, warehouse, **thresholds):
    return {"study": StudyFolder(root=str(study)), "warehouse": Warehouse(root=str(warehouse)),
            "io_manager": ParquetIOManager(root=str(warehouse)),
            "quality": QualityThresholds(**thresholds), "cleaning": ConfoundCleaning(),
            "dcm_models": DCMModels()}


def test_failing_run_checks_are_recorded_and_block_nothing(study_root, tmp_path):
    warehouse = tmp_path / "warehouse"
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(participants.name, ["sub-01"])
    # thresholds no run can meet: every run is flagged, the table is still written
    result = dg.materialize([scans], partition_key="sub-01", instance=instance,
                            resources=_resources(study_root, warehouse, max_mean_fd_mm=0.0,
                                                 min_tsnr=1e6))
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
    result = dg.materialize([scans], partition_key="sub-01", instance=instance,
                            resources=_resources(study_root, warehouse))
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert query(warehouse, "SELECT count(*) AS n FROM checks WHERE NOT passed").n[0] == 0


def test_clinical_completeness_names_the_incomplete_participant(study_copy, tmp_path):
    caps = pd.read_csv(study_copy / "phenotype" / "caps5.tsv", sep="\t")
    caps = caps[~((caps.participant_id == "sub-02") & (caps.session == "post"))]
    caps.to_csv(study_copy / "phenotype" / "caps5.tsv", sep="\t", index=False)
    warehouse = tmp_path / "warehouse"
    result = dg.materialize([dg.AssetSpec("scans", partitions_def=participants), clinical,
                             clinical_completeness_check],
                            selection=dg.AssetSelection.assets(clinical)
                            | dg.AssetSelection.checks(clinical_completeness_check),
                            resources=_resources(study_copy, warehouse))
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "sub-02: missing caps5_post" in evaluation.metadata["summary"].value
    row = query(warehouse, "SELECT * FROM checks WHERE check_name = "
                           "'clinical_completeness_check'")
    assert not row.passed[0] and "sub-02" in row.summary[0]
