"""Fixtures and helpers shared by the asset tests: a Dagster instance, the clean study's scans
and clinical tables, materializing assets."""

import logging
from pathlib import Path

import dagster as dg
import pytest

from kp_assets.clinical import clinical
from kp_assets.partitions import participants
from kp_assets.scans import scans
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMModels
from kp_resources.parquet_io import ParquetIOManager
from kp_resources.quality import QualityThresholds
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.study.layout import discover_participants


def materialize(assets, study: Path, warehouse: Path, instance, partition_key=None, **resources):
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
        }
        | resources,
        raise_on_error=False,
    )


def materialize_partitions(study: Path, warehouse: Path, instance, pids, **resources) -> dict:
    """Materialize ``scans`` for each participant; ``{pid: ExecuteInProcessResult}``."""
    instance.add_dynamic_partitions(participants.name, list(pids))
    return {pid: materialize([scans], study, warehouse, instance, pid, **resources) for pid in pids}


def warnings_of(result, instance) -> list[str]:
    """The warnings the run logged (``context.log.warning``)."""
    return [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == logging.WARNING
    ]


def failure_text(result) -> str:
    """Every message in the failed step's error chain, one per line."""
    (event,) = result.get_step_failure_events()
    error, lines = event.step_failure_data.error, []
    while error is not None:
        lines.append(error.message)
        error = error.cause
    return "\n".join(lines)


@pytest.fixture
def instance():
    # In-memory: several times faster per run than a sqlite test instance.
    return dg.DagsterInstance.ephemeral()


@pytest.fixture(scope="package")
def clean_warehouse(study_root, tmp_path_factory):
    """All scans partitions and clinical of the clean study, materialized once."""
    warehouse = tmp_path_factory.mktemp("warehouse")
    inst = dg.DagsterInstance.ephemeral()
    results = materialize_partitions(study_root, warehouse, inst, discover_participants(study_root))
    results["clinical"] = materialize([clinical], study_root, warehouse, inst)
    assert all(r.success for r in results.values())
    return warehouse


def _resources(study, warehouse, **thresholds):
    return {
        "study": StudyFolder(root=str(study)),
        "warehouse": Warehouse(root=str(warehouse)),
        "io_manager": ParquetIOManager(root=str(warehouse)),
        "quality": QualityThresholds(**thresholds),
        "cleaning": ConfoundCleaning(),
        "dcm_models": DCMModels(),
    }
