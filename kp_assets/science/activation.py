"""ROI-level first-level GLM (task activation) on cleaned ROI signals.

Designs are built with nilearn's ``make_first_level_design_matrix`` (canonical Glover HRF, no
drift terms: the signals were already high-pass filtered and cleaned of confounds, and the
task regressors get exactly the same cleaning, which by the Frisch–Waugh–Lovell theorem gives
the betas of a model that contains the confounds). The model is fitted with nilearn's
``run_glm`` (AR(1) noise) and contrasts with ``compute_contrast``: the same code path as
nilearn's ``FirstLevelModel``.

Conditions:
- faces: ``emotional`` and ``neutral`` face blocks.
- conflict: each trial labelled by its own and the previous trial's congruency — ``cC``,
  ``cI``, ``iC``, ``iI`` (lower case: previous trial; upper case: current trial); the first
  trial, which has no predecessor, is its own condition ``first``.

Contrasts (weights over conditions): faces ``emotional_vs_neutral`` = emotional − neutral;
conflict ``regulation`` = iI − cI (conflict adaptation, Etkin et al. 2006) and ``monitoring``
= ½(cI + iI) − ½(cC + iC) (incongruent − congruent).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

CONTRASTS: dict[str, dict[str, dict[str, float]]] = {
    "faces": {"emotional_vs_neutral": {"emotional": 1.0, "neutral": -1.0}},
    "conflict": {
        "regulation": {"iI": 1.0, "cI": -1.0},
        "monitoring": {"cI": 0.5, "iI": 0.5, "cC": -0.5, "iC": -0.5},
    },
}


def task_conditions(events: pd.DataFrame, task: str) -> pd.DataFrame:
    """Events (onset, duration, trial_type) with the trial types the task's contrasts use."""
    events = events.sort_values("onset", kind="stable").reset_index(drop=True)
    out = events[["onset", "duration"]].astype(float).copy()
    kind = events["trial_type"].astype(str)
    if task == "conflict":
        short = kind.map({"congruent": "c", "incongruent": "i"})
        if short.isna().any():
            bad = sorted(set(kind[short.isna()]))
            raise ValueError(f"conflict trial_type must be congruent/incongruent, got {bad}")
        previous = short.shift(1)
        out["trial_type"] = np.where(previous.isna(), "first",
                                     previous.fillna("") + short.str.upper())
    else:
        out["trial_type"] = kind
    return out


def frame_times(n_volumes: int, tr: float, slice_time_ref: float = 0.0) -> np.ndarray:
    """Acquisition time (s) of each volume, at ``slice_time_ref`` (fraction of TR)."""
    return (np.arange(n_volumes) + slice_time_ref) * tr


def task_design(
    events: pd.DataFrame, n_volumes: int, tr: float, slice_time_ref: float = 0.0,
    hrf_model: str = "glover",
) -> pd.DataFrame:
    """HRF-convolved task regressors (n_volumes × conditions), no drift, no constant."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    design = make_first_level_design_matrix(
        frame_times(n_volumes, tr, slice_time_ref), events, hrf_model=hrf_model,
        drift_model=None)
    return design.drop(columns="constant")


def clean_design(
    design: pd.DataFrame, confounds: pd.DataFrame, kept: np.ndarray, tr: float
) -> pd.DataFrame:
    """Apply to the regressors the confound cleaning the ROI signals had, keep the kept
    volumes, add a constant."""
    from nilearn.signal import clean

    cleaned = clean(design.to_numpy(float), confounds=confounds.to_numpy(float),
                    sample_mask=kept, t_r=tr, detrend=False, standardize=None,
                    standardize_confounds=True, filter=False)
    out = pd.DataFrame(cleaned, index=pd.Index(kept, name="volume"), columns=design.columns)
    out["constant"] = 1.0
    return out


def contrast_vector(design: pd.DataFrame, weights: Mapping[str, float]) -> np.ndarray:
    """Contrast weights over the design's columns; a missing condition raises ValueError."""
    missing = [c for c in weights if c not in design.columns]
    if missing:
        raise ValueError(f"condition(s) {missing} have no trials in this run")
    return np.array([weights.get(c, 0.0) for c in design.columns])


def fit_roi_glm(
    signals: pd.DataFrame,
    design: pd.DataFrame,
    contrasts: Mapping[str, Mapping[str, float]],
    noise_model: str = "ar1",
) -> pd.DataFrame:
    """GLM of every ROI signal (kept volumes × ROIs) on ``design`` (same rows).

    Returns one row per ROI × contrast: roi, contrast, beta (contrast effect size, in the
    signals' units: % signal change per unit regressor), se, t. A contrast that needs a
    condition the run has no trials of is left out.
    """
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import run_glm

    if len(signals) != len(design):
        raise ValueError(f"{len(signals)} signal rows but {len(design)} design rows")
    if len(design) <= design.shape[1]:
        raise ValueError(f"{len(design)} volumes for {design.shape[1]} regressors")
    labels, results = run_glm(signals.to_numpy(float), design.to_numpy(float),
                              noise_model=noise_model)
    rows = []
    for name, weights in contrasts.items():
        if any(c not in design.columns for c in weights):
            continue  # a condition without trials in this run: the contrast is undefined
        contrast = compute_contrast(labels, results, contrast_vector(design, weights),
                                    stat_type="t")
        beta, t = np.ravel(contrast.effect_size()), np.ravel(contrast.stat())
        se = np.sqrt(np.ravel(contrast.effect_variance()))
        for i, roi in enumerate(signals.columns):
            rows.append({"roi": roi, "contrast": name, "beta": float(beta[i]),
                         "se": float(se[i]), "t": float(t[i])})
    return pd.DataFrame(rows)
