"""``scans``: inventory, validation and QC of every BOLD run of one participant."""

import warnings

import dagster as dg
import pandas as pd

from kp_assets.partitions import participants
from kp_resources.asset_metadata import markdown_table
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMModels
from kp_resources.provenance import SOURCE_FINGERPRINT_ATTR
from kp_resources.quality import QualityThresholds, check_result
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import validate_participant_label
from kp_science.study.validate import (
    LeftOut,
    select_runs,
    study_event_requirements,
    validate_run,
)

CHECKS = [
    dg.AssetCheckSpec(
        "scans_motion_check",
        asset="scans",
        description="Every run's mean framewise displacement is at most the "
        "quality resource's max_mean_fd_mm.",
    ),
    dg.AssetCheckSpec(
        "scans_tsnr_check",
        asset="scans",
        description="Every run's mean voxel tSNR is at least the quality resource's min_tsnr.",
    ),
]


def _run_checks(
    context: dg.AssetExecutionContext, df: pd.DataFrame, root: str, quality: QualityThresholds
):
    pid = context.partition_key
    labels = "ses-" + df["session"] + " task-" + df["task"] + " run-" + df["run"].astype(str)
    limits = {
        "scans_motion_check": (
            df["mean_fd"] > quality.max_mean_fd_mm,
            "mean_fd",
            f"mean FD > {quality.max_mean_fd_mm} mm",
        ),
        "scans_tsnr_check": (df["tsnr"] < quality.min_tsnr, "tsnr", f"tSNR < {quality.min_tsnr}"),
    }
    for name, (bad, column, rule) in limits.items():
        flagged = df.loc[bad, ["session", "task", "run", column]]
        summary = (
            f"{len(flagged)} of {len(df)} runs with {rule}: " + ", ".join(labels[bad])
            if len(flagged)
            else f"no run with {rule}"
        )
        yield check_result(
            context,
            root,
            "scans",
            name,
            flagged.empty,
            summary,
            partition=pid,
            metadata={
                "flagged": dg.MetadataValue.md(markdown_table(flagged) if len(flagged) else "none")
            },
        )


@dg.asset(
    partitions_def=participants,
    group_name="ingest",
    kinds={"pandas", "parquet"},
    code_version="scans-2",
    check_specs=CHECKS,
    description=(
        "One row per BOLD run of the participant: files, sha256, volumes, TR, voxel grid, "
        "framewise displacement (mm) and tSNR. Every run is validated before anything is written "
        "(against the cleaning strategy and what the task models need of the events); every "
        "run of a task is kept (several runs are analysed run by run); runs of sessions or "
        "tasks the study protocol does not name are left out with a warning."
    ),
)
def scans(
    context: dg.AssetExecutionContext,
    study: StudyFolder,
    warehouse: Warehouse,
    quality: QualityThresholds,
    cleaning: ConfoundCleaning,
    dcm_models: DCMModels,
):
    # The key reaches file paths below, so it is validated before anything else.
    pid = validate_participant_label(context.partition_key)
    protocol = study.protocol()
    # taken before any file is read: a change while reading makes the inventory out of date
    fingerprint = study.fingerprint(pid)
    runs, left_out, failure = select_runs(protocol, pid, study.runs(pid))
    for item in left_out:
        context.log.warning(f"{pid}: {item.path}: {item.problem}")
    if failure is not None:
        raise failure
    strategy, needs = cleaning.strategy(), study_event_requirements(protocol)

    # Validate every run before returning, so a bad file fails the whole partition and the
    # warehouse never holds a partial inventory; all problems are logged, the first is raised.
    infos, errors = [], []
    for i, run in enumerate(runs, start=1):
        label = f"ses-{run.session} task-{run.task} run-{run.run}"
        try:
            info = validate_run(run, strategy, needs)
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
    df.attrs[SOURCE_FINGERPRINT_ATTR] = fingerprint
    with warnings.catch_warnings():
        # Output(data_version=...) is marked beta; it is the documented way to version a
        # materialization by its source, and a warning per participant run says nothing new
        warnings.simplefilter("ignore", dg.BetaWarning)
        output = _inventory_output(df, fingerprint, left_out)
    yield output
    yield from _run_checks(context, df, warehouse.root, quality)


def _inventory_output(df: pd.DataFrame, fingerprint: str, left_out: list[LeftOut]) -> dg.Output:
    """The inventory with its source fingerprint as data version, and its summary metadata."""
    return dg.Output(
        df,
        # the files this inventory was read from: the sensor compares it with the folder now
        # (kp_assets.sensors), and Dagster marks downstream partitions stale when it changes
        data_version=dg.DataVersion(fingerprint),
        metadata={
            "sessions": ", ".join(df["session"].unique()),  # the baseline session first
            "n_runs": len(df),
            "max_mean_fd_mm": float(df["mean_fd"].max()),
            "min_tsnr": float(df["tsnr"].min()),
            "left_out_sessions": ", ".join(
                dict.fromkeys(f"ses-{x.session}" for x in left_out if x.task is None)
            )
            or "none",
            "left_out_tasks": ", ".join(
                sorted({f"task-{x.task}" for x in left_out if x.task is not None})
            )
            or "none",
        },
    )
