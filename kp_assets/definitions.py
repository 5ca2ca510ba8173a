"""The one ``dg.Definitions`` of kp, loaded by ``workspace.yaml`` and ``kp demo``.

Resources point at the study folder and warehouse from :mod:`kp_resources.locations`:
``dg.EnvVar("KP_STUDY_DIR")`` / ``dg.EnvVar("KP_WAREHOUSE_DIR")`` when those variables are set
(read by Dagster where each resource is set up), the in-repo defaults when not; the sensor's
settle time from ``KP_SETTLE_SECONDS``, read when the definitions are built.
"""

from pathlib import Path

import dagster as dg

from kp_assets.automation import build_nightly_catch_up, group_refresh_sensor
from kp_assets.catalog import warehouse_catalog
from kp_assets.clinical import clinical, clinical_completeness_check
from kp_assets.dcm import dcm_first_level
from kp_assets.dcm_group import dcm_group_effects
from kp_assets.enet import enet_models
from kp_assets.paper_table import paper_table
from kp_assets.participant_status import participant_status
from kp_assets.partitions import participants
from kp_assets.power import power
from kp_assets.rest_connectivity import rest_connectivity
from kp_assets.roi_activation import roi_activation
from kp_assets.roi_timeseries import roi_signals
from kp_assets.scans import scans
from kp_assets.sensors import PARTICIPANT_ASSETS, new_participant_sensor
from kp_assets.session_features import change_scores, session_features
from kp_assets.study_report import study_report
from kp_assets.task_connectivity import task_connectivity
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMGroupDesign, DCMModels
from kp_resources.evidence_rules import EvidenceRules
from kp_resources.locations import protocol_file, settle_seconds, study_root, warehouse_root
from kp_resources.parquet_io import ParquetIOManager
from kp_resources.prediction_models import PredictionModels
from kp_resources.quality import QualityThresholds
from kp_resources.roi_set import RoiSet
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse

ASSETS = [
    scans,
    clinical,
    roi_signals,
    roi_activation,
    task_connectivity,
    rest_connectivity,
    session_features,
    change_scores,
    dcm_first_level,
    participant_status,
    dcm_group_effects,
    enet_models,
    paper_table,
    warehouse_catalog,
    study_report,
]
# on demand only (``kp power``): simulations, not this study's data
ON_DEMAND_ASSETS = [power]

# every participant-partitioned asset for one participant, as the sensor requests it
participant_job = dg.define_asset_job("participant_assets", selection=PARTICIPANT_ASSETS)
# the views over the warehouse and the report drawn from it
CATALOG = dg.AssetSelection.assets(warehouse_catalog, study_report)
# the unpartitioned group assets (clinical table, prediction models, paper table)
group_job = dg.define_asset_job(
    "group_assets",
    selection=dg.AssetSelection.assets(*ASSETS) - PARTICIPANT_ASSETS - CATALOG,
)
# the catalog and the report in a run of their own, so that a failed group model (too few
# participants for it) cannot skip the rebuild of the views over everything else
catalog_job = dg.define_asset_job("catalog_refresh", selection=CATALOG)
nightly_catch_up = build_nightly_catch_up(ASSETS, PARTICIPANT_ASSETS, participants)


def _config_value(path: str | Path) -> str:
    # a dg.EnvVar is a str: str() would turn it into its variable's name
    return path if isinstance(path, str) else str(path)


def build_definitions(
    study: str | Path,
    warehouse: str | Path,
    protocol: str | Path | None = None,
    executor: dg.ExecutorDefinition = dg.in_process_executor,
    **overrides: dg.ConfigurableResource,
) -> dg.Definitions:
    """The project's definitions with resources bound to a study folder, a warehouse and a
    study protocol file (paths, or ``dg.EnvVar`` values naming the variables that hold them;
    no protocol: the study's own ``kp-protocol.yaml`` or the default); ``overrides`` replace
    resources by key (e.g. ``roi_set=RoiSet(radius_mm=8)``).

    ``executor``: how a run executes its steps. By default all steps of a run run in the
    run's own process, one after another (a participant's steps are short and each new
    process would import Dagster, nilearn and scikit-learn again; runs of different
    participants still run side by side, as many as the run queue allows); the Dask
    definitions (:mod:`kp_assets.on_dask`) pass theirs."""
    study, warehouse = _config_value(study), _config_value(warehouse)
    protocol = None if protocol is None else _config_value(protocol)
    return dg.Definitions(
        assets=[*ASSETS, *ON_DEMAND_ASSETS],
        asset_checks=[clinical_completeness_check],
        jobs=[participant_job, group_job, catalog_job],
        sensors=[new_participant_sensor, group_refresh_sensor],
        schedules=[nightly_catch_up],
        executor=executor,
        resources={
            # KP_SETTLE_SECONDS is read here: a dg.EnvVar cannot fill a float field
            "study": StudyFolder(
                root=study, protocol_file=protocol, settle_seconds=settle_seconds()
            ),
            "io_manager": ParquetIOManager(root=warehouse),
            "warehouse": Warehouse(root=warehouse),
            "roi_set": RoiSet(),
            "cleaning": ConfoundCleaning(),
            "dcm_models": DCMModels(),
            "dcm_group": DCMGroupDesign(),
            "prediction": PredictionModels(),
            "quality": QualityThresholds(),
            "evidence": EvidenceRules(),
        }
        | overrides,
    )


# the environment's study and warehouse: dg.EnvVar for a variable set when the code location
# loads (Dagster reads its value when a resource is set up), the default path otherwise
defs = build_definitions(study_root(), warehouse_root(), protocol_file())
