"""Variational Laplace inversion of a deterministic bilinear DCM for fMRI (SPM12-equivalent).

The scheme is the Gauss–Newton / Fisher-scoring variational Laplace of Friston et al. 2007
(NeuroImage 34:220) as SPM12's ``spm_dcm_estimate`` applies it to DCM for fMRI, following the
facts in docs/dcm-model.md:

- data rescaled by 4 / max(range(y), 4); confounds X0 (default a constant) estimated jointly
  under a vague prior (variance 1e8), starting from their least-squares fit;
- one noise precision component per region, e^{−32} + e^{h_r}, with h_r ~ N(6, 1/128);
- per iteration: forward-difference Jacobian (step e^{−8}) in the subspace of free
  parameters, up to 8 Fisher-scoring steps for h, the free energy, and a regularised
  Gauss–Newton step dp = (expm(t·H) − I)·H⁻¹·g with t = exp(v − ln|−H|/n);
- accept/reject: keep the step if F increased (always in the first two iterations),
  v ← min(v + ½, 4); otherwise restore the previous point, v ← min(v − 2, −4);
- converged when the predicted gain gᵀdp stays below 0.1 for four iterations.

Speed: the forward passes of the Jacobian are compiled (:mod:`.integrate`); the M-step needs
the data only through each region's JᵀJ and eᵀe, formed once per iteration, and its eight
passes run compiled (:func:`_noise_scoring`); the ascent step takes the exponential of the
symmetric curvature from its eigendecomposition.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numba as nb
import numpy as np
import pandas as pd
from scipy.special import ndtr

from kp_science.balloon import DCMParameters
from kp_science.dcm.integrate import FD_STEP, predict_bold_batch, solve_into
from kp_science.dcm.model import DCMSpec, parameter_names, priors, unpack

CONFOUND_PRIOR_VAR = 1e8  # vague prior on confound coefficients
NOISE_FLOOR = np.exp(-32.0)  # added to each noise precision
LOGDET_TOL = 1e-16  # singular values outside (TOL, 1/TOL) are ignored, as in SPM
MAX_UNSTABLE_RETRIES = 4


@dataclass(frozen=True, eq=False)
class DCMResult:
    """Posterior of one DCM inversion.

    All signal quantities are in the units of the *rescaled* data (``y · scale``), as SPM
    reports them; divide by ``scale`` for the units of the data given.

    Attributes
    ----------
    Ep : posterior means as :class:`DCMParameters` (A (n,n), B (n,n,m), C (n,m), transit (n),
        decay, epsilon); fixed parameters sit at their prior mean.
    Ep_vector : (n_params,) the same in SPM's vectorised order.
    Cp : (n_params, n_params) posterior covariance, SPM order; zero rows/columns for fixed
        parameters.
    Pp : (n_params,) posterior probability that |parameter| exceeds its prior mean
        (1 − Φ(prior mean; |posterior mean|, posterior sd)); NaN for fixed parameters.
    free : (n_params,) bool, which parameters were estimated.
    F : free energy (log-evidence bound), nats.
    y_hat : (n_scans, n) predicted BOLD without confounds.
    residuals : (n_scans, n) data − prediction, with the confounds projected out.
    confounds : (k, n) posterior means of the confound coefficients (one column per region).
    Ce : (n,) noise variance per region, exp(−h).
    Eh : (n,) posterior log-precision of the noise per region.
    explained_variance : (n,) per region, Σŷ² / (Σŷ² + Σr²) (SPM's ``spm_dcm_fmri_check``).
    explained_variance_total : the same over all regions.
    n_iter : iterations run.
    converged : whether the convergence criterion was met (else the best point so far).
    seconds : wall time of the inversion, s.
    scale : factor the data were multiplied by (4 / max(range, 4)).
    message : how the iterations ended.
    """

    Ep: DCMParameters
    Ep_vector: np.ndarray
    Cp: np.ndarray
    Pp: np.ndarray
    free: np.ndarray
    F: float
    y_hat: np.ndarray
    residuals: np.ndarray
    confounds: np.ndarray
    Ce: np.ndarray
    Eh: np.ndarray
    explained_variance: np.ndarray
    explained_variance_total: float
    n_iter: int
    converged: bool
    seconds: float
    scale: float
    message: str

    @property
    def sd(self) -> np.ndarray:
        """(n_params,) posterior standard deviations (0 for fixed parameters)."""
        return np.sqrt(np.clip(np.diag(self.Cp), 0.0, None))


def _logdet(M: np.ndarray) -> float:
    """log|det M| over the singular values inside (1e-16, 1e16), as SPM's ``spm_logdet``
    treats non-diagonal, non-positive-definite or asymmetric matrices (a diagonal matrix's
    singular values are the magnitudes of its diagonal)."""
    diagonal = np.diagonal(M)
    if np.count_nonzero(M) == np.count_nonzero(diagonal):
        s = np.abs(diagonal)
    else:
        s = np.linalg.svd(M, compute_uv=False)
    s = s[(s > LOGDET_TOL) & (s < 1.0 / LOGDET_TOL)]
    return float(np.sum(np.log(s)))


def _ascent_step(H: np.ndarray, g: np.ndarray, log_rate: float) -> np.ndarray:
    """dx = (expm(t·H) − I)·H⁻¹·g with t = exp(v − ln|H|/n).

    Short steps follow the gradient, long ones tend to the Newton step −H⁻¹g; v (the log
    ascent rate) interpolates, which is SPM's Levenberg–Marquardt-like regularisation.
    H is a curvature, symmetric: with H = Q·diag(λ)·Qᵀ the step is
    Q·diag((e^{t·λ} − 1)/λ)·Qᵀ·g, and |λ| are H's singular values, so ln|H| is their sum of
    logs over those inside (1e-16, 1e16), as :func:`_logdet` takes it.
    """
    lam, Q = np.linalg.eigh(H)
    s = np.abs(lam)
    s = s[(s > LOGDET_TOL) & (s < 1.0 / LOGDET_TOL)]
    t = np.exp(log_rate - np.sum(np.log(s)) / g.size)
    if t > np.exp(16.0):
        return -np.linalg.pinv(H) @ g
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rate = np.where(lam != 0.0, np.expm1(t * lam) / lam, t)
    return Q @ (rate * (Q.T @ g))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _noise_scoring(
    gram: np.ndarray,
    ee: np.ndarray,
    ns: int,
    h: np.ndarray,
    h_mean: float,
    h_var: float,
    prior_precision: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The M-step: up to 8 Fisher-scoring steps on the noise log-precisions h (n,).

    With one precision λ_r = e^{−32} + e^{h_r} per region, everything depends on the data
    through ``gram`` (n, P, P), J_rᵀJ_r of each region's rows of the Jacobian of the
    residuals, and ``ee`` (n,), e_rᵀe_r. Each pass: posterior covariance
    Cp = (Σ_r λ_r·J_rᵀJ_r + prior_precision)⁻¹; gradient
    ½·[ns·e^{h_r}/λ_r − e^{h_r}·(e_rᵀe_r + tr(Cp·J_rᵀJ_r))] − (h_r − h_mean)/h_var and the
    diagonal curvature −ns·(e^{h_r}/λ_r)²/2 − 1/h_var; the step (expm(t·H) − I)·H⁻¹·g with
    t = e⁴ is elementwise for a diagonal H, (e^{t·H_rr} − 1)·g_r/H_rr — the Newton step
    −g_r/H_rr to machine precision, since t·|H_rr| > e⁴·128 — clipped to ±1. Stops when the
    predicted gain gᵀ·dh is below 1e−2.

    Returns h after the last step and, from the last pass (before its step), the
    precisions λ (n,), Σ_r λ_r·J_rᵀJ_r (P, P), Cp (P, P), h − h_mean (n,) and the
    curvature's diagonal (n,).
    """
    n, P = gram.shape[0], gram.shape[1]
    h = h.copy()
    eh = np.empty(n)
    precision = np.empty(n)
    dFdh = np.empty(n)
    dFdhh = np.empty(n)
    d = np.empty(n)
    Pp = np.empty((P, P))
    Cp = np.empty((P, P))
    M = np.empty((P, P))
    rate = np.exp(4.0)
    for _ in range(8):
        for r in range(n):
            eh[r] = np.exp(h[r])
            precision[r] = NOISE_FLOOR + eh[r]
        for a in range(P):
            for b in range(P):
                acc = 0.0
                for r in range(n):
                    acc += precision[r] * gram[r, a, b]
                Pp[a, b] = acc
                M[a, b] = acc + prior_precision[a, b]
                Cp[a, b] = 1.0 if a == b else 0.0
        solve_into(M, Cp)
        gain = 0.0
        for r in range(n):
            share = eh[r] / precision[r]  # trace(P_r·S) per scan
            trace = 0.0
            for a in range(P):
                for b in range(P):
                    trace += Cp[a, b] * gram[r, a, b]
            d[r] = h[r] - h_mean
            dFdh[r] = (ns * share - eh[r] * ee[r] - eh[r] * trace) / 2.0 - d[r] / h_var
            dFdhh[r] = -ns * share**2 / 2.0 - 1.0 / h_var
        for r in range(n):
            dh = np.expm1(rate * dFdhh[r]) / dFdhh[r] * dFdh[r]
            if dh > 1.0:
                dh = 1.0
            elif dh < -1.0:
                dh = -1.0
            gain += dFdh[r] * dh
            h[r] += dh
        if gain < 1e-2:
            break
    return h, precision, Pp, Cp, d, dFdhh


def _check_data(spec: DCMSpec, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim == 1 and spec.n == 1:
        y = y[:, None]
    if y.shape != (spec.n_scans, spec.n):
        raise ValueError(
            f"y must have shape (n_scans={spec.n_scans}, n_regions={spec.n}), got {y.shape}"
        )
    for r, name in enumerate(spec.regions):
        col = y[:, r]
        if not np.all(np.isfinite(col)):
            raise ValueError(f"region {name!r}: signal contains NaN or infinite values")
        if np.ptp(col) == 0:
            raise ValueError(f"region {name!r}: signal is constant (flat)")
    return y


def invert_dcm(
    spec: DCMSpec,
    y: np.ndarray,
    X0: np.ndarray | None = None,
    max_iter: int = 128,
) -> DCMResult:
    """Invert a deterministic bilinear one-state DCM by variational Laplace, as SPM12.

    Parameters
    ----------
    spec : model and design (:class:`DCMSpec`).
    y : (n_scans, n) BOLD signal of each region (percent signal change or any unit; it is
        rescaled so its range is at most 4).
    X0 : (n_scans, k) confounds (default: a constant column), fitted per region.
    max_iter : maximum number of iterations (SPM: 128).

    Returns
    -------
    :class:`DCMResult`. Running out of iterations is not an error: ``converged`` is False.
    """
    start = time.perf_counter()
    y = _check_data(spec, y)
    n, ns = spec.n, spec.n_scans
    if X0 is None:
        X0 = np.ones((ns, 1))
    X0 = np.asarray(X0, dtype=float)
    if X0.ndim == 1:
        X0 = X0[:, None]
    if X0.shape[0] != ns or not np.all(np.isfinite(X0)):
        raise ValueError(f"X0 must be a finite (n_scans={ns}, k) array, got {X0.shape}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")

    scale = 4.0 / max(float(np.ptp(y)), 4.0)
    Y = y * scale
    yv = Y.ravel(order="F")  # region-major, as spm_vec
    ny = yv.size

    pE, pC, hE, hC = priors(spec)
    free = np.diag(pC) > 0
    V = np.eye(pE.size)[:, free]  # prior covariance is diagonal: its eigenvectors are axes
    npar = V.shape[1]
    dfdu = np.kron(np.eye(n), X0)  # confounds act on each region separately
    nu = dfdu.shape[1]
    ipC = np.diag(
        np.concatenate([1.0 / np.diag(V.T @ pC @ V), np.full(nu, 1.0 / CONFOUND_PRIOR_VAR)])
    )
    ip, iu = slice(0, npar), slice(npar, npar + nu)
    ihC = np.eye(n) / hC
    h = np.full(n, hE)

    p = np.concatenate([np.zeros(npar), np.linalg.pinv(dfdu) @ yv])
    best = {"p": p.copy(), "h": h.copy(), "F": -np.inf, "Cp": None}
    v = -4.0
    dFdp = dFdpp = None
    criterion = [False] * 4
    converged = False
    message = f"stopped after {max_iter} iterations without converging"
    k = 0
    # perturbed parameter vectors for the forward-difference Jacobian (row 0 = expansion point)
    perturb = np.vstack([np.zeros(pE.size), FD_STEP * V.T])

    def evaluate(p_now: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        theta = pE + V @ p_now[ip]
        preds = predict_bold_batch(theta[None, :] + perturb, spec)  # (npar+1, ns, n)
        flat = preds.transpose(0, 2, 1).reshape(npar + 1, ny)  # each row vectorised as yv
        f = flat[0]
        dfdp = (flat[1:] - f).T / FD_STEP
        norm = np.abs(dfdp).sum(axis=1).max(initial=0.0)
        unstable = not np.isfinite(norm) or norm > np.exp(32.0) or not np.all(np.isfinite(f))
        return f, dfdp, unstable

    for k in range(1, max_iter + 1):
        f, dfdp, unstable = evaluate(p)
        if unstable and k > 1:
            for _ in range(MAX_UNSTABLE_RETRIES):
                # step back towards the last accepted point with a shorter step
                v = min(v - 2.0, -4.0)
                assert dFdpp is not None and dFdp is not None  # set by iteration 1's point
                p = best["p"] + _ascent_step(dFdpp, dFdp, v)
                f, dfdp, unstable = evaluate(p)
                if not unstable:
                    break
        if unstable:
            if k == 1:
                raise ValueError("the model's prediction is unstable at the prior mean")
            message = f"integration unstable at iteration {k}; returning the best point"
            k -= 1
            break

        e = yv - f - dfdu @ p[iu]
        J = -np.hstack([dfdp, dfdu])  # de/dp
        # everything below depends on J and e only through per-region sums: with one noise
        # precision per region, JᵀΣ⁻¹J = Σ_r λ_r·J_rᵀJ_r, JᵀΣ⁻¹e = Σ_r λ_r·J_rᵀe_r, and
        # eᵀΣ⁻¹e = Σ_r λ_r·e_rᵀe_r (rows of region r: r·ns … (r+1)·ns − 1)
        Jr = J.reshape(n, ns, -1)
        er = e.reshape(n, ns)
        gram = Jr.transpose(0, 2, 1) @ Jr  # (n, P, P)
        Jte = np.einsum("rsp,rs->rp", Jr, er)  # (n, P)
        ee = np.einsum("rs,rs->r", er, er)  # (n,)

        # a step into a region where the prediction overflows shows up as a singular or
        # non-finite posterior: score it as the worst possible point, so it is rejected
        try:
            h, precision, Pp, Cp, d, dFdhh = _noise_scoring(gram, ee, ns, h, hE, hC, ipC)
            Ch = np.diag(-1.0 / dFdhh)
            # free energy, from the quantities of the last Fisher-scoring pass (as SPM does)
            L1 = (ns * np.sum(np.log(precision)) - precision @ ee - ny * np.log(2.0 * np.pi)) / 2.0
            L2 = (_logdet(ipC @ Cp) - p @ ipC @ p) / 2.0
            L3 = (_logdet(ihC @ Ch) - d @ ihC @ d) / 2.0
            F = float(L1 + L2 + L3)
            # gradient and curvature of F in p here, the ascent's if this point is accepted
            gradient, curvature = -(precision @ Jte) - ipC @ p, -Pp - ipC
        except np.linalg.LinAlgError:
            F, gradient, curvature = -np.inf, None, None
        if not np.isfinite(F) and k == 1:
            raise ValueError("the free energy is not finite at the prior mean")

        if np.isfinite(F) and (F > best["F"] or k < 3):
            best = {"p": p.copy(), "h": h.copy(), "F": F, "Cp": Cp}
            dFdp, dFdpp = gradient, curvature
            v = min(v + 0.5, 4.0)
        else:
            p, h = best["p"].copy(), best["h"].copy()
            v = min(v - 2.0, -4.0)

        # iteration 1's point is always accepted (a non-finite F there raised above)
        assert dFdpp is not None and dFdp is not None
        dp = _ascent_step(dFdpp, dFdp, v)
        p = p + dp
        gain = float(dFdp @ dp)
        criterion = [gain < 1e-1] + criterion[:-1]
        if all(criterion):
            converged = True
            message = f"converged after {k} iterations"
            break

    # report the best (last accepted) point
    theta = pE + V @ best["p"][ip]
    Cfull = V @ best["Cp"][ip, ip] @ V.T
    Eh = best["h"]
    y_hat = predict_bold_batch(theta[None, :], spec)[0]
    R = Y - y_hat
    R = R - X0 @ np.linalg.pinv(X0.T @ X0) @ (X0.T @ R) if X0.shape[1] else R
    var = np.diag(Cfull)
    with np.errstate(divide="ignore", invalid="ignore"):
        Pp_vec = 1.0 - ndtr((pE - np.abs(theta)) / np.sqrt(var))
    Pp_vec = np.where(free, Pp_vec, np.nan)
    pss, rss = np.sum(y_hat**2, axis=0), np.sum(R**2, axis=0)
    return DCMResult(
        Ep=unpack(theta, n, spec.m),
        Ep_vector=theta,
        Cp=Cfull,
        Pp=Pp_vec,
        free=free,
        F=float(best["F"]),
        y_hat=y_hat,
        residuals=R,
        confounds=best["p"][iu].reshape(X0.shape[1], n, order="F"),
        Ce=np.exp(-Eh),
        Eh=Eh,
        explained_variance=pss / (pss + rss),
        explained_variance_total=float(pss.sum() / (pss.sum() + rss.sum())),
        n_iter=k,
        converged=converged,
        seconds=time.perf_counter() - start,
        scale=scale,
        message=message,
    )


def _invert_job(job: tuple[DCMSpec, np.ndarray, np.ndarray | None, int]) -> DCMResult:
    spec, y, X0, max_iter = job
    return invert_dcm(spec, y, X0, max_iter)


def _single_blas_thread() -> None:
    """Pool initializer: one BLAS thread per worker process. DCM's matrices are tiny (~11×11),
    so threaded BLAS only adds synchronisation, and workers × threads would oversubscribe."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return
    global _BLAS_LIMIT
    _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")


_BLAS_LIMIT = None  # keeps the worker's BLAS thread limit alive


def invert_many(
    jobs: Sequence[tuple[DCMSpec, np.ndarray] | tuple[DCMSpec, np.ndarray, np.ndarray | None]],
    max_iter: int = 128,
    workers: int | None = None,
) -> list[DCMResult]:
    """Invert several DCMs, in parallel processes when ``workers`` > 1.

    Parameters
    ----------
    jobs : (spec, y) or (spec, y, X0) tuples, as for :func:`invert_dcm`.
    workers : number of worker processes (default: one per CPU; 1 = run in this process).

    Returns
    -------
    One :class:`DCMResult` per job, in order. Errors (e.g. a flat region) propagate.
    """
    full = [(job[0], job[1], job[2] if len(job) > 2 else None, max_iter) for job in jobs]
    if workers == 1 or len(full) <= 1:
        return [_invert_job(job) for job in full]
    with ProcessPoolExecutor(max_workers=workers, initializer=_single_blas_thread) as pool:
        return list(pool.map(_invert_job, full))


def parameter_table(result: DCMResult, spec: DCMSpec, free_only: bool = True) -> pd.DataFrame:
    """Long table of the posterior: one row per parameter.

    Columns: ``parameter`` (``A[amygdala->vmpfc]``, ``B[emotional][amygdala->vmpfc]``,
    ``C[faces][amygdala]``, ``transit[amygdala]``, ``decay``, ``epsilon``), ``mean``,
    ``variance``, ``pp`` (posterior probability, NaN if fixed) and ``free``. With
    ``free_only`` (default) only estimated parameters are listed.
    """
    table = pd.DataFrame(
        {
            "parameter": parameter_names(spec),
            "mean": result.Ep_vector,
            "variance": np.diag(result.Cp),
            "pp": result.Pp,
            "free": result.free,
        }
    )
    if free_only:
        table = table[table["free"]].reset_index(drop=True)
    return table
