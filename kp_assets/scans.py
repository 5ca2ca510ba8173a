"""``scans``: inventory, validation and QC of every BOLD run of one participant."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_resources.parquet_io import markdown_table
from kp_resources.quality import QualityThresholds, check_result
from kp_resources.study import StudyDataError, StudyFolder, validate_participant_label, validate_run
from kp_resources.warehouse import Warehouse

CHECKS = [
    dg.AssetCheckSpec("scans_motion_check", asset="scans",
                      description="Every run's mean framewise displacement is at most the "
                                  "quality resource's max_mean_fd_mm."),
    dg.AssetCheckSpec("scans_tsnr_check", asset="scans",
                      description="Every run's mean voxel tSNR is at least the quality "
                                  "resource's min_tsnr."),
]


def _run_checks(context: dg.AssetExecutionContext, df: pd.DataFrame, root: str,
                quality: QualityThresholds):
    pid = context.partition_key
    labels = "ses-" + df["session"] + " task-" + df["task"]
    limits = {
        "scans_motion_check": (df["mean_fd"] > quality.max_mean_fd_mm, "mean_fd",
                               f"mean FD > {quality.max_mean_fd_mm} mm"),
        "scans_tsnr_check": (df["tsnr"] < quality.min_tsnr, "tsnr",
                             f"tSNR < {quality.min_tsnr}"),
    }
    for name, (bad, column, rule) in limits.items():
        flagged = df.loc[bad, ["session", "task", "run", column]]
        summary = (f"{len(flagged)} of {len(df)} runs with {rule}: "
                   + ", ".join(labels[bad]) if len(flagged) else f"no run with {rule}")
        yield check_result(
            context, root, "scans", name, flagged.empty, summary, partition=pid,
            metadata={"flagged": dg.MetadataValue.md(markdown_table(flagged) if len(flagged)
                                                     else "none")})


@dg.asset(
    partitions_def=participants,
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="scans-1",
    check_specs=CHECKS,
    description=(
        "One row per BOLD run of the participant: files, sha256, volumes, TR, voxel grid, "
        "framewise displacement (mm) and tSNR. Every run is validated before anything is written."
    ),
)
def scans(context: dg.AssetExecutionContext, study: StudyFolder, warehouse: Warehouse,
          quality: QualityThresholds):
    # The key reaches file paths below, so it is validated before anything else.
    pid = validate_participant_label(context.partition_key)
    runs = study.runs(pid)
    if not runs:
        raise StudyDataError(study.path / pid, "no preprocessed BOLD runs (*_desc-preproc_bold)")

    # Validate every run before returning, so a bad file fails the whole partition and the
    # warehouse never holds a partial inventory; all problems are logged, the first is raised.
    infos, errors = [], []
    for i, run in enumerate(runs, start=1):
        label = f"ses-{run.session} task-{run.task} run-{run.run}"
        try:
            info = validate_run(run)
        except StudyDataError as e:
            context.log.error(f"{pid} {label}: {e}")
            errors.append(e)
            continue
        infos.append(info)
        context.log.info(
            f"{pid} [{i}/{len(runs)}] {label}: {info.n_volumes} volumes, TR {info.tr:g} s, "
            f"mean FD {info.mean_fd:.3f} mm, tSNR {info.tsnr:.1f}"
        )
    if errors:
        first = errors[0]
        more = len(errors) - 1
        suffix = f" (and {more} more problem(s), see the run log)" if more else ""
        raise StudyDataError(first.path, first.problem + suffix)

    df = pd.DataFrame.from_records([info.record() for info in infos])
    df["n_events"] = df["n_events"].astype("Int64")  # missing for rest, not a float NaN
    df.attrs["source_sha256"] = {p: s for info in infos for p, s in info.sha256.items()}
    yield dg.Output(df, metadata={
        "sessions": ", ".join(df["session"].unique()),  # runs come pre first
        "n_runs": len(df),
        "max_mean_fd_mm": float(df["mean_fd"].max()),
        "min_tsnr": float(df["tsnr"].min()),
    })
    yield from _run_checks(context, df, warehouse.root, quality)
