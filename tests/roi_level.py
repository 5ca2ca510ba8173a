"""The pipeline's feature stages on a region-level simulated study (no images).

For the seed-level tests of the prediction models (issue 4), which need dozens of
21-participant studies: :func:`change_scores` runs exactly the science functions the
``roi_timeseries`` → ``roi_activation`` / ``task_connectivity`` / ``rest_connectivity`` →
``session_features`` → ``change_scores`` assets run, from the cleaning step on, on the ROI
means of :func:`kp_science.simulator.roi_level.simulate_roi_study`.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from kp_assets.session_features import change_table, feature_table
from kp_science.activation import (
    CONTRASTS,
    clean_design,
    fit_roi_glm,
    task_conditions,
    task_design,
)
from kp_science.gppi import fit_gppi
from kp_science.rest_fc import pair_correlations
from kp_science.roi_signals import clean_roi_signals
from kp_science.simulator.images import cosine_regressors
from kp_science.simulator.roi_level import RoiRun, RoiStudy, simulate_roi_study
from kp_science.study.clinical import with_improvements

SLICE_TIME_REF = 0.5  # the simulator's sidecars: slice-timing corrected to mid-TR


def run_measures(run: RoiRun) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(activation, gPPI, rest) rows of one run, as the feature assets compute them."""
    n_volumes = len(run.raw)
    confounds = pd.DataFrame(cosine_regressors(n_volumes, run.tr))
    kept = np.arange(n_volumes)
    signals = clean_roi_signals(run.raw, confounds, kept, run.tr)
    empty = pd.DataFrame()
    if run.events is None:
        return empty, empty, pair_correlations(signals)
    conditions = task_conditions(run.events, run.task)
    design = clean_design(task_design(conditions, n_volumes, run.tr, SLICE_TIME_REF),
                          confounds, kept, run.tr)
    contrasts = CONTRASTS[run.task]
    activation = fit_roi_glm(signals, design, contrasts)
    gppi = fit_gppi(signals, design, conditions, confounds, kept, n_volumes, run.tr,
                    SLICE_TIME_REF, contrasts)
    return activation, gppi, empty


def change_scores(study: RoiStudy) -> pd.DataFrame:
    """The ``change_scores`` table (participant_id, feature, pre, post, change)."""
    parts: list[list[pd.DataFrame]] = [[], [], []]
    for run in study.runs:
        for kind, table in zip(parts, run_measures(run), strict=True):
            if len(table):
                # keys added by position (cheaper than .assign on every small table)
                table.insert(0, "participant_id", run.participant_id)
                table.insert(1, "session", run.session)
                table.insert(2, "task", run.task)
                kind.append(table)
    activation, gppi, rest = (pd.concat(kind, ignore_index=True) for kind in parts)
    return change_table(feature_table(activation, gppi, rest))


def clinical(study: RoiStudy) -> pd.DataFrame:
    """The ``clinical`` table: truth columns plus improvement = pre − post."""
    return with_improvements(study.clinical)


def simulated_tables(seed: int, null: bool = False, **options) -> tuple[pd.DataFrame,
                                                                         pd.DataFrame]:
    """(change_scores, clinical) of one region-level simulated 21-participant study."""
    study = simulate_roi_study(seed=seed, null=null, **options)
    return change_scores(study), clinical(study)


def many_studies(seeds: list[int], null: bool = False, workers: int = 2,
                 **options) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """:func:`simulated_tables` for several seeds, ``workers`` processes at a time."""
    if workers <= 1:
        return [simulated_tables(s, null, **options) for s in seeds]
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(simulated_tables, s, null, **options) for s in seeds]
        return [f.result() for f in futures]
