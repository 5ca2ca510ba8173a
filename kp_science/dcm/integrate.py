"""Predicted BOLD of a bilinear DCM, integrated the way SPM12's ``spm_int`` does.

The nonlinear neuronal + balloon system (see :mod:`kp_science.balloon`) is linearised
once around states 0 and inputs 0. With the augmented state z = [1; x] it becomes

    dz/dt = (M0 + Σ_j u_j·M1_j)·z,

M0 holding f(0, 0) and ∂f/∂x, M1_j holding ∂f/∂u_j and ∂²f/∂x∂u_j (analytic here; SPM takes
them by finite differences, which agree to ~1e-4). Inputs are piecewise constant on the
microtime grid (dt = TR/16), so the state is advanced exactly, z ← expm(J·Δt)·z, from one
"event" to the next: a bin where an input changes or where a region is sampled. Scan k of
region r is read at 1-based bin k·16 + D_r, D_r = max(round(delay_r/dt), 1), applying the
observation equation to the state before that bin's step.

Speed: the estimator calls the forward model n_params + 1 times per iteration (a batch of
parameter vectors that differ from the first in one entry each). The events, the distinct
input vectors and the distinct (input, step length) pairs depend only on the design and are
computed once per :class:`DCMSpec`. Per parameter vector only one matrix exponential per
distinct input vector is needed (longer steps are its integer powers, each formed once);
a vector whose Jacobian for an input equals the first vector's (a perturbed modulation
whose input is off, say) reuses that exponential and its powers, and one whose Jacobians
all equal the first's (a perturbed ε) reuses its states outright. The whole forward pass —
operators, exponentials, stepping, observation — is compiled (numba, cached on disk) and
runs one parameter vector at a time over ~11×11 matrices, where numpy's per-call overhead
dominated.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np

from kp_science.balloon import (
    ALPHA,
    E0,
    GAMMA,
    KAPPA,
    NU0,
    R0,
    TAU,
    V0,
    DCMParameters,
)
from kp_science.dcm.model import MICROTIME_BINS, DCMSpec, pack

FD_STEP = float(np.exp(-8))  # SPM's finite-difference step
DIVERGED = 1e6  # SPM stops integrating when the 1-norm of the state exceeds this


@dataclass(frozen=True)
class _Schedule:
    """Design-only bookkeeping of the event-driven integration (see module docstring)."""

    inputs: np.ndarray  # (K, m) distinct input vectors
    power_plan: np.ndarray  # (Q, 4) int64: how each needed propagator power is formed
    pair_slot: np.ndarray  # (S,) plan slot of each distinct (input, length) step
    step_pair: np.ndarray  # (n_events - 1,) which distinct step follows each event
    sample_event: np.ndarray  # (n_scans, n) event at which scan k of region r is read


def _power_plan(pair_input: np.ndarray, pair_length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order in which the propagators E_k^L of the distinct steps (input k, L bins) are
    formed from the one-bin propagators E_k, by binary splitting: E^L = E^{L/2}·E^{L/2} for
    even L, E^{L−1}·E for odd L, each power formed once and shared between steps.

    Returns the plan, (Q, 4) rows (input k, slot of the left factor or −1 for E_k itself,
    slot of the right factor, L) in the order to compute them (row q fills slot q), and the
    slot of each distinct step.
    """
    slots: dict[tuple[int, int], int] = {}
    plan: list[tuple[int, int, int, int]] = []

    def slot(k: int, length: int) -> int:
        if (k, length) not in slots:
            if length == 1:
                row = (k, -1, -1, 1)
            elif length % 2:
                row = (k, slot(k, length - 1), slot(k, 1), length)
            else:
                half = slot(k, length // 2)
                row = (k, half, half, length)
            slots[k, length] = len(plan)
            plan.append(row)
        return slots[k, length]

    pair_slot = [
        slot(int(k), int(length)) for k, length in zip(pair_input, pair_length, strict=True)
    ]
    return np.array(plan, dtype=np.int64).reshape(-1, 4), np.array(pair_slot, dtype=np.int64)


_SCHEDULES: weakref.WeakKeyDictionary[DCMSpec, _Schedule] = weakref.WeakKeyDictionary()


def _schedule(spec: DCMSpec) -> _Schedule:
    cached = _SCHEDULES.get(spec)
    if cached is not None:
        return cached
    u = spec.u
    n_micro = u.shape[0]
    # 1-based bins where an input takes a new value (bin 1 always starts the integration)
    changes = 1 + np.concatenate([[0], 1 + np.flatnonzero(np.any(np.diff(u, axis=0) != 0, 1))])
    assert spec.delays is not None  # DCMSpec fills in the default delays when it is made
    D = np.maximum(np.round(spec.delays / spec.dt).astype(int), 1)
    scans = np.arange(spec.n_scans) * MICROTIME_BINS
    sample_bins = scans[:, None] + D[None, :]  # (n_scans, n), 1-based
    t = np.union1d(changes, sample_bins.ravel())
    t = t[t <= n_micro]
    sample_event = np.searchsorted(t, sample_bins)
    rows = u[t - 1]
    inputs, input_index = np.unique(rows, axis=0, return_inverse=True)
    lengths = np.diff(t)
    pairs, step_pair = np.unique(
        np.column_stack([input_index.ravel()[:-1], lengths]), axis=0, return_inverse=True
    )
    plan, pair_slot = _power_plan(pairs[:, 0], pairs[:, 1])
    sched = _Schedule(
        inputs=inputs,
        power_plan=plan,
        pair_slot=pair_slot,
        step_pair=step_pair.ravel().astype(np.int64),
        sample_event=sample_event,
    )
    _SCHEDULES[spec] = sched
    return sched


def bilinear_operators(
    theta: np.ndarray, n: int, m: int, step: float = FD_STEP
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear operators of the system linearised at states 0, inputs 0, for a batch.

    SPM takes these derivatives by forward differences with step e^{-8}; the exact
    derivatives differ from those quotients by ~2e-4 relative, which moves the predicted
    BOLD by up to ~1e-3 (0.05 % of its range). To reproduce SPM the forward-difference
    quotients are evaluated here in closed form, e.g. (e^{h/α} − 1)/h instead of 1/α;
    ``step=0`` gives the exact derivatives.

    Parameters
    ----------
    theta : (P, n_params) full parameter vectors in SPM order.
    step : finite-difference step h of the derivatives (0 = analytic).

    Returns
    -------
    M0 : (P, d, d), d = 1 + 5n, state order [1; x, s, ln f, ln v, ln q] (each n long).
    M1 : (P, m, d, d).
    """
    theta = np.ascontiguousarray(np.atleast_2d(np.asarray(theta, float)))
    d = 1 + 5 * n
    M0 = np.empty((theta.shape[0], d, d))
    M1 = np.empty((theta.shape[0], m, d, d))
    for p in range(theta.shape[0]):
        _operators_into(theta[p], n, m, float(step), M0[p], M1[p])
    return M0, M1


# numba: cached on disk; no fastmath (the estimator divides prediction differences by e^-8,
# so reassociated sums would show); explicit loops only, as in kp_science.prediction.kernels
_JIT: dict[str, Any] = dict(cache=True, nogil=True, error_model="numpy")


@nb.njit(**_JIT)
def _slope(c: float, h: float) -> float:
    """Forward-difference quotient of e^{c·z} at z = 0: (e^{c·h} − 1)/h, or c when h = 0."""
    return np.expm1(c * h) / h if h > 0 else c


@nb.njit(**_JIT)
def _operators_into(
    theta: np.ndarray, n: int, m: int, h: float, M0: np.ndarray, M1: np.ndarray
) -> None:
    """M0 (d, d) and M1 (m, d, d) of one parameter vector (see :func:`bilinear_operators`)."""
    nn = n * n
    b0, c0 = nn, nn + nn * m  # offsets of B and C; arrays are column-major (Fortran)
    transit0, decay = theta.shape[0] - n - 2, theta[theta.shape[0] - 2]
    M0[:] = 0.0
    M1[:] = 0.0
    kappa = KAPPA * np.exp(decay)
    if h > 0:
        f = np.exp(h)
        dextraction = (f * (1.0 - (1.0 - E0) ** (1.0 / f)) / E0 - 1.0) / h
    else:
        dextraction = (E0 + (1.0 - E0) * np.log(1.0 - E0)) / E0
    for i in range(n):
        # state blocks (offset by the augmenting 1): x, s, ln f, ln v, ln q of region i
        ix, is_, if_, iv, iq = 1 + i, 1 + n + i, 1 + 2 * n + i, 1 + 3 * n + i, 1 + 4 * n + i
        self_inhibition = -0.5 * np.exp(theta[i + i * n])
        for j in range(n):  # neuronal equation: linear in x
            M0[ix, 1 + j] = self_inhibition if i == j else theta[i + j * n]
        for k in range(m):
            M1[k, ix, 0] = theta[c0 + i + k * n] / 16.0  # C·u/16 is linear in u
            for j in range(n):
                b = theta[b0 + i + j * n + k * nn]
                # the self-connection −½·exp(A_ii + Σ_k u_k·B_kii) varies with u_k as
                # −½·e^{A_ii}·B_kii
                M1[k, ix, 1 + j] = self_inhibition * _slope(b, h) if i == j else b
        tau = TAU * np.exp(theta[transit0 + i])
        M0[is_, ix] = 1.0
        M0[is_, is_] = -kappa
        M0[is_, if_] = -GAMMA * _slope(1.0, h)  # −γ·(f − 1)
        M0[if_, is_] = 1.0  # s/f
        # d ln v/dt = (f − v^{1/α}) / (τ·v)
        M0[iv, if_] = _slope(1.0, h) / tau
        M0[iv, iv] = -_slope(1.0 / ALPHA, h) * np.exp(-h) / tau
        # d ln q/dt = (f·E(f)/(E0·q) − v^{1/α − 1}) / τ with E(f) = 1 − (1 − E0)^{1/f}
        M0[iq, if_] = dextraction / tau
        M0[iq, iv] = -_slope(1.0 / ALPHA - 1.0, h) / tau
        M0[iq, iq] = _slope(-1.0, h) / tau


@nb.njit(**_JIT)
def observe(lnv: float, lnq: float, epsilon: float, te: float) -> float:
    """BOLD percent signal change from log volume, log deoxyhemoglobin and log ε."""
    v, q = np.exp(lnv), np.exp(lnq)
    eps = np.exp(epsilon)
    k1 = 4.3 * NU0 * E0 * te
    k2 = eps * R0 * E0 * te
    k3 = 1.0 - eps
    return V0 * (k1 * (1.0 - q) + k2 * (1.0 - q / v) + k3 * (1.0 - v))


def predict_bold_batch(theta: np.ndarray, spec: DCMSpec) -> np.ndarray:
    """Predicted BOLD for a batch of full parameter vectors.

    Parameters
    ----------
    theta : (P, n_params) parameter vectors in SPM order (see :func:`model.pack`).
    spec : the model and design.

    Returns
    -------
    (P, n_scans, n) BOLD percent signal change (before any confounds). A run whose state
    diverges (1-norm above 1e6) gets zeros from that point on, as in SPM.
    """
    theta = np.ascontiguousarray(np.atleast_2d(np.asarray(theta, float)))
    sched = _schedule(spec)
    return _predict(
        theta,
        spec.n,
        spec.m,
        sched.inputs,
        spec.dt,
        spec.te,
        sched.power_plan,
        sched.pair_slot,
        sched.step_pair,
        sched.sample_event,
    )


# Padé coefficients (b_0 … b_q) of degrees 3, 5, 7, 9, 13 and the 1-norm bounds θ up to which
# each is accurate to double precision: Higham (2005), SIAM J. Matrix Anal. Appl. 26:1179
_PADE_THETA = np.array(
    [
        1.495585217958292e-2,
        2.539398330063230e-1,
        9.504178996162932e-1,
        2.097847961257068e0,
        5.371920351148152e0,
    ]
)
_PADE_B = (
    np.array([120.0, 60.0, 12.0, 1.0]),
    np.array([30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0]),
    np.array([17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0]),
    np.array(
        [
            17643225600.0,
            8821612800.0,
            2075673600.0,
            302702400.0,
            30270240.0,
            2162160.0,
            110880.0,
            3960.0,
            90.0,
            1.0,
        ]
    ),
    np.array(
        [
            64764752532480000.0,
            32382376266240000.0,
            7771770303897600.0,
            1187353796428800.0,
            129060195264000.0,
            10559470521600.0,
            670442572800.0,
            33522128640.0,
            1323241920.0,
            40840800.0,
            960960.0,
            16380.0,
            182.0,
            1.0,
        ]
    ),
)


@nb.njit(**_JIT)
def _matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray) -> None:
    """out ← A·B for square (d, d) matrices (``out`` must not alias A or B)."""
    d = A.shape[0]
    for i in range(d):
        for j in range(d):
            out[i, j] = 0.0
        for k in range(d):
            a = A[i, k]
            if a != 0.0:
                for j in range(d):
                    out[i, j] += a * B[k, j]


@nb.njit(**_JIT)
def solve_into(M: np.ndarray, R: np.ndarray) -> None:
    """R ← M⁻¹·R for square M (d, d) and R (d, k), by Gaussian elimination with partial
    pivoting (M is overwritten). Compiled; a singular M gives infinities or NaNs."""
    d, k = R.shape
    for c in range(d):
        pivot = c
        for i in range(c + 1, d):
            if abs(M[i, c]) > abs(M[pivot, c]):
                pivot = i
        if pivot != c:
            for j in range(d):
                M[c, j], M[pivot, j] = M[pivot, j], M[c, j]
            for j in range(k):
                R[c, j], R[pivot, j] = R[pivot, j], R[c, j]
        inv = 1.0 / M[c, c]
        for i in range(c + 1, d):
            factor = M[i, c] * inv
            if factor != 0.0:
                for j in range(c + 1, d):
                    M[i, j] -= factor * M[c, j]
                for j in range(k):
                    R[i, j] -= factor * R[c, j]
    for c in range(d - 1, -1, -1):
        inv = 1.0 / M[c, c]
        for j in range(k):
            R[c, j] *= inv
        for i in range(c):
            factor = M[i, c]
            if factor != 0.0:
                for j in range(k):
                    R[i, j] -= factor * R[c, j]


@nb.njit(**_JIT)
def _copy(src: np.ndarray, dst: np.ndarray, transpose: bool = False) -> None:
    """dst ← src (or srcᵀ) for (d, d) matrices; explicit loops compile much faster in numba
    than array expressions."""
    d = src.shape[0]
    for i in range(d):
        for j in range(d):
            dst[i, j] = src[j, i] if transpose else src[i, j]


@nb.njit(**_JIT)
def _expm_into(X: np.ndarray, out: np.ndarray) -> None:
    """out ← expm(X) for one (d, d) matrix; NaNs if X has a non-finite entry.

    Scaling and squaring with Padé approximants (Higham 2005), the algorithm of MATLAB's and
    SciPy's ``expm``: the lowest of the degrees 3, 5, 7, 9 whose bound holds for X's 1-norm,
    else degree 13 on X/2^s, squared s times.
    """
    d = X.shape[0]
    norm = 0.0  # 1-norm: largest column sum of |X|
    for j in range(d):
        col = 0.0
        for i in range(d):
            col += abs(X[i, j])
        norm = max(norm, col)
    if not np.isfinite(norm):
        for i in range(d):
            for j in range(d):
                out[i, j] = np.nan
        return
    which = 4  # index of the degree used in 3, 5, 7, 9, 13
    for q in range(4):
        if norm <= _PADE_THETA[q]:
            which = q
            break
    b = _PADE_B[which]  # its coefficients b_0 … b_degree
    squarings = 0
    if which == 4 and norm > _PADE_THETA[4]:
        squarings = int(np.ceil(np.log2(norm / _PADE_THETA[4])))
    scale = 2.0**-squarings
    A = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            A[i, j] = X[i, j] * scale
    # even powers A^0 = I, A^2, A^4, … (degree 13: A^2, A^4, A^6 and a Horner-like split)
    n_even = which + 2 if which < 4 else 4
    powers = np.zeros((n_even, d, d))
    for i in range(d):
        powers[0, i, i] = 1.0
    _matmul(A, A, powers[1])
    for k in range(2, n_even):
        _matmul(powers[k - 1], powers[1], powers[k])
    odd = np.zeros((d, d))  # U = A·odd
    V = np.zeros((d, d))
    if which < 4:  # odd = Σ b_{2k+1}·A^{2k}, V = Σ b_{2k}·A^{2k}
        for k in range(n_even):
            for i in range(d):
                for j in range(d):
                    odd[i, j] += b[2 * k + 1] * powers[k, i, j]
                    V[i, j] += b[2 * k] * powers[k, i, j]
    else:  # odd = A6·(b13·A6 + b11·A4 + b9·A2) + b7·A6 + …, V likewise with the even b
        high_u = np.empty((d, d))
        high_v = np.empty((d, d))
        for i in range(d):
            for j in range(d):
                a2, a4, a6 = powers[1, i, j], powers[2, i, j], powers[3, i, j]
                high_u[i, j] = b[13] * a6 + b[11] * a4 + b[9] * a2
                high_v[i, j] = b[12] * a6 + b[10] * a4 + b[8] * a2
        _matmul(powers[3], high_u, odd)
        _matmul(powers[3], high_v, V)
        for i in range(d):
            for j in range(d):
                a2, a4, a6 = powers[1, i, j], powers[2, i, j], powers[3, i, j]
                odd[i, j] += b[7] * a6 + b[5] * a4 + b[3] * a2 + (b[1] if i == j else 0.0)
                V[i, j] += b[6] * a6 + b[4] * a4 + b[2] * a2 + (b[0] if i == j else 0.0)
    U = np.empty((d, d))
    _matmul(A, odd, U)
    # (V − U)·R = V + U
    for i in range(d):
        for j in range(d):
            v, u = V[i, j], U[i, j]
            V[i, j] = v - u
            out[i, j] = v + u
    solve_into(V, out)
    for _ in range(squarings):
        _matmul(out, out, U)
        _copy(U, out)


@nb.njit(**_JIT)
def _predict(
    theta: np.ndarray,
    n: int,
    m: int,
    inputs: np.ndarray,
    dt: float,
    te: float,
    plan: np.ndarray,
    pair_slot: np.ndarray,
    step_pair: np.ndarray,
    sample_event: np.ndarray,
) -> np.ndarray:
    """Predicted BOLD (P, n_scans, n) of parameter vectors theta (P, n_params) on the
    schedule of :func:`_schedule` (see :func:`predict_bold_batch`).

    For each vector p: its operators; per distinct input vector k the one-bin propagator
    expm(J_k·dt), J_k = M0 + Σ_j u_kj·M1_j, and the powers of it the plan of
    :func:`_power_plan` prescribes — taken from vector 0 when J_k equals vector 0's; then
    z ← E·z from event to event, z₀ = [1; 0…], until the state's 1-norm exceeds
    :data:`DIVERGED` or is not a number (samples from that event on are 0, as in SPM).
    """
    P = theta.shape[0]
    K = inputs.shape[0]
    Q = plan.shape[0]
    d = 1 + 5 * n
    n_scans = sample_event.shape[0]
    n_events = step_pair.shape[0] + 1
    y = np.zeros((P, n_scans, n))
    M0 = np.empty((d, d))
    M1 = np.empty((m, d, d))
    Jdt = np.empty((K, d, d))  # J_k·dt of this vector, and of vector 0
    Jdt0 = np.empty((K, d, d))
    same = np.zeros(K, dtype=np.bool_)
    powers = np.empty((Q, d, d))  # propagator powers of this vector, and of vector 0
    powers0 = np.empty((Q, d, d))
    states = np.empty((n_events, d))  # state at every event of this vector, and of vector 0
    states0 = np.empty((n_events, d))
    first_bad0 = n_events
    steps_t = np.empty((pair_slot.shape[0], d, d))  # scratch of _step
    for p in range(P):
        _operators_into(theta[p], n, m, FD_STEP, M0, M1)
        all_same = p > 0
        for k in range(K):
            same[k] = p > 0
            for a in range(d):
                for c in range(d):
                    acc = 0.0
                    for j in range(m):
                        acc += M1[j, a, c] * inputs[k, j]
                    x = (M0[a, c] + acc) * dt
                    Jdt[k, a, c] = x
                    if same[k] and x != Jdt0[k, a, c]:
                        same[k] = False
            all_same = all_same and same[k]
        for q in range(Q):
            k, left, right = plan[q, 0], plan[q, 1], plan[q, 2]
            if same[k]:
                _copy(powers0[q], powers[q])
            elif left < 0:
                _expm_into(Jdt[k], powers[q])
            else:
                _matmul(powers[left], powers[right], powers[q])
        if all_same:  # only the observation differs (a perturbed ε): vector 0's states
            first_bad = first_bad0
            for i in range(first_bad):
                for a in range(d):
                    states[i, a] = states0[i, a]
        else:
            first_bad = _step(powers, pair_slot, step_pair, steps_t, states)
        if p == 0:
            first_bad0 = first_bad
            for k in range(K):
                _copy(Jdt[k], Jdt0[k])
            for q in range(Q):
                _copy(powers[q], powers0[q])
            for i in range(first_bad):
                for a in range(d):
                    states0[i, a] = states[i, a]
        epsilon = theta[p, theta.shape[1] - 1]
        for t in range(n_scans):
            for r in range(n):
                e = sample_event[t, r]
                if e < first_bad:
                    y[p, t, r] = observe(
                        states[e, 1 + 3 * n + r], states[e, 1 + 4 * n + r], epsilon, te
                    )
    return y


@nb.njit(**_JIT)
def _step(
    powers: np.ndarray,
    pair_slot: np.ndarray,
    step_pair: np.ndarray,
    steps_t: np.ndarray,
    states: np.ndarray,
) -> int:
    """states[i] (n_events, d) ← the state at every event, z₀ = [1; 0…], stepping with the
    propagators ``powers[pair_slot[step_pair[i]]]``; stops at the first state whose 1-norm
    exceeds :data:`DIVERGED` (or is not a number) and returns its event (n_events if none).
    ``steps_t`` is scratch (S, d, d)."""
    d = states.shape[1]
    for s in range(pair_slot.shape[0]):
        _copy(powers[pair_slot[s]], steps_t[s], True)  # columns of E as contiguous rows
    for a in range(d):
        states[0, a] = 0.0
    states[0, 0] = 1.0
    for i in range(step_pair.shape[0]):
        # z ← E·z as Σ_c z_c·E[:, c], each sum in the order c = 0, 1, …
        Et = steps_t[step_pair[i]]
        for a in range(d):
            states[i + 1, a] = 0.0
        for c in range(d):
            zc = states[i, c]
            if zc != 0.0:
                for a in range(d):
                    states[i + 1, a] += Et[c, a] * zc
        norm = 0.0
        for a in range(d):
            norm += abs(states[i + 1, a])
        if not norm <= DIVERGED:
            return i + 1
    return step_pair.shape[0] + 1


def predict_bold(params: DCMParameters | np.ndarray, spec: DCMSpec) -> np.ndarray:
    """Predicted BOLD (n_scans, n), percent signal change, for one parameter set.

    ``params`` is a :class:`DCMParameters` or a full parameter vector in SPM order.
    """
    theta = pack(params) if isinstance(params, DCMParameters) else np.asarray(params, float)
    return predict_bold_batch(theta[None, :], spec)[0]
