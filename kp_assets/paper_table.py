"""``paper_table``: the paper's headline findings beside this project's estimates.

The findings are those of docs/architecture.md §1.

One row per finding, computed from the elastic-net tables and the group DCM effects by
:func:`kp_science.prediction.paper_table`; a finding the data cannot give is NaN with
the reason in ``note``. The DCM rows carry ``pp``, the posterior probability that the effect
is present. ``supported`` applies the ``evidence`` resource's rules (:class:`EvidenceRules`)
and ``evidence`` gives each rule's figure.

The findings are named in this trial's vocabulary (the default protocol's). A study whose
protocol has the same design under other names has its terms read back into those names
(:func:`kp_science.study.protocol.name_correspondence`), so a renaming changes no row; a study
of another design gets every row NaN, saying so.
"""

import dagster as dg
import pandas as pd

from kp_assets.automation import GROUP_REFRESH_OR_RETRY
from kp_resources.asset_metadata import markdown_table
from kp_resources.evidence_rules import EvidenceRules
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.dcm.findings import dcm_findings
from kp_science.prediction import paper_table as build_paper_table
from kp_science.study.protocol import default_vocabulary, name_correspondence, translate_names

OTHER_DESIGN = "not comparable: the study's protocol is not the paper's design"


def _in_paper_names(values: pd.Series, names: dict[str, str]) -> pd.Series:
    return values.map(lambda v: translate_names(v, names) if isinstance(v, str) else v)


@dg.asset(
    ins={"enet_summary": dg.AssetIn(), "enet_coefficients": dg.AssetIn()},
    # read through the warehouse: absent (never estimated, or retracted) gives NaN DCM rows
    deps=["dcm_group_effects"],
    group_name="prediction",
    automation_condition=GROUP_REFRESH_OR_RETRY,
    kinds={"pandas", "parquet"},
    code_version="paper_table-4",
    description="One row per headline finding of the paper: published value and direction, "
    "this analysis' estimate, fully standardized β, selection frequency, permutation p, Pp, "
    "whether the direction agrees, whether the evidence supports it (configurable rules) "
    "and why an estimate is missing.",
)
def paper_table(
    context: dg.AssetExecutionContext,
    enet_summary: pd.DataFrame,
    enet_coefficients: pd.DataFrame,
    warehouse: Warehouse,
    study: StudyFolder,
    evidence: EvidenceRules,
) -> pd.DataFrame:
    protocol = study.protocol()
    names = name_correspondence(protocol, default_vocabulary())
    if names is None:
        context.log.warning(
            f"the design of {protocol.where()} is not the paper's: no finding can be read off"
        )
        names, enet_summary = {}, enet_summary.assign(status=OTHER_DESIGN)
    effects = (
        warehouse.query("SELECT * FROM dcm_group_effects")
        if "dcm_group_effects" in warehouse.list_tables()
        else None
    )
    if effects is not None and names:
        effects = effects.assign(
            covariate=_in_paper_names(effects["covariate"], names),
            parameter=_in_paper_names(effects["parameter"], names),
        )
    dcm = dcm_findings(effects) if effects is not None and names else None
    coefficients = enet_coefficients.assign(term=_in_paper_names(enet_coefficients["term"], names))
    table = build_paper_table(
        {"enet_summary": enet_summary, "enet_coefficients": coefficients}, dcm, evidence.rules()
    )
    shown = table[
        ["finding", "published", "estimate", "supported", "evidence", "same_direction", "note"]
    ]
    context.add_output_metadata(
        {
            "findings": dg.MetadataValue.md(markdown_table(shown)),
            "n_estimated": int(table["estimate"].notna().sum()),
            "n_same_direction": int((table["same_direction"] == True).sum()),  # noqa: E712
            "n_supported": int(table["supported"].sum()),
        }
    )
    return table
