"""``roi_timeseries`` and ``roi_coverage``: every run read once, all ROIs extracted, cleaned.

Per participant: for each run of the ``scans`` inventory the BOLD file is read once, a block
of volumes at a time as it decompresses, never whole (its sha256 must still match the
inventory), every ROI's voxels are averaged (voxels outside the brain mask, non-finite or
flat are excluded and counted in ``roi_coverage``), then the ROI means are cleaned with the
run's fMRIPrep confounds (nilearn ``load_confounds`` strategy of the ``cleaning`` resource)
and converted to percent signal change. Scrubbed volumes keep their raw value and get
``signal`` NaN and ``scrubbed`` true.
"""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from kp_assets.partitions import participants
from kp_resources.asset_metadata import markdown_table
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.quality import QualityThresholds, check_result
from kp_resources.roi_set import RoiSet, roi_positions_figure
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.figures import markdown_image
from kp_science.roi_signals import clean_roi_signals, load_run_confounds, stream_roi_means
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import validate_participant_label
from kp_science.study.nifti import open_nifti, read_nifti
from kp_science.study.reading import CHANGED_SINCE_SCANS, check_unchanged
from kp_science.study.validate import read_sidecar


def slice_time_ref(sidecar_path: str, tr: float, sha256: str | None = None) -> float:
    """Reference time of each volume as a fraction of TR: fMRIPrep's ``StartTime`` after
    slice-timing correction, else 0 (start of the volume). Given the sidecar's ``sha256`` in
    the scans inventory, a sidecar changed since (its StartTime unchecked) is refused."""
    sidecar, sha = read_sidecar(Path(sidecar_path))
    if sha256 is not None and sha != sha256:
        raise StudyDataError(sidecar_path, CHANGED_SINCE_SCANS)
    if sidecar.get("SliceTimingCorrected") and "StartTime" in sidecar:
        return float(sidecar["StartTime"]) / tr
    return 0.0


def roi_positions_markdown(roi_set: RoiSet) -> str:
    """The ROI set drawn on the MNI template, as markdown (drawn once per definition)."""
    return markdown_image(roi_positions_figure(roi_set), f"ROI set {roi_set.fingerprint()}")


def _run_tables(
    run: pd.Series, roi_set: RoiSet, cleaning: ConfoundCleaning
) -> tuple[pd.DataFrame, pd.DataFrame]:
    mask = read_nifti(run["mask_path"])
    # the checks of scans hold only for the files it read: a mask or confounds file replaced
    # since (another grid, fewer rows) would fail inside numpy without naming the file
    if mask.sha256 != run["mask_sha256"]:
        raise StudyDataError(run["mask_path"], CHANGED_SINCE_SCANS)
    check_unchanged(run["confounds_path"], run["confounds_sha256"], "confounds file")
    # the run is read once, block by block as it decompresses (never whole), its sha256
    # computed on the way and compared with the inventory's at the end
    with open_nifti(run["bold_path"]) as bold:
        header = bold.header
        grid = (*(int(run[f"shape_{a}"]) for a in "xyz"), int(run["n_volumes"]))
        if header.shape != grid:  # scans read it with another grid
            raise StudyDataError(run["bold_path"], CHANGED_SINCE_SCANS)
        try:
            rois = roi_set.voxels(header.affine, (grid[0], grid[1], grid[2]))
        except ValueError as e:
            raise StudyDataError(run["bold_path"], str(e)) from e
        extraction = stream_roi_means(bold, mask.data, rois)
        if bold.sha256 != run["sha256"]:
            raise StudyDataError(run["bold_path"], CHANGED_SINCE_SCANS)
    coverage = extraction.coverage
    low = coverage[coverage["coverage"] < roi_set.min_coverage]
    if len(low) and not roi_set.allow_partial_coverage:
        roi = low.iloc[0]
        raise StudyDataError(
            run["bold_path"],
            f"ROI {roi['roi']} coverage {roi['coverage']:.0%} is below the minimum "
            f"{roi_set.min_coverage:.0%} ({roi['n_used']} of {roi['n_defined']} voxels usable)",
        )
    usable = coverage.loc[coverage["n_used"] > 0, "roi"].tolist()
    if not usable:
        raise StudyDataError(run["bold_path"], "no ROI has a usable voxel")

    confounds, kept = load_run_confounds(
        run["bold_path"], cleaning.strategy(), run["confounds_path"]
    )
    needed = confounds.shape[1] + cleaning.min_free_volumes
    if len(kept) < needed:
        raise StudyDataError(
            run["confounds_path"],
            f"scrubbing leaves {len(kept)} of {run['n_volumes']} volumes; at least {needed} "
            f"needed ({confounds.shape[1]} confounds + {cleaning.min_free_volumes})",
        )
    cleaned = clean_roi_signals(extraction.signals[usable], confounds, kept, run["tr"])

    n_volumes = int(run["n_volumes"])
    reference = slice_time_ref(run["sidecar_path"], run["tr"], run["sidecar_sha256"])
    times = (np.arange(n_volumes) + reference) * run["tr"]
    raw = (
        extraction.signals[usable]
        .rename_axis("volume")
        .reset_index()
        .melt(id_vars="volume", var_name="roi", value_name="raw")
    )
    signal = cleaned.reset_index().melt(id_vars="volume", var_name="roi", value_name="signal")
    table = raw.merge(signal, on=["volume", "roi"], how="left")
    table["scrubbed"] = table["signal"].isna()
    table["time_s"] = times[table["volume"].to_numpy()]
    keys = {k: run[k] for k in ("participant_id", "session", "task", "run")}
    table = table.assign(**keys)[
        [
            "participant_id",
            "session",
            "task",
            "run",
            "roi",
            "volume",
            "time_s",
            "raw",
            "signal",
            "scrubbed",
        ]
    ]
    coverage = coverage.assign(**keys, n_volumes_kept=len(kept), n_volumes=n_volumes)
    return table, coverage


@dg.multi_asset(
    outs={
        "roi_timeseries": dg.AssetOut(
            kinds={"pandas", "parquet"},
            code_version="roi_timeseries-2",
            description="Cleaned ROI signals: run × ROI × volume (percent signal change).",
        ),
        "roi_coverage": dg.AssetOut(
            kinds={"pandas", "parquet"},
            code_version="roi_coverage-1",
            description="Usable voxels per run × ROI (brain mask, finite, not flat).",
        ),
    },
    ins={"scans": dg.AssetIn()},
    partitions_def=participants,
    group_name="roi_signals",
    check_specs=[
        dg.AssetCheckSpec(
            "roi_coverage_check",
            asset="roi_coverage",
            description="Every ROI's coverage in every run is at least the ROI set's "
            "min_coverage (a warning when partial coverage is allowed).",
        ),
        dg.AssetCheckSpec(
            "roi_scrubbing_check",
            asset="roi_timeseries",
            description="No run loses more than the quality resource's "
            "max_scrubbed_fraction of its volumes to scrubbing.",
        ),
    ],
)
def roi_signals(
    context: dg.AssetExecutionContext,
    scans: pd.DataFrame,
    roi_set: RoiSet,
    cleaning: ConfoundCleaning,
    warehouse: Warehouse,
    quality: QualityThresholds,
    study: StudyFolder,
):
    pid = validate_participant_label(context.partition_key)
    roi_set = roi_set.for_protocol(study.protocol())
    tables, coverages = [], []
    for i, (_, run) in enumerate(scans.iterrows(), 1):
        table, coverage = _run_tables(run, roi_set, cleaning)
        tables.append(table)
        coverages.append(coverage)
        kept = int(coverage["n_volumes_kept"].iloc[0])
        context.log.info(
            f"{pid} [{i}/{len(scans)}] ses-{run['session']} task-{run['task']} run-{run['run']}: "
            f"{kept}/{run['n_volumes']} volumes kept, "
            f"min ROI coverage {coverage['coverage'].min():.0%}"
        )
    timeseries = pd.concat(tables, ignore_index=True)
    coverage = pd.concat(coverages, ignore_index=True)
    provenance = {
        "source_sha256": dict(zip(scans["bold_path"], scans["sha256"], strict=True)),
        "roi_set": roi_set.definition(),
        "cleaning": cleaning.strategy().describe(),
    }
    timeseries.attrs.update(provenance)
    coverage.attrs.update(provenance)
    definition = json.dumps(roi_set.definition(), sort_keys=True)
    yield dg.Output(
        timeseries,
        "roi_timeseries",
        metadata={
            "roi_positions": dg.MetadataValue.md(roi_positions_markdown(roi_set)),
            "roi_set": dg.MetadataValue.json(roi_set.definition()),
            "cleaning": dg.MetadataValue.json(cleaning.strategy().describe()),
            "scrubbed_fraction": float(timeseries["scrubbed"].mean()),
        },
    )
    yield dg.Output(
        coverage,
        "roi_coverage",
        metadata={
            "roi_set_fingerprint": roi_set.fingerprint(),
            "min_coverage": float(coverage["coverage"].min()),
            "roi_set_definition": definition,
        },
    )
    low = coverage[coverage["coverage"] < roi_set.min_coverage]
    summary = (
        f"{len(low)} run × ROI below {roi_set.min_coverage:.0%} coverage: "
        + ", ".join(
            f"ses-{r.session} task-{r.task} {r.roi} {r.coverage:.0%}" for r in low.itertuples()
        )
        if len(low)
        else f"every ROI covered ≥ {roi_set.min_coverage:.0%} in every run"
    )
    yield check_result(
        context,
        warehouse.root,
        "roi_coverage",
        "roi_coverage_check",
        low.empty,
        summary,
        partition=pid,
        metadata={
            "min_coverage": float(coverage["coverage"].min()),
            "threshold": roi_set.min_coverage,
            "low": dg.MetadataValue.md(
                markdown_table(low[["session", "task", "roi", "coverage"]]) if len(low) else "none"
            ),
        },
    )
    scrubbed = coverage.groupby(["session", "task", "run"], as_index=False).first()[
        ["session", "task", "run", "n_volumes_kept", "n_volumes"]
    ]
    scrubbed["scrubbed_fraction"] = 1 - scrubbed["n_volumes_kept"] / scrubbed["n_volumes"]
    heavy = scrubbed[scrubbed["scrubbed_fraction"] > quality.max_scrubbed_fraction]
    rule = f"more than {quality.max_scrubbed_fraction:.0%} of volumes scrubbed"
    summary = (
        f"{len(heavy)} of {len(scrubbed)} runs with {rule}: "
        + ", ".join(
            f"ses-{r.session} task-{r.task} {r.scrubbed_fraction:.0%}" for r in heavy.itertuples()
        )
        if len(heavy)
        else f"no run with {rule}"
    )
    yield check_result(
        context,
        warehouse.root,
        "roi_timeseries",
        "roi_scrubbing_check",
        heavy.empty,
        summary,
        partition=pid,
        metadata={
            "max_scrubbed_fraction": float(scrubbed["scrubbed_fraction"].max()),
            "threshold": quality.max_scrubbed_fraction,
            "flagged": dg.MetadataValue.md(markdown_table(heavy) if len(heavy) else "none"),
        },
    )
