"""``paper_table``: the paper's headline findings beside this project's estimates.

The findings are those of docs/architecture.md §1.

One row per finding, computed from the elastic-net tables and the group DCM effects by
:func:`kp_science.prediction.paper_table`; a finding the data cannot give is NaN with
the reason in ``note``. The DCM rows carry ``pp``, the posterior probability that the effect
is present.
"""

import dagster as dg
import pandas as pd

from kp_assets.automation import GROUP_REFRESH
from kp_resources.asset_metadata import markdown_table
from kp_resources.warehouse import Warehouse
from kp_science.dcm.findings import dcm_findings
from kp_science.prediction import paper_table as build_paper_table


@dg.asset(
    ins={"enet_summary": dg.AssetIn(), "enet_coefficients": dg.AssetIn()},
    # read through the warehouse: absent (never estimated, or retracted) gives NaN DCM rows
    deps=["dcm_group_effects"],
    group_name="prediction",
    automation_condition=GROUP_REFRESH,
    kinds={"pandas", "parquet"},
    code_version="paper_table-2",
    description="One row per headline finding of the paper: published value and direction, "
    "this analysis' estimate, fully standardized β, selection frequency, whether "
    "the direction agrees, and why an estimate is missing.",
)
def paper_table(
    context: dg.AssetExecutionContext,
    enet_summary: pd.DataFrame,
    enet_coefficients: pd.DataFrame,
    warehouse: Warehouse,
) -> pd.DataFrame:
    dcm = (
        dcm_findings(warehouse.query("SELECT * FROM dcm_group_effects"))
        if "dcm_group_effects" in warehouse.list_tables()
        else None
    )
    table = build_paper_table(
        {"enet_summary": enet_summary, "enet_coefficients": enet_coefficients}, dcm
    )
    shown = table[
        ["finding", "published", "estimate", "selection_frequency", "pp", "same_direction", "note"]
    ]
    context.add_output_metadata(
        {
            "findings": dg.MetadataValue.md(markdown_table(shown)),
            "n_estimated": int(table["estimate"].notna().sum()),
            "n_same_direction": int((table["same_direction"] == True).sum()),  # noqa: E712
        }
    )
    return table
