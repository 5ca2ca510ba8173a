"""The one ``dg.Definitions`` of kp, loaded by ``workspace.yaml`` and ``kp demo``.

Resources point at the study folder and warehouse from :mod:`kp_resources.locations`
(``KP_STUDY_DIR`` / ``KP_WAREHOUSE_DIR`` override the in-repo defaults).
"""

from pathlib import Path

import dagster as dg

from kp_assets.catalog import warehouse_catalog
from kp_assets.clinical import clinical
from kp_assets.dcm import dcm_first_level
from kp_assets.rest_connectivity import rest_connectivity
from kp_assets.roi_activation import roi_activation
from kp_assets.roi_timeseries import roi_signals
from kp_assets.scans import scans
from kp_assets.sensors import PARTICIPANT_ASSETS, new_participant_sensor
from kp_assets.session_features import change_scores, session_features
from kp_assets.task_connectivity import task_connectivity
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMModels
from kp_resources.locations import study_dir, warehouse_dir
from kp_resources.parquet_io import ParquetIOManager
from kp_resources.roi_set import RoiSet
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse

ASSETS = [scans, clinical, roi_signals, roi_activation, task_connectivity, rest_connectivity,
          session_features, change_scores, dcm_first_level, warehouse_catalog]

# every participant-partitioned asset for one participant, as the sensor requests it
participant_job = dg.define_asset_job("participant_assets", selection=PARTICIPANT_ASSETS)
# the unpartitioned group assets (clinical table, catalog)
group_job = dg.define_asset_job(
    "group_assets", selection=dg.AssetSelection.all() - PARTICIPANT_ASSETS
)


def build_definitions(study: str | Path, warehouse: str | Path,
                      **overrides: dg.ConfigurableResource) -> dg.Definitions:
    """The project's definitions with resources bound to a study folder and a warehouse;
    ``overrides`` replace resources by key (e.g. ``roi_set=RoiSet(radius_mm=8)``)."""
    return dg.Definitions(
        assets=ASSETS,
        jobs=[participant_job, group_job],
        sensors=[new_participant_sensor],
        resources={
            "study": StudyFolder(root=str(study)),
            "io_manager": ParquetIOManager(root=str(warehouse)),
            "warehouse": Warehouse(root=str(warehouse)),
            "roi_set": RoiSet(),
            "cleaning": ConfoundCleaning(),
            "dcm_models": DCMModels(),
        } | overrides,
    )


# the environment's study and warehouse, read when the code location loads
defs = build_definitions(study_dir(), warehouse_dir())
