"""The pipeline's feature stages on a region-level simulated study (no images).

For the seed-level tests of the prediction models, which need dozens of
21-participant studies: :func:`change_scores` runs the per-run measure chain the
``roi_timeseries`` → ``roi_activation`` / ``task_connectivity`` / ``rest_connectivity`` →
``session_features`` → ``change_scores`` assets run (:mod:`kp_science.run_measures`, then
:mod:`kp_science.session_features`), from the cleaning step on, on the ROI means of
:func:`kp_science.simulator.roi_level.simulate_roi_study`.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from kp_science.run_measures import RunMeasures, run_measures, stack_measures
from kp_science.session_features import change_table, feature_table
from kp_science.simulator.images import cosine_regressors
from kp_science.simulator.roi_level import RoiRun, RoiStudy, simulate_roi_study
from kp_science.study.clinical import with_improvements
from kp_science.study.protocol import default_vocabulary

VOCABULARY = default_vocabulary()  # the simulator's study is this trial's

SLICE_TIME_REF = 0.5  # the simulator's sidecars: slice-timing corrected to mid-TR


def simulated_run_measures(run: RoiRun) -> RunMeasures:
    """The measures of one simulated run, as the feature assets compute them: cleaned of the
    high-pass cosines (the simulator's confounds without motion), no volume scrubbed."""
    n_volumes = len(run.raw)
    confounds = pd.DataFrame(cosine_regressors(n_volumes, run.tr))
    return run_measures(
        run.raw,
        confounds,
        np.arange(n_volumes),
        run.tr,
        VOCABULARY.tasks[run.task],
        run.events,
        SLICE_TIME_REF,
    )


def change_scores(study: RoiStudy) -> pd.DataFrame:
    """The ``change_scores`` table (participant_id, feature, pre, post, change)."""
    measures = stack_measures(
        (
            {"participant_id": run.participant_id, "session": run.session, "task": run.task},
            simulated_run_measures(run),
        )
        for run in study.runs
    )
    return change_table(feature_table(measures.activation, measures.gppi, measures.rest))


def clinical(study: RoiStudy) -> pd.DataFrame:
    """The ``clinical`` table: truth columns plus improvement = pre − post."""
    return with_improvements(study.clinical, [o.name for o in VOCABULARY.outcomes])


def simulated_tables(seed: int, null: bool = False, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(change_scores, clinical) of one region-level simulated 21-participant study."""
    study = simulate_roi_study(seed=seed, null=null, **options)
    return change_scores(study), clinical(study)


def many_studies(
    seeds: list[int], null: bool = False, workers: int = 2, **options
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """:func:`simulated_tables` for several seeds, ``workers`` processes at a time."""
    if workers <= 1:
        return [simulated_tables(s, null, **options) for s in seeds]
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(simulated_tables, s, null, **options) for s in seeds]
        return [f.result() for f in futures]
