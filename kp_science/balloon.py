"""Neuronal and hemodynamic equations of one-state bilinear DCM for fMRI.

The equations are those of Friston et al. 2003 (NeuroImage 19:1273) with the balloon model of
Buxton et al. 1998 and the observation model of Stephan et al. 2007 (NeuroImage 38:387), in
the parameterisation described in docs/dcm-model.md (log-scaled self-connections,
C divided by 16, log hemodynamic states). Shared by the study simulator, which integrates
them directly, and the DCM estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KAPPA = 0.64  # rate of signal decay, 1/s
GAMMA = 0.32  # rate of flow-dependent elimination, 1/s
TAU = 2.00  # haemodynamic transit time, s
ALPHA = 0.32  # Grubb's exponent
E0 = 0.4  # resting oxygen extraction fraction
V0 = 4.0  # resting venous volume, %
TE = 0.04  # echo time assumed by the observation model, s
R0 = 25.0  # intravascular relaxation rate slope, 1/s
NU0 = 40.3  # frequency offset of magnetised vessels, 1/s


@dataclass(frozen=True)
class DCMParameters:
    """Parameters of an n-region, m-input one-state DCM.

    ``A[i, j]`` is the connection from region j to region i (Hz; diagonal = log scale of
    self-inhibition, 0 meaning −0.5 Hz), ``B[i, j, k]`` the modulation of that connection by
    input k, ``C[i, k]`` the driving effect of input k on region i (divided by 16 when used),
    ``transit`` (n), ``decay`` and ``epsilon`` the log-scaled hemodynamic parameters.
    """

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    transit: np.ndarray
    decay: float = 0.0
    epsilon: float = 0.0


def effective_coupling(p: DCMParameters, u: np.ndarray) -> np.ndarray:
    """Coupling matrix (n×n, Hz) for input vector ``u`` (m): A + Σ u_k B_k, diagonal −½·e^a."""
    a = p.A + np.tensordot(p.B, u, axes=([2], [0]))
    a = a.copy()
    np.fill_diagonal(a, -0.5 * np.exp(np.diag(a)))
    return a


def state_derivative(p: DCMParameters, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Time derivative of the state (5, n): rows x, s, ln f, ln v, ln q; ``u`` is (m,)."""
    neural, s, lnf, lnv, lnq = x
    f, v, q = np.exp(lnf), np.exp(lnv), np.exp(lnq)
    tau = TAU * np.exp(p.transit)
    kappa = KAPPA * np.exp(p.decay)
    dx = effective_coupling(p, u) @ neural + (p.C @ u) / 16.0
    ds = neural - kappa * s - GAMMA * (f - 1.0)
    dlnf = s / f
    fv = v ** (1.0 / ALPHA)
    dlnv = (f - fv) / (tau * v)
    extraction = 1.0 - (1.0 - E0) ** (1.0 / f)
    dlnq = (f * extraction / E0 - fv * q / v) / (tau * q)
    return np.stack([dx, ds, dlnf, dlnv, dlnq])


def bold_signal(x: np.ndarray, epsilon: float | np.ndarray = 0.0) -> np.ndarray:
    """BOLD percent signal change for hemodynamic states ``x`` (5, ...) of any trailing shape."""
    v, q = np.exp(x[3]), np.exp(x[4])
    eps = np.exp(epsilon)
    k1 = 4.3 * NU0 * E0 * TE
    k2 = eps * R0 * E0 * TE
    k3 = 1.0 - eps
    return V0 * (k1 * (1.0 - q) + k2 * (1.0 - q / v) + k3 * (1.0 - v))


def first_order_kernel(
    transit: float, decay: float, epsilon: float, dt: float, length: float = 32.0
) -> np.ndarray:
    """Small-signal BOLD impulse response of one region's balloon and observation model.

    The first-order Volterra kernel (Friston et al. 2000, NeuroImage 12:466) of the equations
    above: they are linearised at rest (central-difference Jacobian of
    :func:`state_derivative` and gradient of :func:`bold_signal`), the neural state is the
    input, and the linear system's impulse response g·exp(J t)·b is sampled at
    ``t = 0, dt, …`` up to ``length`` s (through J's eigen-decomposition; its eigenvalues
    are distinct for the balloon model). ``transit``, ``decay`` and ``epsilon`` are the
    log-scaled parameters of :class:`DCMParameters`.

    Returns shape (round(length / dt),): % signal change per unit neural impulse (Hz·s).
    """
    step = 1e-6
    # columns 2j and 2j+1 of one 10-"region" state: rest ± step in state j (regions are
    # independent in the hemodynamic equations, so one call gives every difference)
    bumps = np.zeros((5, 10))
    bumps[np.arange(5), 2 * np.arange(5)] = step
    bumps[np.arange(5), 2 * np.arange(5) + 1] = -step
    p = DCMParameters(
        np.zeros((10, 10)),
        np.zeros((10, 10, 1)),
        np.zeros((10, 1)),
        np.full(10, transit),
        decay,
        epsilon,
    )
    derivative = state_derivative(p, bumps, np.zeros(1))
    jacobian = (derivative[:, 0::2] - derivative[:, 1::2]) / (2 * step)  # (5, 5)
    bold = bold_signal(bumps, epsilon)
    gradient = (bold[0::2] - bold[1::2]) / (2 * step)  # (5,)
    # rows/columns 1–4 are the hemodynamic states; column 0 is how neural activity drives them
    eigenvalues, vectors = np.linalg.eig(jacobian[1:, 1:])
    weights = (gradient[1:] @ vectors) * np.linalg.solve(vectors, jacobian[1:, 0])
    times = np.arange(int(round(length / dt))) * dt
    return np.real(np.exp(np.outer(times, eigenvalues)) @ weights)
