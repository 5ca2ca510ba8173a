"""Generalized psychophysiological interaction (gPPI; McLaren et al. 2012, NeuroImage 61:1277).

For each seed ROI:

1. **Deconvolution** of the seed's cleaned BOLD to an estimate of its neural signal, on the
   microtime grid (TR/16), following Gitelman et al. 2003 (NeuroImage 19:200): the neural
   signal is a combination of the first ``n_volumes`` discrete cosine (DCT-II) functions;
   convolved with the canonical (Glover) HRF and sampled at the acquisition times they must
   explain the BOLD. The coefficients are a ridge (Tikhonov) solution whose penalty is chosen
   by generalized cross-validation over a log grid — the prior that keeps the problem
   well-posed with as many basis functions as scans.
2. **Interaction terms**, one per condition: the neural estimate times the condition's 0/1
   boxcar, convolved with the HRF and sampled like the data (not mean-centred: the gPPI
   formulation, where every condition has its own term and the task regressors stay in).
3. **GLM** of every other ROI on [task regressors, seed BOLD, interaction terms, constant],
   all cleaned of the run's confounds like the signals. The beta of a condition's
   interaction term is the context-dependent change in coupling seed → target.

Contrasts are the conditions themselves (e.g. ``emotional``) and the task's activation
contrasts applied to the interaction terms (e.g. ``emotional_vs_neutral``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import pandas as pd

from kp_assets.science.activation import clean_design, fit_roi_glm

MICROTIME_BINS = 16
RIDGE_GRID = np.logspace(-4, 2, 25)  # penalties relative to mean eigenvalue of WᵀW


def microtime_hrf(tr: float, length_s: float = 32.0) -> np.ndarray:
    """Glover HRF sampled at TR/16, peak-normalised (unit-free kernel)."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    kernel = glover_hrf(tr, oversampling=MICROTIME_BINS, time_length=length_s)
    return kernel / kernel.max()


def dct_basis(n_micro: int, n_basis: int) -> np.ndarray:
    """DCT-II basis (n_micro × n_basis), column 0 constant, orthonormal columns."""
    n = np.arange(n_micro)[:, None]
    k = np.arange(n_basis)[None, :]
    basis = np.cos(np.pi * (2 * n + 1) * k / (2 * n_micro)) * np.sqrt(2.0 / n_micro)
    basis[:, 0] /= np.sqrt(2.0)
    return basis


def sample_indices(n_volumes: int, slice_time_ref: float) -> np.ndarray:
    """Microtime bin (0-based) of each volume's acquisition time."""
    offset = min(int(round(slice_time_ref * MICROTIME_BINS)), MICROTIME_BINS - 1)
    return np.arange(n_volumes) * MICROTIME_BINS + offset


def convolve_sample(micro: np.ndarray, hrf: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Causal convolution of microtime signals (n_micro, …) with ``hrf``, sampled."""
    from scipy.signal import fftconvolve

    kernel = hrf.reshape(-1, *([1] * (micro.ndim - 1)))
    return fftconvolve(micro, kernel, axes=0)[: micro.shape[0]][samples]


@lru_cache(maxsize=16)
def _forward_operator(n_volumes: int, tr: float, slice_time_ref: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """DCT basis at microtime and its HRF-convolved samples (n_volumes × n_volumes)."""
    basis = dct_basis(n_volumes * MICROTIME_BINS, n_volumes)
    forward = convolve_sample(basis, microtime_hrf(tr), sample_indices(n_volumes, slice_time_ref))
    return basis, forward


@lru_cache(maxsize=16)
def _ridge_operator(n_volumes: int, tr: float, slice_time_ref: float, kept: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD (u, s, vt) of the forward operator restricted to the kept volumes."""
    _, forward = _forward_operator(n_volumes, tr, slice_time_ref)
    return np.linalg.svd(forward[list(kept)], full_matrices=False)


def deconvolve(
    bold: np.ndarray, kept: np.ndarray, n_volumes: int, tr: float, slice_time_ref: float = 0.0
) -> np.ndarray:
    """Neural signal estimate (n_volumes·16,) from a seed's BOLD at the kept volumes.

    ``bold``: (len(kept),) cleaned seed signal; ``kept``: indices of those volumes.
    """
    basis, _ = _forward_operator(n_volumes, float(tr), float(slice_time_ref))
    u, s, vt = _ridge_operator(n_volumes, float(tr), float(slice_time_ref),
                               tuple(int(k) for k in kept))
    y = bold - bold.mean()
    uty = u.T @ y
    # ridge penalty chosen by generalized cross-validation
    scale = np.mean(s**2)
    best, best_gcv = RIDGE_GRID[0] * scale, np.inf
    for lam in RIDGE_GRID * scale:
        shrink = s**2 / (s**2 + lam)
        residual = np.sum((y - u @ (shrink * uty)) ** 2)
        gcv = len(y) * residual / (len(y) - shrink.sum()) ** 2
        if gcv < best_gcv:
            best, best_gcv = lam, gcv
    return basis @ (vt.T @ (s / (s**2 + best) * uty))


def condition_boxcars(events: pd.DataFrame, n_volumes: int, tr: float) -> pd.DataFrame:
    """0/1 boxcar per condition on the microtime grid (n_volumes·16 × conditions)."""
    dt = tr / MICROTIME_BINS
    n_micro = n_volumes * MICROTIME_BINS
    boxcars = {}
    for condition, group in events.groupby("trial_type", sort=True):
        u = np.zeros(n_micro)
        for onset, duration in group[["onset", "duration"]].to_numpy(float):
            start = min(max(int(round(onset / dt)), 0), n_micro)
            stop = min(max(start + 1, int(round((onset + duration) / dt))), n_micro)
            u[start:stop] = 1.0
        boxcars[str(condition)] = u
    return pd.DataFrame(boxcars)


def fit_gppi(
    signals: pd.DataFrame,
    task_regressors: pd.DataFrame,
    events: pd.DataFrame,
    confounds: pd.DataFrame,
    kept: np.ndarray,
    n_volumes: int,
    tr: float,
    slice_time_ref: float,
    contrasts: Mapping[str, Mapping[str, float]],
) -> pd.DataFrame:
    """gPPI for every ordered seed → target pair of ROIs.

    ``signals``: cleaned ROI signals (kept volumes × ROIs); ``task_regressors``: cleaned task
    regressors for the same rows (from :func:`activation.clean_design`, with constant);
    ``events``: onset, duration, trial_type (the task's conditions); ``confounds``/``kept``:
    what cleaned the signals. Returns rows seed, target, contrast, beta, se, t — contrasts
    are every condition plus ``contrasts`` over the interaction terms.
    """
    boxcars = condition_boxcars(events, n_volumes, tr)
    hrf = microtime_hrf(tr)
    samples = sample_indices(n_volumes, slice_time_ref)
    all_contrasts = {c: {c: 1.0} for c in boxcars.columns} | dict(contrasts)
    tables = []
    for seed in signals.columns:
        neural = deconvolve(signals[seed].to_numpy(float), kept, n_volumes, tr, slice_time_ref)
        ppi = pd.DataFrame(convolve_sample(boxcars.to_numpy() * neural[:, None], hrf, samples),
                           columns=[f"ppi:{c}" for c in boxcars.columns])
        ppi = clean_design(ppi, confounds, kept, tr).drop(columns="constant")
        design = pd.concat(
            [task_regressors.drop(columns="constant"),
             signals[[seed]].rename(columns={seed: "seed"}),
             ppi.set_index(task_regressors.index),
             task_regressors[["constant"]]], axis=1)
        interaction = {name: {f"ppi:{c}": w for c, w in weights.items()}
                       for name, weights in all_contrasts.items()
                       if all(f"ppi:{c}" in design.columns for c in weights)}
        targets = signals.drop(columns=seed)
        table = fit_roi_glm(targets, design, interaction)
        tables.append(table.rename(columns={"roi": "target"}).assign(seed=seed))
    result = pd.concat(tables, ignore_index=True)
    return result[["seed", "target", "contrast", "beta", "se", "t"]]
