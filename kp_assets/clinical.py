"""``clinical``: arm and the outcome scores (this trial: CAPS-5, MADRS) before and after
treatment, one row per person, as the study protocol declares them."""

import dagster as dg
import pandas as pd

from kp_assets.automation import GROUP_REFRESH
from kp_assets.participant_status import PARTICIPANT_TABLES
from kp_resources.quality import check_result
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse


@dg.asset(
    # not read, but a new participant's clinical rows arrive with their folder: refresh the
    # table once a batch of arrivals is processed, i.e. after every participant table (the
    # group models computed from clinical then wait for whole participant runs too)
    deps=list(PARTICIPANT_TABLES),
    automation_condition=GROUP_REFRESH,
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="clinical-3",
    description=(
        "The raw root's participants.tsv (arm from the protocol's arm column) joined with the "
        "protocol's outcome files (this trial: phenotype/caps5.tsv, phenotype/madrs.tsv); "
        "<outcome>_pre / _post are the baseline and follow-up sessions; improvement = pre − "
        "post (positive = better, NaN until the follow-up visit). A score outside its "
        "outcome's range (protocol) is rejected (NaN) and described in clinical_problems."
    ),
)
def clinical(context: dg.AssetExecutionContext, study: StudyFolder) -> pd.DataFrame:
    df = study.clinical()
    primary = study.protocol().primary.name
    rejected = df.loc[df["clinical_problems"] != "", ["participant_id", "clinical_problems"]]
    for pid, problems in rejected.itertuples(index=False):
        for problem in problems.split("; "):
            context.log.warning(f"{pid}: {problem}: value rejected (NaN in clinical)")
    counts = df["arm"].value_counts().to_dict()
    context.add_output_metadata(
        {
            "n_participants": len(df),
            f"n_with_post_{primary}": int(df[f"{primary}_post"].notna().sum()),
            "n_with_rejected_values": len(rejected),
            **{f"n_{arm}": int(n) for arm, n in counts.items()},
        }
    )
    return df


@dg.asset_check(
    asset=clinical,
    description="Every participant with a scan folder has an arm and the primary outcome "
    "(this trial: CAPS-5) before and after treatment (the prediction models need all three), "
    "and no participant has a "
    "clinical value rejected as impossible (clinical_problems).",
)
def clinical_completeness_check(
    context: dg.AssetCheckExecutionContext,
    clinical: pd.DataFrame,
    study: StudyFolder,
    warehouse: Warehouse,
) -> dg.AssetCheckResult:
    scanned = study.participants()
    primary = study.protocol().primary.name
    table = clinical.set_index("participant_id")
    problems = {}
    for pid in scanned:
        if pid not in table.index:
            problems[pid] = "no row in participants.tsv / phenotype"
            continue
        needed = ("arm", f"{primary}_pre", f"{primary}_post")
        missing = [c for c in needed if c not in table.columns or pd.isna(table.at[pid, c])]
        if missing:
            problems[pid] = "missing " + ", ".join(missing)
    # rejected values, scanned or not: each is a file someone has to correct
    # (a table from before clinical-2 has no such column)
    found = table.get("clinical_problems", pd.Series(dtype=object))
    rejected = {pid: why for pid, why in found.items() if isinstance(why, str) and why}
    parts = []
    if problems:
        parts.append(
            f"{len(problems)} of {len(scanned)} scanned participants incomplete: "
            + "; ".join(f"{p}: {why}" for p, why in problems.items())
        )
    if rejected:
        parts.append(
            f"{len(rejected)} participant(s) with values rejected as impossible: "
            + "; ".join(f"{p}: {why}" for p, why in rejected.items())
        )
    summary = (
        ". ".join(parts)
        if parts
        else f"all {len(scanned)} scanned participants have arm and {primary} pre/post"
    )
    return check_result(
        context,
        warehouse.root,
        "clinical",
        "clinical_completeness_check",
        not parts,
        summary,
        {
            "incomplete": dg.MetadataValue.json(problems),
            "rejected_values": dg.MetadataValue.json(rejected),
        },
    )
