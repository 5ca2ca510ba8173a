"""``study_report``: one self-contained HTML page of the whole study, beside the warehouse.

The page (:mod:`kp_science.study_report`) shows the study, quality, the ROIs, the feature
change scores, the elastic-net models, the DCM, the paper's findings beside kp's and the
provenance; it reads the warehouse like the catalog does, so it waits for the same tables and
reruns with the catalog after every group refresh (:data:`GROUP_REFRESH_OR_RETRY`). ``kp
report`` writes the same page from the command line.
"""

import dagster as dg

from kp_assets.automation import GROUP_REFRESH_OR_RETRY
from kp_assets.catalog import CATALOGUED_TABLES
from kp_resources.evidence_rules import EvidenceRules
from kp_resources.locations import REPORT_FILE
from kp_resources.quality import QualityThresholds
from kp_resources.roi_set import RoiSet
from kp_resources.study import StudyFolder
from kp_resources.study_report import build_study_report
from kp_resources.warehouse import Warehouse


@dg.asset(
    deps=CATALOGUED_TABLES,
    group_name="warehouse",
    automation_condition=GROUP_REFRESH_OR_RETRY,
    kinds={"html"},
    code_version="study_report-1",
    description=f"The study report: <warehouse>/{REPORT_FILE}, one self-contained HTML page "
    "(study, quality, ROIs, change scores, elastic-net models, DCM, the paper's findings, "
    "provenance); open it in any browser, no network needed.",
)
def study_report(
    context: dg.AssetExecutionContext,
    warehouse: Warehouse,
    study: StudyFolder,
    roi_set: RoiSet,
    quality: QualityThresholds,
    evidence: EvidenceRules,
) -> dg.MaterializeResult:
    path = build_study_report(
        warehouse.root, study.protocol(), quality, roi_set, evidence, study.root
    )
    size = path.stat().st_size
    context.log.info(f"study report: {path} ({size / 1e6:.1f} MB)")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "open": dg.MetadataValue.url(path.resolve().as_uri()),
            "size_bytes": dg.MetadataValue.int(size),
        }
    )
