"""Region-level signals (percent signal change) of each simulated run.

- faces: amygdala and vmPFC come from the DCM (integrated in :mod:`.neural`, inputs: all faces
  drive the amygdala, emotional faces modulate both connections); the other regions respond
  to face blocks with the canonical HRF. Every region also carries correlated fluctuations.
  On top, the planted gPPI coupling: vmPFC carries an endogenous neural fluctuation n(t)
  (seen through the HRF) and the amygdala receives HRF * (κ · emotional(t) · n(t)), a
  neural-level psychophysiological interaction with κ = ``faces.gppi.vmpfc->amygdala.emotional``
  (% amygdala signal per % vmPFC fluctuation during emotional blocks).
- conflict: the dACC responds to every trial, more to incongruent trials (monitoring) and
  differently to incongruent trials after incongruent ones (regulation, iI − cI); other
  regions respond weakly to trials.
- rest: correlated fluctuations only, with the planted vmPFC–anterior-insula correlation.

Fluctuations are HRF-filtered Gaussian noise whose *sample* correlation across regions equals
the requested matrix exactly, so a planted correlation is the correlation actually present in
the run's region signals before voxel noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from nilearn.glm.first_level import compute_regressor

from kp_science.balloon import DCMParameters
from kp_science.rois import ROI_NAMES
from kp_science.simulator.design import MICROTIME_BINS, stimulus_function

DCM_REGIONS = ("amygdala", "vmpfc")
DCM_INPUTS = ("faces", "emotional")
REST_FLUCTUATION_SD = 1.5  # % signal, region level
# Task runs: endogenous activity the task does not explain. For amygdala and vmPFC it has
# three sources — these fluctuations, the neural drive below (through the DCM) and, in
# vmPFC, the PPI fluctuation — so each is kept modest: together with the ≈0.45 % noise left
# in a cleaned 4 mm ROI mean they leave ≈0.6 % (amygdala) and ≈1.1 % (vmPFC) of signal
# that no task model explains, against DCM task responses of ≈1.2 % and ≈1.1 % SD (median
# over sessions with the faces drive of effects.BASELINE).
# (First version: 0.3 % and 0.02 Hz.)
TASK_FLUCTUATION_SD = 0.2
NEURAL_NOISE_SD = 0.01  # Hz, endogenous drive to the DCM regions (smoothed over 1 s)
PPI_FLUCTUATION_SD = 1.0  # % signal, vmPFC's endogenous fluctuation carrying the planted PPI
BASE_CORRELATION = 0.2
PAIR_CORRELATIONS = {
    ("amygdala", "hippocampus_ant"): 0.4,
    ("dacc", "insula_ant"): 0.35,
    ("vmpfc", "racc"): 0.4,
}
# activation amplitudes (% signal per unit HRF-convolved regressor) of regions outside the DCM
FACES_RESPONSE = {"racc": 0.3, "dacc": 0.2, "hippocampus_ant": 0.2, "insula_ant": 0.4}
CONFLICT_RESPONSE = {
    "racc": 0.5,
    "insula_ant": 0.8,
    "hippocampus_ant": 0.25,
    "amygdala": 0.25,
    "vmpfc": 0.25,
}
DACC_CONGRUENT = 1.2  # dACC amplitude for congruent trials (a 1 s trial peaks at 0.33 × this)


def region_correlation(vmpfc_insula: float) -> np.ndarray:
    """Correlation matrix over ROI_NAMES with the given vmPFC–anterior-insula value."""
    corr = np.full((len(ROI_NAMES), len(ROI_NAMES)), BASE_CORRELATION)
    np.fill_diagonal(corr, 1.0)
    index = {name: i for i, name in enumerate(ROI_NAMES)}
    for (a, b), value in {**PAIR_CORRELATIONS, ("vmpfc", "insula_ant"): vmpfc_insula}.items():
        corr[index[a], index[b]] = corr[index[b], index[a]] = value
    return corr


def correlated_fluctuations(
    n_volumes: int, tr: float, corr: np.ndarray, sd: float, rng: np.random.Generator
) -> np.ndarray:
    """(n_volumes, k) HRF-filtered fluctuations with sample correlation exactly ``corr``."""
    k = corr.shape[0]
    hrf_times = np.arange(0, 32, tr)
    hrf = compute_regressor(
        (np.array([0.0]), np.array([tr]), np.array([1.0])), "glover", hrf_times
    )[0][:, 0]
    white = rng.standard_normal((n_volumes + len(hrf), k))
    filtered = np.stack(
        [np.convolve(white[:, j], hrf)[len(hrf) : len(hrf) + n_volumes] for j in range(k)], axis=1
    )
    filtered -= filtered.mean(0)
    # whiten the sample covariance, then impose the target correlation
    whitened = filtered @ np.linalg.inv(np.linalg.cholesky(np.cov(filtered.T, bias=True))).T
    return sd * whitened @ np.linalg.cholesky(corr).T


def frame_times(n_volumes: int, tr: float) -> np.ndarray:
    """Acquisition times (s) of the volumes, referenced to mid-TR (slice-timing corrected)."""
    return np.arange(n_volumes) * tr + tr / 2


def hrf_regressor(
    onsets: np.ndarray, durations: np.ndarray, amplitudes: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Glover-HRF convolved regressor at ``times`` (nilearn's definition)."""
    if len(onsets) == 0:
        return np.zeros(len(times))
    return compute_regressor(
        (onsets, durations, amplitudes), "glover", times, oversampling=MICROTIME_BINS
    )[0][:, 0]


def dcm_parameters(values: dict[str, float]) -> DCMParameters:
    """The amygdala–vmPFC DCM of a session from its planted values (regions 0 = amygdala,
    1 = vmPFC; inputs 0 = faces, 1 = emotional)."""
    A = np.array(
        [
            [values["dcm.A[amygdala->amygdala]"], values["dcm.A[vmpfc->amygdala]"]],
            [values["dcm.A[amygdala->vmpfc]"], values["dcm.A[vmpfc->vmpfc]"]],
        ]
    )
    B = np.zeros((2, 2, 2))
    B[1, 0, 1] = values["dcm.B[emotional][amygdala->vmpfc]"]
    B[0, 1, 1] = values["dcm.B[emotional][vmpfc->amygdala]"]
    C = np.zeros((2, 2))
    C[0, 0] = values["dcm.C[faces][amygdala]"]
    transit = np.array([values["dcm.transit[amygdala]"], values["dcm.transit[vmpfc]"]])
    return DCMParameters(A, B, C, transit, values["dcm.decay"], values["dcm.epsilon"])


def faces_inputs(events: pd.DataFrame, n_volumes: int, tr: float) -> np.ndarray:
    """DCM inputs (n_volumes·16, 2): all faces, emotional faces."""
    faces = stimulus_function(events, np.ones(len(events), bool), n_volumes, tr)
    emotional = stimulus_function(
        events, events["trial_type"].eq("emotional").to_numpy(), n_volumes, tr
    )
    return np.column_stack([faces, emotional])


def neural_noise(n_volumes: int, rng: np.random.Generator) -> np.ndarray:
    """Endogenous drive (n_volumes·16, 2) for the DCM regions: white noise averaged over 1 s."""
    n_micro = n_volumes * MICROTIME_BINS
    white = rng.standard_normal((n_micro + MICROTIME_BINS, len(DCM_REGIONS)))
    kernel = np.ones(MICROTIME_BINS // 2) / np.sqrt(MICROTIME_BINS // 2)
    smooth = np.stack([np.convolve(white[:, j], kernel, "same") for j in range(white.shape[1])], 1)
    return NEURAL_NOISE_SD * smooth[:n_micro]


def planted_ppi(
    events: pd.DataFrame, coupling: float, n_volumes: int, tr: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(vmPFC, amygdala) BOLD additions (n_volumes,) carrying the planted gPPI coupling."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf
    from scipy.signal import fftconvolve

    n_micro = n_volumes * MICROTIME_BINS
    # endogenous fluctuation: white noise smoothed over ~4 s (AR(1) at microtime)
    from scipy.signal import lfilter

    phi = np.exp(-tr / MICROTIME_BINS / 4.0)
    neural = lfilter([1.0], [1.0, -phi], rng.standard_normal(n_micro))
    emotional = stimulus_function(
        events, events["trial_type"].eq("emotional").to_numpy(), n_volumes, tr
    )
    hrf = glover_hrf(tr, oversampling=MICROTIME_BINS, time_length=32.0)
    samples = np.arange(n_volumes) * MICROTIME_BINS + MICROTIME_BINS // 2
    vmpfc = fftconvolve(neural, hrf)[:n_micro][samples]
    scale = PPI_FLUCTUATION_SD / vmpfc.std()
    amygdala = coupling * fftconvolve(emotional * neural, hrf)[:n_micro][samples]
    return scale * vmpfc, scale * amygdala


def faces_signals(
    events: pd.DataFrame,
    dcm_bold: np.ndarray,
    values: dict[str, float],
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Region signals of a faces run; ``dcm_bold`` is (n_volumes, 2) from the DCM."""
    times = frame_times(n_volumes, tr)
    fluct = correlated_fluctuations(
        n_volumes, tr, region_correlation(0.2), TASK_FLUCTUATION_SD, rng
    )
    onsets, durations = events["onset"].to_numpy(float), events["duration"].to_numpy(float)
    block = hrf_regressor(onsets, durations, np.ones(len(onsets)), times)
    signals = {name: fluct[:, i] for i, name in enumerate(ROI_NAMES)}
    for name, amplitude in FACES_RESPONSE.items():
        signals[name] = signals[name] + amplitude * block
    for i, name in enumerate(DCM_REGIONS):
        signals[name] = signals[name] + dcm_bold[:, i]
    vmpfc, amygdala = planted_ppi(
        events, values["faces.gppi.vmpfc->amygdala.emotional"], n_volumes, tr, rng
    )
    signals["vmpfc"] = signals["vmpfc"] + vmpfc
    signals["amygdala"] = signals["amygdala"] + amygdala
    return signals


def conflict_signals(
    events: pd.DataFrame,
    values: dict[str, float],
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Region signals of a conflict run with the planted dACC amplitudes.

    dACC trial amplitude: congruent ``DACC_CONGRUENT``; incongruent after congruent (cI)
    + monitoring; incongruent after incongruent (iI) + monitoring + regulation. So the
    iI − cI contrast is the planted regulation value.
    """
    times = frame_times(n_volumes, tr)
    fluct = correlated_fluctuations(
        n_volumes, tr, region_correlation(0.2), TASK_FLUCTUATION_SD, rng
    )
    onsets, durations = events["onset"].to_numpy(float), events["duration"].to_numpy(float)
    incongruent = events["trial_type"].eq("incongruent").to_numpy()
    after_incongruent = events["previous"].eq("incongruent").to_numpy()
    dacc_amplitude = (
        DACC_CONGRUENT
        + incongruent * values["conflict.activation.dacc.monitoring"]
        + (incongruent & after_incongruent) * values["conflict.activation.dacc.regulation"]
    )
    signals = {name: fluct[:, i] for i, name in enumerate(ROI_NAMES)}
    signals["dacc"] = signals["dacc"] + hrf_regressor(onsets, durations, dacc_amplitude, times)
    for name, amplitude in CONFLICT_RESPONSE.items():
        signals[name] = signals[name] + hrf_regressor(
            onsets, durations, amplitude * (1.0 + incongruent), times
        )
    return signals


def rest_signals(
    values: dict[str, float], n_volumes: int, tr: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Region signals of a resting run with the planted vmPFC–anterior-insula correlation."""
    corr = region_correlation(values["rest.fc.vmpfc~insula_ant"])
    fluct = correlated_fluctuations(n_volumes, tr, corr, REST_FLUCTUATION_SD, rng)
    return {name: fluct[:, i] for i, name in enumerate(ROI_NAMES)}
