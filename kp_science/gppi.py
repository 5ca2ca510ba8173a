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
3. **GLM** of every other ROI on [task regressors, confounds, seed BOLD, interaction terms,
   constant], the regressors cleaned of the run's confounds like the signals and the
   confounds in the design as the activation model has them
   (:func:`activation.clean_design`). The beta of a condition's interaction term is the
   context-dependent change in coupling seed → target. The model is
   :func:`activation.fit_roi_glm`'s (nilearn ``run_glm`` AR(1) semantics, fitted for all
   seeds at once: one design per seed, :mod:`.glm`), so each seed's fit equals nilearn's
   ``FirstLevelModel`` given that design with the raw regressors and confounds
   (``design_matrices=``) and ``sample_masks=`` the kept volumes (tested to 1e-6 relative in
   betas, SEs and t): the confounds are whitened with the rest (cleaning alone is equivalent
   for OLS only), and the dispersion's degrees of freedom are the kept volumes minus every
   design column, confounds included.

Contrasts are the conditions themselves (e.g. ``emotional``) and the task's activation
contrasts applied to the interaction terms (e.g. ``emotional_vs_neutral``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import pandas as pd

from kp_science.activation import confound_count, contrast_matrix
from kp_science.glm import TContrasts, fit_ar1_glm, t_contrasts
from kp_science.roi_signals import confound_basis, regress_out

MICROTIME_BINS = 16
RIDGE_GRID = np.logspace(-4, 2, 25)  # penalties relative to mean eigenvalue of WᵀW


def microtime_hrf(tr: float, length_s: float = 32.0) -> np.ndarray:
    """Glover HRF sampled at TR/16, peak-normalised (unit-free kernel)."""
    return _microtime_hrf(float(tr), float(length_s)).copy()


@lru_cache(maxsize=16)
def _microtime_hrf(tr: float, length_s: float) -> np.ndarray:
    """:func:`microtime_hrf`, computed once per TR (read-only: shared by every caller)."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    kernel = glover_hrf(tr, oversampling=MICROTIME_BINS, time_length=length_s)
    kernel = kernel / kernel.max()
    kernel.flags.writeable = False
    return kernel


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
def _forward_operator(
    n_volumes: int, tr: float, slice_time_ref: float
) -> tuple[np.ndarray, np.ndarray]:
    """DCT basis at microtime and its HRF-convolved samples (n_volumes × n_volumes)."""
    basis = dct_basis(n_volumes * MICROTIME_BINS, n_volumes)
    forward = convolve_sample(basis, microtime_hrf(tr), sample_indices(n_volumes, slice_time_ref))
    return basis, forward


@lru_cache(maxsize=16)
def _ridge_operator(
    n_volumes: int, tr: float, slice_time_ref: float, kept: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD (u, s, vt) of the forward operator restricted to the kept volumes."""
    _, forward = _forward_operator(n_volumes, tr, slice_time_ref)
    return np.linalg.svd(forward[list(kept)], full_matrices=False)


def deconvolve(
    bold: np.ndarray, kept: np.ndarray, n_volumes: int, tr: float, slice_time_ref: float = 0.0
) -> np.ndarray:
    """Neural signal estimate (n_volumes·16,) from a seed's BOLD at the kept volumes.

    ``bold``: (len(kept),) cleaned seed signal, or (len(kept), seeds) for several seeds at
    once (result (n_volumes·16, seeds)); ``kept``: indices of those volumes.
    """
    basis, _ = _forward_operator(n_volumes, float(tr), float(slice_time_ref))
    u, s, vt = _ridge_operator(
        n_volumes, float(tr), float(slice_time_ref), tuple(np.asarray(kept, int).tolist())
    )
    y = np.asarray(bold, float)
    y = (y - y.mean(axis=0)).reshape(len(y), -1)  # (n_kept, seeds)
    uty = u.T @ y
    # ridge penalty chosen by generalized cross-validation, per seed, over the whole grid
    penalties = RIDGE_GRID * np.mean(s**2)
    shrink = s**2 / (s**2 + penalties[:, None])  # (penalties, components)
    # ‖y − U·diag(shrink)·Uᵀy‖² = ‖y − UUᵀy‖² + ‖(1 − shrink)·Uᵀy‖² (U orthonormal)
    outside = np.sum((y - u @ uty) ** 2, axis=0)
    residual = outside + np.einsum("lr,rs->ls", (1.0 - shrink) ** 2, uty**2)
    gcv = len(y) * residual / ((len(y) - shrink.sum(axis=1)) ** 2)[:, None]  # (penalties, seeds)
    gcv = np.where(np.isnan(gcv), np.inf, gcv)  # an undefined score never wins
    best = penalties[np.argmin(gcv, axis=0)]  # first minimum, as a strict-< scan finds it
    neural = basis @ (vt.T @ (s[:, None] / (s[:, None] ** 2 + best) * uty))
    return neural if np.ndim(bold) > 1 else neural[:, 0]


def boxcar_matrix(events: pd.DataFrame, n_volumes: int, tr: float) -> tuple[list[str], np.ndarray]:
    """Condition names (sorted) and their 0/1 boxcars on the microtime grid
    (n_volumes·16 × conditions): 1 from the bin nearest the onset to the bin nearest the
    offset (at least one bin), overlapping events merged; untyped events are ignored."""
    dt = tr / MICROTIME_BINS
    n_micro = n_volumes * MICROTIME_BINS
    kinds = events["trial_type"].to_numpy(object)
    valid = ~pd.isna(kinds)
    kinds = kinds[valid]
    onsets = events["onset"].to_numpy(float)[valid]
    offsets = onsets + events["duration"].to_numpy(float)[valid]
    names = sorted(set(kinds))
    column = np.searchsorted(np.array(names, dtype=object), kinds)
    start = np.clip(np.rint(onsets / dt).astype(int), 0, n_micro)
    stop = np.clip(np.maximum(start + 1, np.rint(offsets / dt).astype(int)), 0, n_micro)
    # +1 at each start, −1 at each stop: the running count is > 0 inside any event
    steps = np.zeros((n_micro + 1, len(names)))
    np.add.at(steps, (start, column), 1.0)
    np.add.at(steps, (stop, column), -1.0)
    boxcars = (np.cumsum(steps[:-1], axis=0) > 0).astype(float)
    return [str(n) for n in names], boxcars


def condition_boxcars(events: pd.DataFrame, n_volumes: int, tr: float) -> pd.DataFrame:
    """0/1 boxcar per condition on the microtime grid (n_volumes·16 × conditions)."""
    names, boxcars = boxcar_matrix(events, n_volumes, tr)
    return pd.DataFrame(boxcars, columns=names)


def seed_designs(task: np.ndarray, bold: np.ndarray, ppi: np.ndarray) -> np.ndarray:
    """One design per seed (seeds × n_kept × regressors): [task regressors and confounds,
    seed BOLD, interaction terms, constant]. ``task`` (n_kept × columns): the activation
    design without its constant; ``bold`` (n_kept × seeds), ``ppi`` (n_kept × seeds ×
    conditions)."""
    n_kept, n_seeds = bold.shape
    return np.concatenate(
        [
            np.broadcast_to(task, (n_seeds, *task.shape)),
            bold.T[:, :, None],
            np.moveaxis(ppi, 1, 0),
            np.ones((n_seeds, n_kept, 1)),
        ],
        axis=2,
    )


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

    ``signals``: cleaned ROI signals (kept volumes × ROIs); ``task_regressors``: the
    activation design for the same rows (:func:`activation.clean_design`: cleaned task
    regressors, the confounds' columns, a constant), whose columns but the constant enter
    every seed's design; ``events``: onset, duration, trial_type (the task's conditions);
    ``confounds``/``kept``: what cleaned the signals (ValueError if ``task_regressors`` does
    not carry as many confound columns). Returns rows seed, target, contrast, beta, se, t —
    contrasts are every condition plus ``contrasts`` over the interaction terms.
    """
    rois = list(signals.columns)
    bold = signals.to_numpy(float)
    if len(bold) != len(task_regressors):
        raise ValueError(f"{len(bold)} signal rows but {len(task_regressors)} design rows")
    if confound_count(task_regressors) != confounds.shape[1]:
        raise ValueError(
            f"task_regressors has {confound_count(task_regressors)} confound columns for "
            f"{confounds.shape[1]} confounds: use activation.clean_design"
        )
    conditions, boxcars = boxcar_matrix(events, n_volumes, tr)
    neural = deconvolve(bold, kept, n_volumes, tr, slice_time_ref)  # (n_micro, seeds)
    hrf = _microtime_hrf(float(tr), 32.0)
    ppi = convolve_sample(
        boxcars[:, None, :] * neural[:, :, None], hrf, sample_indices(n_volumes, slice_time_ref)
    )  # (n_volumes, seeds, cond)
    # cleaned like the other regressors: no change to any beta (the confounds are in the
    # design), but the design's columns stay near orthogonal blocks
    basis = confound_basis(confounds.to_numpy(float), kept)
    ppi = regress_out(ppi.reshape(n_volumes, -1), basis, kept).reshape(len(bold), len(rois), -1)
    regressor_names = list(task_regressors.columns)
    if "constant" not in regressor_names:
        raise KeyError("task_regressors has no 'constant' column")
    task_index = [i for i, c in enumerate(regressor_names) if c != "constant"]
    task_columns = [regressor_names[i] for i in task_index]
    designs = seed_designs(task_regressors.to_numpy(float)[:, task_index], bold, ppi)
    # targets of seed i: every other ROI, in column order
    others = np.array(
        [[j for j in range(len(rois)) if j != i] for i in range(len(rois))], dtype=int
    ).reshape(len(rois), -1)
    columns = [*task_columns, "seed", *(f"ppi:{c}" for c in conditions), "constant"]
    all_contrasts = {c: {c: 1.0} for c in conditions} | dict(contrasts)
    names, vectors = contrast_matrix(
        columns,
        {
            name: {f"ppi:{c}": w for c, w in weights.items()}
            for name, weights in all_contrasts.items()
        },
    )
    if others.size == 0:  # a single ROI: no pairs
        empty = np.zeros((len(rois), 0, len(names)))
        return gppi_table(rois, names, others, TContrasts(empty, empty, empty))
    fit = fit_ar1_glm(np.moveaxis(bold[:, others], 1, 0), designs)  # (seeds, targets, …)
    return gppi_table(rois, names, others, t_contrasts(fit, vectors))


def gppi_table(
    rois: list, names: list[str], others: np.ndarray, result: TContrasts
) -> pd.DataFrame:
    """Rows seed-major, then contrast, then target; ``result`` arrays are (seeds × targets ×
    contrasts) and ``others[i]`` holds the ROI indices of seed i's targets."""
    n_seeds, n_targets = others.shape
    rois_array = np.asarray(rois, dtype=object)

    def flat(values: np.ndarray) -> np.ndarray:
        return np.swapaxes(values, 1, 2).ravel()

    return pd.DataFrame(
        {
            "seed": np.repeat(rois_array, len(names) * n_targets),
            "target": rois_array[np.repeat(others[:, None, :], len(names), axis=1)].ravel(),
            "contrast": np.tile(np.repeat(np.asarray(names, dtype=object), n_targets), n_seeds),
            "beta": flat(result.effect),
            "se": flat(result.se),
            "t": flat(result.t),
        }
    )
