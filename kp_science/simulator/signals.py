"""Region-level signals (percent signal change) of each simulated run.

Every region's BOLD comes from its own balloon model (:mod:`.hemodynamics`): the DCM regions
through the nonlinear equations (:mod:`.neural`), every other response through the region's
peak-matched first-order balloon kernel (``kernels``: ROI → kernel on the microtime grid) —
never through the canonical HRF the estimators assume.

- faces: amygdala and vmPFC come from the DCM (integrated in :mod:`.neural`, inputs: all faces
  drive the amygdala, emotional faces modulate both connections); the other regions respond
  to face blocks through their kernels. Every region also carries correlated fluctuations.
  On top, the planted gPPI coupling: vmPFC carries an endogenous neural fluctuation n(t)
  (seen through vmPFC's kernel) and the amygdala receives h_amygdala * (κ · emotional(t) ·
  n(t)), a neural-level psychophysiological interaction with κ =
  ``faces.gppi.vmpfc->amygdala.emotional`` (% amygdala signal per % vmPFC fluctuation during
  emotional blocks).
- conflict: the dACC responds to every trial, more to incongruent trials (monitoring) and
  differently to incongruent trials after incongruent ones (regulation, iI − cI); other
  regions respond weakly to trials.
- rest: correlated fluctuations only, with the planted vmPFC–anterior-insula correlation.

Amplitudes are % signal per unit canonical regressor at the peak of a brief event's response:
every kernel peaks where the Glover HRF does (:mod:`.hemodynamics`, "Scale"), so responses
differ from the canonical model in shape, not in units.

Fluctuations are correlated neural noise seen through each region's kernel, then minimally
re-mixed (a symmetric square-root correction, close to the identity) so that their *sample*
correlation across regions equals the requested matrix exactly: a planted correlation is the
correlation actually present in the run's region signals before voxel noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from kp_science.balloon import DCMParameters
from kp_science.rois import ROI_NAMES
from kp_science.simulator.design import MICROTIME_BINS, event_train, stimulus_function
from kp_science.simulator.hemodynamics import (
    convolve_at_frames,
    frame_samples,
    hemodynamic_values,
)

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
# activation amplitudes (% signal per unit canonical regressor, matched at the peak of a brief
# event's response) of regions outside the DCM
FACES_RESPONSE = {"racc": 0.3, "dacc": 0.2, "hippocampus_ant": 0.2, "insula_ant": 0.4}
CONFLICT_RESPONSE = {
    "racc": 0.5,
    "insula_ant": 0.8,
    "hippocampus_ant": 0.25,
    "amygdala": 0.25,
    "vmpfc": 0.25,
}
# dACC amplitude for congruent trials (a 1 s trial peaks at ≈ 0.33 × this, through the regions'
# kernels as through the Glover HRF)
DACC_CONGRUENT = 1.2


def region_correlation(vmpfc_insula: float) -> np.ndarray:
    """Correlation matrix over ROI_NAMES with the given vmPFC–anterior-insula value."""
    corr = np.full((len(ROI_NAMES), len(ROI_NAMES)), BASE_CORRELATION)
    np.fill_diagonal(corr, 1.0)
    index = {name: i for i, name in enumerate(ROI_NAMES)}
    for (a, b), value in {**PAIR_CORRELATIONS, ("vmpfc", "insula_ant"): vmpfc_insula}.items():
        corr[index[a], index[b]] = corr[index[b], index[a]] = value
    return corr


def _symmetric_power(matrix: np.ndarray, power: float) -> np.ndarray:
    """matrix**power of a symmetric positive definite matrix (eigen-decomposition)."""
    eigenvalues, vectors = np.linalg.eigh(matrix)
    return (vectors * eigenvalues**power) @ vectors.T


def correlated_fluctuations(
    n_volumes: int,
    tr: float,
    corr: np.ndarray,
    sd: float,
    kernels: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """(n_volumes, k) fluctuations over ROI_NAMES with sample correlation exactly ``corr``.

    White neural noise on the microtime grid, correlated by ``corr``, is seen through each
    region's kernel; the result is standardised and multiplied by R⁻¹ᐟ²·corr¹ᐟ² (R: its sample
    correlation), the symmetric correction that imposes ``corr`` exactly while staying close
    to the identity, so each region's fluctuation remains its own kernel's response.
    """
    k = corr.shape[0]
    n_micro = n_volumes * MICROTIME_BINS
    lead = max(len(kernel) for kernel in kernels.values())  # settle the filters before t = 0
    neural = rng.standard_normal((lead + n_micro, k)) @ _symmetric_power(corr, 0.5)
    samples = lead + frame_samples(n_volumes)
    bold = np.column_stack(
        [
            np.convolve(neural[:, j], kernels[name])[: lead + n_micro][samples]
            for j, name in enumerate(ROI_NAMES)
        ]
    )
    bold = (bold - bold.mean(0)) / bold.std(0)
    sample_corr = np.corrcoef(bold.T)
    return sd * bold @ _symmetric_power(sample_corr, -0.5) @ _symmetric_power(corr, 0.5)


def frame_times(n_volumes: int, tr: float) -> np.ndarray:
    """Acquisition times (s) of the volumes, referenced to mid-TR (slice-timing corrected)."""
    return np.arange(n_volumes) * tr + tr / 2


def kernel_regressor(
    onsets: np.ndarray,
    durations: np.ndarray,
    amplitudes: np.ndarray,
    kernel: np.ndarray,
    n_volumes: int,
    tr: float,
) -> np.ndarray:
    """(n_volumes,) response at mid-TR to events of the given amplitudes through a region's
    peak-matched kernel (the counterpart of a Glover-convolved regressor)."""
    train = event_train(onsets, durations, amplitudes, n_volumes, tr)
    return convolve_at_frames(train, kernel, n_volumes)


def dcm_hemodynamics(values: Mapping[str, float]) -> np.ndarray:
    """(3, 2) log-scaled transit, decay, epsilon of amygdala and vmPFC (the DCM's regions)."""
    return hemodynamic_values(values, DCM_REGIONS)


def dcm_parameters(values: Mapping[str, float]) -> DCMParameters:
    """The amygdala–vmPFC DCM of a session from its planted values (regions 0 = amygdala,
    1 = vmPFC; inputs 0 = faces, 1 = emotional).

    The DCM has one decay and one epsilon; the simulator's regions have their own
    (:func:`dcm_hemodynamics`, which :func:`~.neural.integrate_dcm` uses), so these two are
    the regions' means: the single-decay DCM closest to the generating one.
    """
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
    transit, decay, epsilon = dcm_hemodynamics(values)
    return DCMParameters(A, B, C, transit, float(decay.mean()), float(epsilon.mean()))


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
    events: pd.DataFrame,
    coupling: float,
    kernels: Mapping[str, np.ndarray],
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(vmPFC, amygdala) BOLD additions (n_volumes,) carrying the planted gPPI coupling, each
    seen through its region's kernel."""
    n_micro = n_volumes * MICROTIME_BINS
    # endogenous fluctuation: white noise smoothed over ~4 s (AR(1) at microtime)
    phi = np.exp(-tr / MICROTIME_BINS / 4.0)
    neural = np.asarray(lfilter([1.0], [1.0, -phi], rng.standard_normal(n_micro)))
    emotional = stimulus_function(
        events, events["trial_type"].eq("emotional").to_numpy(), n_volumes, tr
    )
    vmpfc = convolve_at_frames(neural, kernels["vmpfc"], n_volumes)
    scale = PPI_FLUCTUATION_SD / vmpfc.std()
    amygdala = coupling * convolve_at_frames(emotional * neural, kernels["amygdala"], n_volumes)
    return scale * vmpfc, scale * amygdala


def faces_signals(
    events: pd.DataFrame,
    dcm_bold: np.ndarray,
    values: dict[str, float],
    kernels: Mapping[str, np.ndarray],
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Region signals of a faces run; ``dcm_bold`` is (n_volumes, 2) from the DCM, ``kernels``
    the session's :func:`~.hemodynamics.region_kernels`."""
    fluct = correlated_fluctuations(
        n_volumes, tr, region_correlation(0.2), TASK_FLUCTUATION_SD, kernels, rng
    )
    onsets, durations = events["onset"].to_numpy(float), events["duration"].to_numpy(float)
    signals = {name: fluct[:, i] for i, name in enumerate(ROI_NAMES)}
    for name, amplitude in FACES_RESPONSE.items():
        signals[name] = signals[name] + kernel_regressor(
            onsets, durations, np.full(len(onsets), amplitude), kernels[name], n_volumes, tr
        )
    for i, name in enumerate(DCM_REGIONS):
        signals[name] = signals[name] + dcm_bold[:, i]
    vmpfc, amygdala = planted_ppi(
        events, values["faces.gppi.vmpfc->amygdala.emotional"], kernels, n_volumes, tr, rng
    )
    signals["vmpfc"] = signals["vmpfc"] + vmpfc
    signals["amygdala"] = signals["amygdala"] + amygdala
    return signals


def conflict_signals(
    events: pd.DataFrame,
    values: dict[str, float],
    kernels: Mapping[str, np.ndarray],
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Region signals of a conflict run with the planted dACC amplitudes.

    dACC trial amplitude: congruent ``DACC_CONGRUENT``; incongruent after congruent (cI)
    + monitoring; incongruent after incongruent (iI) + monitoring + regulation. So the
    iI − cI contrast is the planted regulation value.
    """
    fluct = correlated_fluctuations(
        n_volumes, tr, region_correlation(0.2), TASK_FLUCTUATION_SD, kernels, rng
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
    signals["dacc"] = signals["dacc"] + kernel_regressor(
        onsets, durations, dacc_amplitude, kernels["dacc"], n_volumes, tr
    )
    for name, amplitude in CONFLICT_RESPONSE.items():
        signals[name] = signals[name] + kernel_regressor(
            onsets, durations, amplitude * (1.0 + incongruent), kernels[name], n_volumes, tr
        )
    return signals


def rest_signals(
    values: dict[str, float],
    kernels: Mapping[str, np.ndarray],
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Region signals of a resting run with the planted vmPFC–anterior-insula correlation."""
    corr = region_correlation(values["rest.fc.vmpfc~insula_ant"])
    fluct = correlated_fluctuations(n_volumes, tr, corr, REST_FLUCTUATION_SD, kernels, rng)
    return {name: fluct[:, i] for i, name in enumerate(ROI_NAMES)}
