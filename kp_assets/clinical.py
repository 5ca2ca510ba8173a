"""``clinical``: arm and CAPS-5 / MADRS scores before and after treatment, one row per person."""

import dagster as dg
import pandas as pd

from kp_assets.automation import GROUP_REFRESH
from kp_resources.quality import check_result
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.study.layout import discover_participants


@dg.asset(
    # not read, but a new participant's clinical rows arrive with their folder: refresh the
    # table after the scans inventory of a batch of arrivals changed
    deps=["scans"],
    automation_condition=GROUP_REFRESH,
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="clinical-2",
    description=(
        "participants.tsv joined with phenotype/caps5.tsv and phenotype/madrs.tsv; "
        "improvement = pre − post (positive = better, NaN until the post visit). A total "
        "outside the study resource's caps5_range / madrs_range is rejected (NaN) and "
        "described in clinical_problems."
    ),
)
def clinical(context: dg.AssetExecutionContext, study: StudyFolder) -> pd.DataFrame:
    df = study.clinical()
    rejected = df.loc[df["clinical_problems"] != "", ["participant_id", "clinical_problems"]]
    for pid, problems in rejected.itertuples(index=False):
        for problem in problems.split("; "):
            context.log.warning(f"{pid}: {problem}: value rejected (NaN in clinical)")
    counts = df["arm"].value_counts().to_dict()
    context.add_output_metadata(
        {
            "n_participants": len(df),
            "n_with_post_caps5": int(df["caps5_post"].notna().sum()),
            "n_with_rejected_values": len(rejected),
            **{f"n_{arm}": int(n) for arm, n in counts.items()},
        }
    )
    return df


@dg.asset_check(
    asset=clinical,
    description="Every participant with a scan folder has an arm and CAPS-5 before and after "
    "treatment (the prediction models need all three), and no participant has a "
    "clinical value rejected as impossible (clinical_problems).",
)
def clinical_completeness_check(
    context: dg.AssetCheckExecutionContext,
    clinical: pd.DataFrame,
    study: StudyFolder,
    warehouse: Warehouse,
) -> dg.AssetCheckResult:
    scanned = discover_participants(study.path)
    table = clinical.set_index("participant_id")
    problems = {}
    for pid in scanned:
        if pid not in table.index:
            problems[pid] = "no row in participants.tsv / phenotype"
            continue
        missing = [c for c in ("arm", "caps5_pre", "caps5_post") if pd.isna(table.at[pid, c])]
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
        else f"all {len(scanned)} scanned participants have arm and CAPS-5 pre/post"
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
