"""Direct integration of the nonlinear DCM equations, the simulator's ground-truth generator.

The estimator linearises the system and integrates the bilinear approximation with matrix
exponentials (docs/dcm-model.md); here the full nonlinear neuronal + balloon equations are
advanced with classical fourth-order Runge–Kutta on the microtime grid, so fitting simulated
data is not an inverse crime. Each region may have its own decay and epsilon
(``hemodynamics``), which the estimator's DCM shares across regions. Endogenous neural
fluctuations (an additive input to each region) can be added so that regions carry activity
the task does not explain, as real ones do.

Many runs are integrated at once (a leading batch axis) because the cost is dominated by the
Python loop over microtime steps, not by the size of each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kp_science.balloon import (
    ALPHA,
    E0,
    GAMMA,
    KAPPA,
    TAU,
    DCMParameters,
    bold_signal,
)
from kp_science.simulator.design import MICROTIME_BINS


def integrate_dcm(
    params: Sequence[DCMParameters],
    inputs: np.ndarray,
    tr: float,
    neural_noise: np.ndarray | None = None,
    sample_bin: int = MICROTIME_BINS // 2,
    hemodynamics: np.ndarray | None = None,
) -> np.ndarray:
    """Simulate BOLD for a batch of DCMs sharing n regions, m inputs and the run length.

    Parameters
    ----------
    params : one DCMParameters per run (batch size b).
    inputs : (b, n_volumes·16, m) inputs on the microtime grid (dt = TR/16).
    tr : repetition time, s.
    neural_noise : optional (b, n_volumes·16, n) additive drive to dx/dt (Hz), constant
        within each microtime bin.
    sample_bin : microtime bin (1-based, SPM's default slice-timing delay of TR/2 is bin 8)
        at which each scan is read.
    hemodynamics : optional (b, 3, n) log-scaled transit, decay and epsilon of every region,
        used instead of the parameters' transit (n), decay and epsilon (shared by the regions).

    Returns
    -------
    (b, n_volumes, n) BOLD percent signal change.
    """
    b, n_micro, _ = inputs.shape
    A = np.stack([p.A for p in params])  # (b, n, n)
    B = np.stack([p.B for p in params])  # (b, n, n, m)
    C = np.stack([p.C for p in params]) / 16.0  # (b, n, m)
    n = A.shape[1]
    if hemodynamics is None:
        hemodynamics = np.stack(
            [np.stack([p.transit, np.full(n, p.decay), np.full(n, p.epsilon)]) for p in params]
        )
    tau = TAU * np.exp(hemodynamics[:, 0])  # (b, n)
    kappa = KAPPA * np.exp(hemodynamics[:, 1])
    epsilon = hemodynamics[:, 2]
    diag = np.arange(n)
    drive = np.zeros((b, n_micro, n)) if neural_noise is None else neural_noise
    dt = tr / MICROTIME_BINS

    def rhs(state: np.ndarray, coupling: np.ndarray, inflow: np.ndarray) -> np.ndarray:
        neural, s, lnf, lnv, lnq = state
        f, v, q = np.exp(lnf), np.exp(lnv), np.exp(lnq)
        fv = v ** (1.0 / ALPHA)
        extraction = 1.0 - (1.0 - E0) ** (1.0 / f)
        return np.stack(
            [
                np.einsum("bij,bj->bi", coupling, neural) + inflow,
                neural - kappa * s - GAMMA * (f - 1.0),
                s / f,
                (f - fv) / (tau * v),
                (f * extraction / E0 - fv * q / v) / (tau * q),
            ]
        )

    x = np.zeros((5, b, n))
    samples = np.empty((n_micro // MICROTIME_BINS, 5, b, n))
    last_u = None
    for i in range(n_micro):
        if (i - sample_bin + 1) % MICROTIME_BINS == 0:
            samples[(i - sample_bin + 1) // MICROTIME_BINS] = x
        u = inputs[:, i]
        if last_u is None or not np.array_equal(u, last_u):
            # rebuild the coupling only when an input changes
            coupling = A + np.einsum("bijk,bk->bij", B, u)
            coupling[:, diag, diag] = -0.5 * np.exp(coupling[:, diag, diag])
            base_inflow = np.einsum("bik,bk->bi", C, u)
            last_u = u
        inflow = base_inflow + drive[:, i]
        k1 = rhs(x, coupling, inflow)
        k2 = rhs(x + 0.5 * dt * k1, coupling, inflow)
        k3 = rhs(x + 0.5 * dt * k2, coupling, inflow)
        k4 = rhs(x + dt * k3, coupling, inflow)
        x = x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    # samples: (T, 5, b, n) -> observation per (T, b, n)
    bold = bold_signal(np.moveaxis(samples, 1, 0), epsilon[None])
    return np.moveaxis(bold, 1, 0)
