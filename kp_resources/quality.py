"""Quality checks: thresholds in configuration, results in Dagster and in the warehouse.

:class:`QualityThresholds` holds the thresholds of the data-quality asset checks that have
no other home (the ROI coverage minimum lives with the ROI set, DCM explained variance with
the DCM model space, the prediction minimum with the prediction models). Every check result
is also written to the warehouse as one small Parquet file,
``<root>/checks/<asset>.<check>.<partition or "all">.parquet``, so that ``kp sql`` and the
catalog show them as the ``checks`` table — one row per evaluation with columns
``asset``, ``check_name``, ``partition``, ``passed``, ``severity``, ``summary``,
``run_id``, ``evaluated_at`` (UTC). A newer evaluation replaces the file atomically.

Checks warn (``WARN`` severity) and block nothing: a failing check is visible in the UI's
asset page, in the run log and in ``SELECT * FROM checks WHERE NOT passed``.
"""

import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from kp_resources.parquet_files import write_parquet_atomic

CHECKS_TABLE = "checks"


class QualityThresholds(dg.ConfigurableResource):
    """Thresholds of the per-run quality checks.

    max_mean_fd_mm: highest acceptable mean framewise displacement of a run (mm; 0.5 mm is
    a common exclusion criterion for adult task fMRI). max_scrubbed_fraction: highest share
    of a run's volumes removed by scrubbing. min_tsnr: lowest acceptable mean voxel tSNR of a
    run (raw preprocessed data, before cleaning).
    """

    max_mean_fd_mm: float = 0.5
    max_scrubbed_fraction: float = 0.25
    min_tsnr: float = 20.0


def record_check(
    root: str | os.PathLike[str],
    asset: str,
    check_name: str,
    partition: str | None,
    passed: bool,
    summary: str,
    run_id: str,
    severity: str = "WARN",
) -> Path:
    """Write one check evaluation to ``<root>/checks/`` (see the module docstring)."""
    row = pd.DataFrame(
        [
            {
                "asset": asset,
                "check_name": check_name,
                "partition": partition or "",
                "passed": bool(passed),
                "severity": severity,
                "summary": summary,
                "run_id": run_id,
                "evaluated_at": datetime.now(UTC),
            }
        ]
    )
    name = f"{asset}.{check_name}.{partition or 'all'}.parquet"
    return write_parquet_atomic(row, Path(root) / CHECKS_TABLE / name, {"kp.asset": asset})


def check_result(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    warehouse_root: str,
    asset: str,
    check_name: str,
    passed: bool,
    summary: str,
    metadata: dict | None = None,
    partition: str | None = None,
) -> dg.AssetCheckResult:
    """The check's result for Dagster, recorded in the warehouse's ``checks`` table too."""
    run_id = context.run.run_id if context.run else ""
    record_check(warehouse_root, asset, check_name, partition, passed, summary, run_id)
    if not passed:
        context.log.warning(
            f"check {check_name} on {asset}"
            f"{f' [{partition}]' if partition else ''} failed: {summary}"
        )
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=asset,
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"summary": summary, **(metadata or {})},
    )
