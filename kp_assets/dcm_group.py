"""``dcm_group_effects``: group-level DCM — parametric empirical Bayes with model reduction —
over the first-level fits of every current participant (``participant_status``; the others
are listed as excluded, analysis ``all``) (docs/architecture.md §5 "Group DCM").

Unpartitioned; the science is :func:`kp_science.dcm.group.group_dcm`, the designs are
the ``dcm_group`` resource. A participant whose first-level fit did not converge is left out
and listed in metadata. When the analyses cannot run (different model structures, fewer
participants than group parameters) the step fails with the reason and the previous table is
moved aside so that no stale result is queried as current.
"""

import dagster as dg
import pandas as pd

from kp_assets.automation import GROUP_REFRESH
from kp_assets.participant_status import current_participants, not_current
from kp_resources.asset_metadata import markdown_table
from kp_resources.dcm_models import DCMGroupDesign
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.dcm.findings import dcm_findings
from kp_science.dcm.group import for_study, group_dcm
from kp_science.dcm.group_plots import effects_png
from kp_science.figures import markdown_image


@dg.asset(
    ins={
        "dcm_fits": dg.AssetIn(),
        "dcm_parameters": dg.AssetIn(),
        "clinical": dg.AssetIn(),
        "participant_status": dg.AssetIn(),
    },
    group_name="dcm",
    kinds={"pandas", "parquet"},
    code_version="dcm_group_effects-3",
    automation_condition=GROUP_REFRESH,
    description="Group DCM effects (long): analysis (longitudinal change / baseline), "
    "covariate (mean, CAPS-5 improvement, arm, improvement × arm, and the "
    "slope on improvement within each arm), connection, mean and sd after "
    "Bayesian model reduction and averaging, Pp (probability the effect is "
    "present), the full PEB posterior, free energy.",
)
def dcm_group_effects(
    context: dg.AssetExecutionContext,
    dcm_fits: pd.DataFrame,
    dcm_parameters: pd.DataFrame,
    clinical: pd.DataFrame,
    participant_status: pd.DataFrame,
    dcm_group: DCMGroupDesign,
    warehouse: Warehouse,
    study: StudyFolder,
) -> pd.DataFrame:
    current = current_participants(participant_status)
    dcm_fits = dcm_fits[dcm_fits["participant_id"].isin(current)] if len(dcm_fits) else dcm_fits
    dcm_parameters = (
        dcm_parameters[dcm_parameters["participant_id"].isin(current)]
        if len(dcm_parameters)
        else dcm_parameters
    )
    left_out = not_current(participant_status).assign(analysis="all")
    try:
        config = for_study(dcm_group.config(), study.protocol())
        result = group_dcm(dcm_fits, dcm_parameters, clinical, config)
    except ValueError as err:
        for table in ("dcm_group_effects", "paper_table"):
            moved = warehouse.retract(table, f"retracted: group DCM not estimated: {err}")
            if moved:
                context.log.warning(f"previous {table} moved aside: {moved}")
        raise dg.Failure(description=f"group DCM not estimated: {err}") from err

    effects = result.effects
    excluded = (
        pd.concat([left_out[result.excluded.columns], result.excluded], ignore_index=True)
        if len(left_out)
        else result.excluded
    )
    findings = dcm_findings(effects)
    metadata = {
        "design": dg.MetadataValue.json(dcm_group.model_dump()),
        "findings": dg.MetadataValue.md(markdown_table(findings)),
        "n_excluded": len(excluded),
        "excluded": dg.MetadataValue.md(markdown_table(excluded) if len(excluded) else "none"),
    }
    for name, analysis in result.analyses.items():
        metadata[f"n_participants_{name}"] = len(analysis.participants)
        metadata[f"plot_{name}"] = dg.MetadataValue.md(
            markdown_image(effects_png(effects, name), f"group DCM {name}")
        )
    context.add_output_metadata(metadata)
    return effects
