"""ROI-level first-level GLM (task activation) on cleaned ROI signals.

Designs are nilearn's ``make_first_level_design_matrix`` (canonical Glover HRF, no drift
terms: the run's confounds, fMRIPrep's cosines among them, are the high-pass) with the run's
confounds and a constant in the design, at the kept volumes only. The model is nilearn's
``run_glm`` (AR(1) noise) with ``compute_contrast`` t contrasts, and the result equals
nilearn's ``FirstLevelModel`` with ``confounds=`` the run's confounds, ``sample_masks=`` its
kept volumes, ``signal_scaling=0``, ``drift_model=None`` and ``noise_model="ar1"`` (tested
to 1e-6 relative in betas, SEs and t; it agrees to rounding error):

- the signals are the ROI means in percent of their mean over the kept volumes, cleaned of
  the confounds (:func:`kp_science.roi_signals.clean_roi_signals`); the task regressors get
  the same cleaning, and the design carries the confounds too, as an orthonormal basis of
  the z-scored confounds (:func:`clean_design`). With the constant that basis spans the same
  space as the confounds, so the task betas and their covariance are those of the model
  [task regressors, confounds, constant] — a reparameterization of the same columns. The
  cleaning alone would not do: the Frisch–Waugh–Lovell theorem holds for OLS, but the AR(1)
  refit whitens the design, and a whitened confound is no longer orthogonal to the whitened
  cleaned regressors; the confound columns must be in the whitened model.
- degrees of freedom: the dispersion is ``‖whitened residuals‖² / (n − p)`` with ``n`` the
  kept volumes (scrubbed and non-steady-state volumes are removed rows) and ``p`` the design
  columns: conditions + confounds + 1, as nilearn counts them. A rank-deficient confound
  set (a confound constant over the kept volumes, a duplicate) still counts every confound:
  the cleaning leaves out the directions it lacks, as ``nilearn.signal.clean`` does, and
  each is a zero design column (:func:`confound_columns`), which the fit ignores as
  nilearn's pseudo-inverse does.

Both are computed here with plain numpy (:mod:`.glm`, and the Glover design and confound
regression below) because nilearn's per-call machinery costs 10–100× the algebra on
ROI-sized problems; the tests pin the results to nilearn's.

Conditions and contrasts are the study protocol's (:class:`kp_science.study.protocol.TaskSpec`):
a task's trial types are its conditions, or, with a previous-trial recoding, each trial is
labelled by the previous trial's code and its own in upper case — in this trial's conflict task
``cC``, ``cI``, ``iC``, ``iI`` (c/i: congruent/incongruent) — the first trial, which has no
predecessor, being its own condition ``first``. Contrasts are weights over those conditions:
this trial's faces ``emotional_vs_neutral`` = emotional − neutral; conflict ``regulation`` =
iI − cI (conflict adaptation, Etkin et al. 2006) and ``monitoring`` = ½(cI + iI) − ½(cC + iC)
(incongruent − congruent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache, partial

import numpy as np
import pandas as pd

from kp_science.glm import fit_ar1_glm, t_contrasts
from kp_science.roi_signals import confound_basis, regress_out
from kp_science.study.protocol import FIRST_TRIAL, TaskSpec

# nilearn make_first_level_design_matrix defaults, which the fast design reproduces
OVERSAMPLING = 50
MIN_ONSET = -24.0
MAX_CONDITION = 1e15  # nilearn full_rank: a design this ill-conditioned gets regularized
CONFOUND_PREFIX = "confound_basis_"  # names of the design's confound columns


def task_conditions(events: pd.DataFrame, task: TaskSpec) -> pd.DataFrame:
    """Events (onset, duration, trial_type) sorted by onset, with the model conditions of
    ``task`` as trial types: the trial types themselves, or with a previous-trial recoding
    (``task.previous_trial``) previous code + own code in upper case, the first trial
    ``first``. A recoded task allows only its declared conditions (ValueError otherwise)."""
    order = np.argsort(events["onset"].to_numpy(float), kind="stable")
    onset = events["onset"].to_numpy(float)[order]
    duration = events["duration"].to_numpy(float)[order]
    kind = events["trial_type"].astype(str).to_numpy(object)[order]
    if task.previous_trial:
        codes = task.previous_trial
        bad = sorted({str(k) for k in kind if k not in codes})
        if bad:
            raise ValueError(f"{task.label} trial_type must be {'/'.join(codes)}, got {bad}")
        short = [codes[k] for k in kind]
        labels = [FIRST_TRIAL if i == 0 else short[i - 1] + s.upper() for i, s in enumerate(short)]
    else:
        labels = list(kind)
    return pd.DataFrame(
        {"onset": onset, "duration": duration, "trial_type": np.array(labels, dtype=object)}
    )


def _condition_labels(events: pd.DataFrame, task: TaskSpec) -> list[str]:
    return list(task_conditions(events, task)["trial_type"])


def contrast_event_rules(tasks: Mapping[str, TaskSpec]) -> dict[str, dict]:
    """What each event task's contrasts need from every events file of the task, as keyword
    arguments of ``kp_science.study.validate.EventRequirements`` (plain data).

    A task without recoding: the trial types named in its contrasts (others are modelled as
    conditions of their own). A recoded task: only its declared conditions, each one its
    contrasts' model conditions need, and every model condition the contrasts weigh must
    occur (this trial's conflict task: cC, cI, iC, iI formed from consecutive trials).
    """
    rules = {}
    for label, task in tasks.items():
        if not task.has_events:
            continue
        conditions = sorted({c for weights in task.contrasts.values() for c in weights})
        names = ", ".join(task.contrasts) or "none"
        if task.previous_trial:
            letters = {ch.lower() for c in conditions for ch in c}
            rules[label] = {
                "required": tuple(k for k, s in task.previous_trial.items() if s in letters),
                "allowed": tuple(task.previous_trial),
                "needed_by": f"the {label} contrasts {names} (conditions: previous trial's "
                f"code {'/'.join(task.previous_trial.values())}, then the trial's own in "
                "upper case)",
                "conditions": partial(_condition_labels, task=task),
                "required_conditions": tuple(conditions),
            }
        else:
            rules[label] = {
                "required": tuple(conditions),
                "allowed": None,
                "needed_by": f"the {label} contrast(s) {names}",
            }
    return rules


def frame_times(n_volumes: int, tr: float, slice_time_ref: float = 0.0) -> np.ndarray:
    """Acquisition time (s) of each volume, at ``slice_time_ref`` (fraction of TR)."""
    return (np.arange(n_volumes) + slice_time_ref) * tr


def high_res_times(times: np.ndarray) -> np.ndarray:
    """nilearn's oversampled grid (s) for event regressors: from 24 s before the first
    frame to one frame after the last, ``OVERSAMPLING`` points per frame interval."""
    n = times.size
    first, last = times.min(), times.max()
    n_high = (n - 1) * 1.0 / (last - first)
    n_high *= (last * (1 + 1.0 / (n - 1)) - first - MIN_ONSET) * OVERSAMPLING
    return np.linspace(
        first + MIN_ONSET, last * (1 + 1.0 / (n - 1)), np.rint(n_high + 1).astype(int)
    )


def event_boxcar(
    grid: np.ndarray, onsets: np.ndarray, durations: np.ndarray, amplitudes: np.ndarray
) -> np.ndarray:
    """Sum of the events' boxcars (amplitude units) on ``grid`` (s), nilearn's sampling:
    each event from the first grid point ≥ onset to the first ≥ offset, at least one point."""
    last = grid.size - 1
    start = np.minimum(np.searchsorted(grid, onsets), last)
    stop = np.minimum(np.searchsorted(grid, onsets + durations), last)
    stop = np.where((stop < last) & (stop == start), stop + 1, stop)
    steps = np.zeros(grid.size)
    np.add.at(steps, start, amplitudes)
    np.add.at(steps, stop, -amplitudes)
    return np.cumsum(steps)


@lru_cache(maxsize=8)
def _glover_kernel(tr: float) -> np.ndarray:
    """nilearn's Glover HRF at TR/``OVERSAMPLING`` (sums to 1); read-only, cached."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    kernel = glover_hrf(tr, OVERSAMPLING)
    kernel.flags.writeable = False
    return kernel


def linear_resample(grid: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` (len(grid), m) at ``times`` (scipy interp1d's
    arithmetic, so the result matches nilearn's to the last bit)."""
    hi = np.clip(np.searchsorted(grid, times), 1, grid.size - 1)
    lo = hi - 1
    slope = (values[hi] - values[lo]) / (grid[hi] - grid[lo])[:, None]
    return slope * (times - grid[lo])[:, None] + values[lo]


def glover_regressors(events: pd.DataFrame, times: np.ndarray) -> tuple[list, np.ndarray]:
    """Condition names (sorted) and their Glover-convolved regressors (len(times) × names),
    as ``make_first_level_design_matrix(hrf_model="glover")`` computes them."""
    from scipy.signal import fftconvolve

    kinds = events["trial_type"]
    valid = kinds.notna().to_numpy()  # nilearn groups events by type: untyped ones drop out
    kinds = kinds.to_numpy(object)[valid]
    onsets = events["onset"].to_numpy(float)[valid]
    durations = events["duration"].to_numpy(float)[valid]
    amplitudes = (
        events["modulation"].to_numpy(float)[valid]
        if "modulation" in events
        else np.ones(len(onsets))
    )
    names = sorted(set(kinds))
    grid = high_res_times(times)
    boxcars = np.zeros((grid.size, len(names)))
    for column, name in enumerate(names):
        mask = kinds == name
        boxcars[:, column] = event_boxcar(grid, onsets[mask], durations[mask], amplitudes[mask])
    kernel = _glover_kernel(float(np.min(np.diff(times))))
    convolved = fftconvolve(boxcars, kernel[:, None], axes=0)[: grid.size]
    return names, linear_resample(grid, convolved, times)


def task_design(
    events: pd.DataFrame,
    n_volumes: int,
    tr: float,
    slice_time_ref: float = 0.0,
    hrf_model: str = "glover",
) -> pd.DataFrame:
    """HRF-convolved task regressors (n_volumes × conditions), no drift, no constant.

    Equals ``make_first_level_design_matrix(..., drift_model=None)`` without its constant;
    other HRF models, and designs nilearn would regularize, are left to nilearn.
    """
    times = frame_times(n_volumes, tr, slice_time_ref)
    if hrf_model == "glover" and n_volumes > 1:
        names, regressors = glover_regressors(events, times)
        singular = np.linalg.svd(
            np.column_stack([regressors, np.ones(n_volumes)]), compute_uv=False
        )
        if names and singular.max() < MAX_CONDITION * singular.min():
            return pd.DataFrame(regressors, columns=names, index=times)
    from nilearn.glm.first_level import make_first_level_design_matrix

    design = make_first_level_design_matrix(times, events, hrf_model=hrf_model, drift_model=None)
    return design.drop(columns="constant")


def confound_columns(basis: np.ndarray, n_confounds: int) -> np.ndarray:
    """The confounds' columns of a GLM design (n_kept × ``n_confounds``): the orthonormal
    ``basis`` (n_kept × rank, :func:`~kp_science.roi_signals.confound_basis`), then a zero
    column for each confound the rank lacks.

    The basis spans, with the constant, the same space as the confounds themselves, so the
    task regressors' betas and their covariance are those of a model with the confounds as
    they are. A zero column is what nilearn's pseudo-inverse makes of a redundant confound
    column (no effect on any beta) while its dispersion ``‖e‖²/(n − p)`` still counts it in
    ``p``, the number of design columns; so does this design.
    """
    padding = np.zeros((basis.shape[0], n_confounds - basis.shape[1]))
    return np.column_stack([basis, padding])


def clean_design(
    design: pd.DataFrame, confounds: pd.DataFrame, kept: np.ndarray, tr: float
) -> pd.DataFrame:
    """The activation model's design at the kept volumes: the task regressors cleaned of the
    confounds as the ROI signals were, the confounds (:func:`confound_columns`, named
    ``confound_basis_0``, …) and a constant (kept volumes × conditions + confounds + 1).
    ``tr`` (s) is unused (no filtering) and kept for symmetry.

    With the confounds in the design, an AR(1) fit of the cleaned signals equals nilearn's
    ``FirstLevelModel`` with ``confounds=`` and ``sample_masks=`` (module docstring).
    """
    kept = _as_indices(kept, len(design))
    values = confounds.to_numpy(float)
    basis = confound_basis(values, kept)
    cleaned = regress_out(design.to_numpy(float), basis, kept)
    names = [*design.columns, *(f"{CONFOUND_PREFIX}{i}" for i in range(values.shape[1]))]
    out = pd.DataFrame(
        np.column_stack([cleaned, confound_columns(basis, values.shape[1])]),
        index=pd.Index(kept, name="volume"),
        columns=names,
    )
    out["constant"] = 1.0
    return out


def confound_count(design: pd.DataFrame) -> int:
    """How many confound columns (:func:`clean_design`) ``design`` has."""
    return sum(str(c).startswith(CONFOUND_PREFIX) for c in design.columns)


def _as_indices(kept: np.ndarray, n_volumes: int) -> np.ndarray:
    """Kept volumes as indices (a boolean mask of length n_volumes is converted)."""
    kept = np.asarray(kept)
    return np.flatnonzero(kept) if kept.dtype == bool and kept.size == n_volumes else kept


def contrast_vector(design: pd.DataFrame, weights: Mapping[str, float]) -> np.ndarray:
    """Contrast weights over the design's columns; a missing condition raises ValueError."""
    missing = [c for c in weights if c not in design.columns]
    if missing:
        raise ValueError(f"condition(s) {missing} have no trials in this run")
    return np.array([weights.get(c, 0.0) for c in design.columns])


def contrast_matrix(
    columns: Sequence[str], contrasts: Mapping[str, Mapping[str, float]]
) -> tuple[list[str], np.ndarray]:
    """Names and weight vectors (names × columns) of the contrasts whose conditions are all
    columns; the others (a condition without trials in this run) are undefined and left out."""
    position = {c: i for i, c in enumerate(columns)}
    names = [n for n, w in contrasts.items() if all(c in position for c in w)]
    vectors = np.zeros((len(names), len(columns)))
    for row, name in enumerate(names):
        for condition, weight in contrasts[name].items():
            vectors[row, position[condition]] = weight
    return names, vectors


def contrast_table(
    targets: Sequence | np.ndarray,
    names: Sequence[str],
    effect: np.ndarray,
    se: np.ndarray,
    t: np.ndarray,
    target_column: str = "roi",
) -> pd.DataFrame:
    """Rows contrast-major (each contrast, then each target) from (targets × contrasts)."""
    k, q = len(targets), len(names)
    return pd.DataFrame(
        {  # fresh arrays: no copy needed
            target_column: np.tile(np.asarray(targets, dtype=object), q),
            "contrast": np.repeat(np.asarray(names, dtype=object), k),
            "beta": effect.T.ravel(),
            "se": se.T.ravel(),
            "t": t.T.ravel(),
        },
        copy=False,
    )


def fit_roi_glm(
    signals: pd.DataFrame,
    design: pd.DataFrame,
    contrasts: Mapping[str, Mapping[str, float]],
    noise_model: str = "ar1",
) -> pd.DataFrame:
    """GLM of every ROI signal (kept volumes × ROIs) on ``design`` (same rows): the
    activation design (:func:`clean_design`), whose every column, the confounds' included,
    counts in the dispersion's ``n − p``.

    Returns one row per ROI × contrast: roi, contrast, beta (contrast effect size, in the
    signals' units: % signal change per unit regressor), se, t. A contrast that needs a
    condition the run has no trials of is left out. ``noise_model``: "ar1" or "ols".
    """
    if len(signals) != len(design):
        raise ValueError(f"{len(signals)} signal rows but {len(design)} design rows")
    if len(design) <= design.shape[1]:
        raise ValueError(f"{len(design)} volumes for {design.shape[1]} regressors")
    fit = fit_ar1_glm(signals.to_numpy(float), design.to_numpy(float), noise_model)
    names, vectors = contrast_matrix(design.columns.tolist(), contrasts)
    result = t_contrasts(fit, vectors)
    return contrast_table(
        signals.columns.to_numpy(object), names, result.effect, result.se, result.t
    )
