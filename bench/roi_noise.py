"""Measure the noise left in a cleaned ROI mean by the image path, for the region-level path.

``kp_science.simulator.roi_level`` simulates studies as ROI means plus AR(1) noise
(``ROI_NOISE_SD``, ``ROI_NOISE_AR1``). This script measures what those should be: it writes
a small study at the default voxel size, runs the pipeline's own extraction and cleaning
(``roi_timeseries``) on every run, cleans the planted region signal of the same run the same
way, and reports the SD and lag-1 autocorrelation of the difference, pooled over ROIs, runs
and participants, beside the constants in use (ratio measured / in use).

    .venv/bin/python bench/roi_noise.py [--participants 3] [--voxel-size 4]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from kp_assets.roi_timeseries import _run_tables
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.roi_set import RoiSet
from kp_resources.study import StudyFolder
from kp_science.roi_signals import clean_roi_signals, load_run_confounds
from kp_science.rois import ROI_NAMES
from kp_science.simulator import simulate_study
from kp_science.simulator.roi_level import BASELINE, ROI_NOISE_AR1, ROI_NOISE_SD
from kp_science.simulator.study import (
    DEFAULT_VOLUMES,
    SESSIONS,
    SimulationOptions,
    plan_study,
    region_signals,
    run_rng,
)
from kp_science.study.validate import validate_run


def residuals(study: Path, options: SimulationOptions) -> list[np.ndarray]:
    """Per run: (kept volumes, ROIs) cleaned pipeline signal − cleaned planted signal."""
    _, jobs = plan_study(options)
    folder, roi_set, cleaning = StudyFolder(root=str(study)), RoiSet(), ConfoundCleaning()
    out = []
    for job in jobs:
        for run in folder.runs(job.participant_id):
            s = SESSIONS.index(run.session)
            region, _ = region_signals(
                job,
                run.session,
                run.task,
                options,
                run_rng(options.seed, job.index, s, run.task, 1),
            )
            scan = pd.Series(validate_run(run).record())
            table, _ = _run_tables(scan, roi_set, cleaning)
            measured = table.pivot(index="volume", columns="roi", values="signal")
            confounds, kept = load_run_confounds(
                scan["bold_path"], cleaning.strategy(), scan["confounds_path"]
            )
            planted = pd.DataFrame(
                BASELINE * (1 + np.column_stack([region[r] for r in ROI_NAMES]) / 100),
                columns=list(ROI_NAMES),
            )
            clean_planted = clean_roi_signals(planted, confounds, kept, float(scan["tr"]))
            out.append(
                (
                    measured.loc[kept, list(ROI_NAMES)] - clean_planted.loc[kept, list(ROI_NAMES)]
                ).to_numpy()
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--voxel-size", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = simulate_study(
            Path(tmp) / "study",
            participants=args.participants,
            seed=args.seed,
            voxel_size=args.voxel_size,
        )
        options = SimulationOptions(
            args.participants, args.seed, args.voxel_size, dict(DEFAULT_VOLUMES)
        )
        runs = residuals(study, options)
    sd = float(np.sqrt(np.mean([np.mean(r**2) for r in runs])))
    ar1 = float(np.mean([np.sum(r[1:] * r[:-1]) / np.sum(r**2) for r in runs]))
    print(f"{len(runs)} runs × {len(ROI_NAMES)} ROIs at {args.voxel_size:g} mm")
    print(
        f"residual SD    {sd:.3f} % signal (in use {ROI_NOISE_SD}; ratio {sd / ROI_NOISE_SD:.2f})"
    )
    print(
        f"residual AR(1) {ar1:.3f}          (in use {ROI_NOISE_AR1}; ratio "
        f"{ar1 / ROI_NOISE_AR1:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
