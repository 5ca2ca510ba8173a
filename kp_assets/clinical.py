"""``clinical``: arm and CAPS-5 / MADRS scores before and after treatment, one row per person."""

import dagster as dg
import pandas as pd

from kp_resources.study import StudyFolder


@dg.asset(
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="clinical-1",
    description=(
        "participants.tsv joined with phenotype/caps5.tsv and phenotype/madrs.tsv; "
        "improvement = pre − post (positive = better, NaN until the post visit)."
    ),
)
def clinical(context: dg.AssetExecutionContext, study: StudyFolder) -> pd.DataFrame:
    df = study.clinical()
    counts = df["arm"].value_counts().to_dict()
    context.add_output_metadata(
        {
            "n_participants": len(df),
            "n_with_post_caps5": int(df["caps5_post"].notna().sum()),
            **{f"n_{arm}": int(n) for arm, n in counts.items()},
        }
    )
    return df
