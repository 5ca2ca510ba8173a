"""Participant- and region-specific hemodynamics of the simulated study.

Every region's BOLD is made by the balloon and observation model of :mod:`kp_science.balloon`
with its own parameters, never by the canonical (Glover) HRF the estimators assume
(issue 17: a simulator that shares the estimator's HRF commits an "inverse crime").

Parameters. Per participant × session × region, the log-scaled ``transit``, ``decay`` and
``epsilon`` of the balloon model (0 = the DCM prior mean, so τ = 2 s, κ = 0.64 /s, ε = 1)
are drawn with log-scale SDs :data:`HEMODYNAMIC_SD` (truth rows ``hemodynamics.transit[dacc]``
etc.):

- transit 0.25 and decay 0.19: the coefficients of variation of transit time (0.98 s,
  variance 0.0568 s²) and signal decay (0.65 /s, variance 0.015) across voxels estimated by
  Friston et al. 2000 (NeuroImage 12:466), SPM's empirical hemodynamic priors
  (spm_hdm_priors). They give a time to peak of 4.6 ± 0.5 s (95 % within 3.6–5.6 s) and
  undershoots from none to ≈ 0.2 of the peak, in line with the between-participant spread of
  time to peak (≈ 0.5 s) reported by Aguirre et al. 1998 (NeuroImage 8:360) and Handwerker
  et al. 2004 (NeuroImage 21:1639). (nilearn's Glover HRF: peak 5.1 s, undershoot 0.26.)
- epsilon 0.25: no population estimate exists (the intra/extravascular signal ratio depends
  on field strength and vessel composition, Stephan et al. 2007, NeuroImage 38:387); we use
  the transit spread. SPM12's prior SD of 1/16 on all three (variance 1/256) is a shrinkage
  prior for estimation, not a population spread, so it would understate real variability.

Handwerker et al. found hemodynamics vary more between participants than between regions of
one participant, so :data:`PARTICIPANT_SHARE` of each parameter's variance is a component
shared by a participant's regions and the rest is region-specific. Post-treatment values are
the pre values plus test–retest noise (:data:`kp_science.simulator.effects.RETEST_SD` of the
SD), as for every non-headline parameter.

Responses. The DCM regions (amygdala, vmPFC) integrate the full nonlinear balloon equations
driven by their neural states (:mod:`.neural`), with their own transit, decay and epsilon.
Everywhere else — regions outside the DCM, task responses, fluctuations, the planted gPPI —
the region's response is its first-order (small-signal) balloon kernel
(:func:`kp_science.balloon.first_order_kernel`), scaled so that its peak equals the peak of
nilearn's Glover HRF on the same grid. We chose the kernel over integrating the nonlinear
equations for every region because (i) it keeps a planted amplitude's meaning exactly (below)
where the nonlinear model saturates (a 20 s block response peaking at 0.6 % / 1.1 % signal is
5 % / 10 % below the linear one, so the response would no longer scale with the amplitude);
(ii) the responses outside the DCM are small (mostly below 1 % signal), where the kernel is
the balloon model's response to within those few per cent; and (iii) a convolution costs
microseconds, where integrating six regions on the microtime grid for every run would
roughly double the region-level simulation's time. The kernel differs from the Glover HRF in
shape (time to peak, width, a smaller undershoot; correlation 0.8–0.97), which is
the misspecification the estimators face with real data.

Scale. A planted amplitude a means: a brief event's response peaks where the canonical model
of amplitude a peaks (kernel peak = Glover peak), so what differs between the simulated
response and the estimator's regressor is its shape — time to peak, width, undershoot — not
its units. (The first version scaled kernels to unit area, the plateau of a sustained block;
since the Glover HRF's deep undershoot (0.26 of its peak) makes its positive lobe about twice
its net area and the balloon kernels' shallow one barely more than it, a 1 s event then peaked
at ≈ 0.6 × the canonical one, and a canonical GLM estimated ≈ 0.63–0.70 × the planted
amplitude: a change of units on top of the misspecification.) Measured over 12 participants ×
6 regions (5th, 50th, 95th percentile): a 1 s event peaks at 0.96, 1.00, 1.02 × the canonical
one (sampled at the scans), a 20 s block at 1.05, 1.14, 1.40 ×, and a sustained block
plateaus at 1.5, 1.7, 2.2 × (the kernels' net area is larger: a smaller undershoot). A
canonical GLM estimates 0.98, 1.08, 1.27 × the amplitude of 20 s blocks and 0.31, 0.55, 0.74 ×
that of isolated 1 s events 12 s apart (the kernels are narrower and earlier): the bias and
the participant-to-participant spread the canonical model has with real hemodynamics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
from scipy.signal import fftconvolve

from kp_science.balloon import first_order_kernel
from kp_science.rois import ROI_NAMES
from kp_science.simulator.design import MICROTIME_BINS

# log-scale SD across participants and regions (see the module docstring for the sources)
HEMODYNAMIC_SD = {"transit": 0.25, "decay": 0.19, "epsilon": 0.25}
PARTICIPANT_SHARE = 0.6  # share of that variance common to a participant's regions
KERNEL_LENGTH_S = 40.0  # long enough for the slowest kernels (τ up to ≈ 4 s) to settle


def parameter_name(kind: str, region: str) -> str:
    """Truth parameter name, e.g. ``hemodynamics.transit[dacc]``."""
    return f"hemodynamics.{kind}[{region}]"


def parameter_names() -> list[str]:
    """Every hemodynamic truth parameter: kind-major, regions in ROI_NAMES order."""
    return [parameter_name(kind, region) for kind in HEMODYNAMIC_SD for region in ROI_NAMES]


def parameter_sd(name: str) -> float:
    """Total log-scale SD of a ``hemodynamics.*`` parameter."""
    return HEMODYNAMIC_SD[name.removeprefix("hemodynamics.").split("[")[0]]


def draw_hemodynamics(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pre-treatment log-scaled transit, decay and epsilon of every region, (n,) each: a
    participant component shared by the regions plus a region-specific one."""
    values = {}
    for kind, sd in HEMODYNAMIC_SD.items():
        shared = sd * np.sqrt(PARTICIPANT_SHARE) * rng.standard_normal(n)
        for region in ROI_NAMES:
            own = sd * np.sqrt(1.0 - PARTICIPANT_SHARE) * rng.standard_normal(n)
            values[parameter_name(kind, region)] = shared + own
    return values


def hemodynamic_values(values: Mapping[str, float], regions: Sequence[str]) -> np.ndarray:
    """(3, len(regions)) log-scaled transit, decay, epsilon of one session's regions."""
    return np.array([[values[parameter_name(kind, r)] for r in regions] for kind in HEMODYNAMIC_SD])


@lru_cache(maxsize=8)
def glover_peak(tr: float) -> float:
    """Peak of nilearn's Glover HRF on the microtime grid (TR/16), normalised like nilearn's
    (its samples sum to 1): the height every region's kernel is scaled to."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    return float(glover_hrf(tr, oversampling=MICROTIME_BINS, time_length=32.0).max())


@lru_cache(maxsize=256)  # a session's three runs share their kernels
def peak_matched_kernel(transit: float, decay: float, epsilon: float, tr: float) -> np.ndarray:
    """First-order balloon kernel on the microtime grid (TR/16), scaled so that its peak is
    the Glover HRF's (:func:`glover_peak`; module docstring, "Scale").

    Returns a read-only array (it is cached) of shape (KERNEL_LENGTH_S·16/TR,).
    """
    kernel = first_order_kernel(
        transit, decay, epsilon, tr / MICROTIME_BINS, length=KERNEL_LENGTH_S
    )
    kernel = kernel * (glover_peak(tr) / kernel.max())
    kernel.setflags(write=False)
    return kernel


def region_kernels(values: Mapping[str, float], tr: float) -> dict[str, np.ndarray]:
    """Peak-matched kernel of every ROI (ROI → (KERNEL_LENGTH_S·16/TR,)) for one session."""
    transit, decay, epsilon = hemodynamic_values(values, ROI_NAMES)
    return {
        region: peak_matched_kernel(float(transit[i]), float(decay[i]), float(epsilon[i]), tr)
        for i, region in enumerate(ROI_NAMES)
    }


def frame_samples(n_volumes: int) -> np.ndarray:
    """Microtime indices of the scans: mid-TR (bin 8 of 16), the slice-timing reference."""
    return np.arange(n_volumes) * MICROTIME_BINS + MICROTIME_BINS // 2


def convolve_at_frames(micro: np.ndarray, kernel: np.ndarray, n_volumes: int) -> np.ndarray:
    """(n_volumes,) samples at mid-TR of the microtime signal ``micro`` (n_volumes·16,)
    convolved with ``kernel``."""
    return fftconvolve(micro, kernel)[: len(micro)][frame_samples(n_volumes)]
