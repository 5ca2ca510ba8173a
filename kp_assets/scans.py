"""``scans``: inventory, validation and QC of every BOLD run of one participant."""

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_resources.study import StudyDataError, StudyFolder, validate_participant_label, validate_run


@dg.asset(
    partitions_def=participants,
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="scans-1",
    description=(
        "One row per BOLD run of the participant: files, sha256, volumes, TR, voxel grid, "
        "framewise displacement (mm) and tSNR. Every run is validated before anything is written."
    ),
)
def scans(context: dg.AssetExecutionContext, study: StudyFolder) -> pd.DataFrame:
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
    context.add_output_metadata(
        {
            "sessions": ", ".join(df["session"].unique()),  # runs come pre first
            "n_runs": len(df),
            "max_mean_fd_mm": float(df["mean_fd"].max()),
            "min_tsnr": float(df["tsnr"].min()),
        }
    )
    return df
