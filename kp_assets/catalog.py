"""The warehouse catalog: ``<root>/kp.duckdb`` with one DuckDB view per warehouse table.

The only asset that writes ``kp.duckdb`` (DuckDB allows one writer per file); per-participant
steps write Parquet only. It depends on the tables it catalogues so it reruns after them, in
the same run as the group models, and once more on its own when that run failed
(:data:`kp_assets.automation.GROUP_REFRESH_OR_RETRY`).
"""

import dagster as dg

from kp_assets.automation import GROUP_REFRESH_OR_RETRY
from kp_assets.participant_status import PARTICIPANT_TABLES
from kp_resources.warehouse import Warehouse

#: Asset keys the catalog waits for: scans and clinical first, every participant table, then
#: the group tables.
CATALOGUED_TABLES: list[str] = [
    PARTICIPANT_TABLES[0],
    "clinical",
    "participant_status",
    *PARTICIPANT_TABLES[1:],
    "enet_summary",
    "enet_coefficients",
    "enet_predictions",
    "enet_cv_curve",
    "enet_exclusions",
    "dcm_group_effects",
    "paper_table",
]


@dg.asset(
    deps=CATALOGUED_TABLES,
    group_name="warehouse",
    automation_condition=GROUP_REFRESH_OR_RETRY,
    kinds={"duckdb"},
    code_version="1",
    description="DuckDB catalog file (kp.duckdb) with a view per warehouse table + provenance.",
)
def warehouse_catalog(
    context: dg.AssetExecutionContext, warehouse: Warehouse
) -> dg.MaterializeResult:
    """Rebuild ``kp.duckdb`` and report the tables it exposes with their row counts."""
    path = warehouse.build_catalog()
    tables = warehouse.list_tables()
    missing = sorted(set(CATALOGUED_TABLES) - set(tables))
    if missing:
        context.log.warning(f"tables not in the warehouse yet: {', '.join(missing)}")
    row_counts: dict[str, int] = {}
    if tables:
        # One query for all counts; table names come from list_tables (validated identifiers).
        sql = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM \"{t}\"" for t in tables)
        counts = warehouse.query(sql)
        row_counts = {str(t): int(n) for t, n in zip(counts["t"], counts["n"], strict=True)}
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "tables": dg.MetadataValue.json(tables),
            "row_counts": dg.MetadataValue.json(row_counts),
            "n_tables": dg.MetadataValue.int(len(tables)),
        }
    )
