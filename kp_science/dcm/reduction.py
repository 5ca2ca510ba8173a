"""Bayesian model reduction (BMR) of a Gaussian posterior, model search and averaging.

Given a model inverted under the prior N(pE, pC) with (Laplace) posterior N(qE, qC), the
evidence and posterior of the same model under any other Gaussian prior N(rE, rC) follow in
closed form, without re-fitting (Friston & Penny 2011, NeuroImage 56:2089; Friston et al.
2016, NeuroImage 128:413, appendix). Writing the likelihood implied by the full inversion as
q(θ)/p(θ) ∝ exp(−½θᵀΛθ + θᵀb), Λ = qP − pP, b = qP·qE − pP·pE (P for precision),

    ΔF = ln ∫ q(θ)·r(θ)/p(θ) dθ,

a Gaussian integral. It is evaluated here with the reduced prior in covariance form,
θ = rE + L·z, rC = L·Lᵀ, z ~ N(0, I):

    ln I(m, L) = −½mᵀΛm + mᵀb − ½ln|M| + ½gᵀM⁻¹g,   M = I + LᵀΛL,  g = Lᵀ(b − Λm),
    ΔF = ln I(rE, L_r) − ln I(pE, L_p),
    reduced posterior: sE = rE + L·M⁻¹g,  sC = L·M⁻¹·Lᵀ.

This equals the precision-form expression in docs/dcm-model.md whenever rC is
invertible, but never inverts rC: a reduced prior that switches parameters off (zero
variance) is handled exactly rather than through a large surrogate precision. Parameters
fixed under the full prior (zero prior variance) are carried at their prior mean; a reduced
prior cannot free them.

The search over reduced models follows SPM12's ``spm_dcm_bmr_all`` (Friston et al. 2016;
the rules as SPM12 r7771 applies them): every subset of the candidate parameters is scored
when there are at most ``max_exhaustive`` of them. Otherwise each round

1. ranks the remaining candidates by the evidence lost when each alone is switched off and
   takes a pool of the max(n/4, ``max_exhaustive``) least costly;
2. compares the current model with the model that switches the whole pool off: when that
   raises the evidence by more than one nat per parameter of the pool, the pool is removed
   together (a shortcut that spares 2^8 evaluations when the pool is plainly redundant);
3. otherwise scores every subset of the ``max_exhaustive`` least costly and removes the
   best model's absent parameters,

and the search repeats until a round removes nothing (or the last search was exhaustive).
Step 2 can remove a parameter that the best model of step 3 would keep: the joint gain
counts, not each parameter's own. Bayesian model averaging and the posterior probability
that each parameter is present are taken over the last model space scored, under a flat
prior over models. A switched-off parameter is fixed at its prior mean by default, or at a
given value (``off_mean``; a PEB's group effects are switched off to zero, as SPM does).

Two numerical differences from SPM12 remain, both small: SPM scores models with a ridge of
e⁻¹⁶ added to every covariance and precision it inverts, so a switched-off parameter keeps a
precision of about e¹⁶ rather than being fixed (on its 12-participant PEB reference this
moves each Pp by at most 3e-5); and its averaged means and variances are those of 1,000
random draws from the models within 8 nats of the best, where these are the exact mixture
moments over every model scored (a model 8 nats below the best carries under 3.4e-4 of the
weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

SUPPORT_TOL = 1e-12  # eigenvalues of a covariance below this × the largest count as zero
MAX_EXHAUSTIVE = 8  # at most 2^8 = 256 models are scored at once (SPM's choice)


@dataclass(frozen=True, eq=False)
class ReducedPosterior:
    """A model re-scored under a reduced prior.

    Attributes
    ----------
    dF : change in free energy (log evidence), nats: reduced − full.
    Ep : (n,) posterior means under the reduced prior.
    Cp : (n, n) posterior covariance under the reduced prior.
    """

    dF: float
    Ep: np.ndarray
    Cp: np.ndarray


@dataclass(frozen=True, eq=False)
class ModelAverage:
    """Bayesian model comparison and averaging over a space of reduced models.

    Attributes
    ----------
    models : (n_models, n) bool, True where a parameter is present (free) in the model.
    dF : (n_models,) log evidence of each model relative to the full model, nats.
    posterior : (n_models,) posterior probability of each model (flat prior over models).
    Ep : (n,) Bayesian model average of the posterior means.
    Cp : (n, n) covariance of the model-averaged posterior (within- plus between-model).
    Pp : (n,) posterior probability that each parameter is present: the summed probability
        of the models in which it is free. 0 for parameters fixed under the full prior.
    best : (n,) bool, the parameters present in the most probable model.
    """

    models: np.ndarray
    dF: np.ndarray
    posterior: np.ndarray
    Ep: np.ndarray
    Cp: np.ndarray
    Pp: np.ndarray
    best: np.ndarray


@dataclass(frozen=True, eq=False)
class ReductionSearch:
    """Result of an automatic search over reduced models (:func:`search_reduced_models`).

    Attributes
    ----------
    average : :class:`ModelAverage` over the last model space scored; its ``dF`` are
        relative to the full model, its ``Pp`` are 0 for parameters removed in earlier
        rounds and 1 for parameters never considered for removal.
    removed : (n,) bool, parameters switched off before the last round.
    rounds : number of rounds of exhaustive scoring.
    n_models : total number of reduced models scored.
    """

    average: ModelAverage
    removed: np.ndarray
    rounds: int
    n_models: int

    @property
    def Ep(self) -> np.ndarray:
        """(n,) model-averaged posterior means."""
        return self.average.Ep

    @property
    def Cp(self) -> np.ndarray:
        """(n, n) model-averaged posterior covariance."""
        return self.average.Cp

    @property
    def Pp(self) -> np.ndarray:
        """(n,) posterior probability that each parameter is present."""
        return self.average.Pp


# --- the full model, in the subspace its prior supports -----------------------------------------


@dataclass(frozen=True, eq=False)
class _FullModel:
    """Prior and posterior expressed in coordinates z = Uᵀ(θ − pE) of the prior's support."""

    pE: np.ndarray  # (n,) prior mean, original coordinates
    U: np.ndarray  # (n, k) orthonormal basis of the prior's support
    Lp: np.ndarray  # (k, k) Cholesky factor of the prior covariance in z
    Lam: np.ndarray  # (k, k) qP − pP: precision contributed by the data
    b: np.ndarray  # (k,) qP·qE (the prior mean is 0 in z)
    lnI_full: float  # ln I of the full prior


def _support(pC: np.ndarray) -> np.ndarray:
    """(n, k) orthonormal basis of the range of a covariance matrix (axes when diagonal)."""
    d = np.diag(pC)
    if np.count_nonzero(pC - np.diag(d)) == 0:  # diagonal: keep the parameters' own axes
        keep = d > SUPPORT_TOL * max(float(d.max(initial=0.0)), np.finfo(float).tiny)
        return np.eye(pC.shape[0])[:, keep]
    w, V = np.linalg.eigh((pC + pC.T) / 2.0)
    keep = w > SUPPORT_TOL * max(float(w.max(initial=0.0)), np.finfo(float).tiny)
    return V[:, keep]


def _check_shapes(pE: np.ndarray, pC: np.ndarray, qE: np.ndarray, qC: np.ndarray) -> int:
    n = pE.size
    for name, arr, shape in (("pC", pC, (n, n)), ("qE", qE, (n,)), ("qC", qC, (n, n))):
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match pE, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if not np.all(np.isfinite(pE)):
        raise ValueError("pE contains NaN or infinite values")
    return n


def _full_model(pE: np.ndarray, pC: np.ndarray, qE: np.ndarray, qC: np.ndarray) -> _FullModel:
    pE, pC, qE, qC = (np.asarray(x, dtype=float) for x in (pE, pC, qE, qC))
    _check_shapes(pE, pC, qE, qC)
    U = _support(pC)
    pCz = U.T @ pC @ U
    qCz = U.T @ qC @ U
    qEz = U.T @ (qE - pE)
    try:
        Lp = np.linalg.cholesky((pCz + pCz.T) / 2.0)
        Lq = np.linalg.cholesky((qCz + qCz.T) / 2.0)
    except np.linalg.LinAlgError:
        raise ValueError(
            "prior or posterior covariance is not positive definite on the prior's support"
        ) from None
    eye = np.eye(U.shape[1])
    pP = _chol_inverse(Lp, eye)
    qP = _chol_inverse(Lq, eye)
    Lam = qP - pP
    b = qP @ qEz
    lnI_full = _ln_integral(Lam, b, np.zeros(U.shape[1]), Lp)[0]
    return _FullModel(pE=pE, U=U, Lp=Lp, Lam=(Lam + Lam.T) / 2.0, b=b, lnI_full=lnI_full)


def _chol_inverse(L: np.ndarray, eye: np.ndarray) -> np.ndarray:
    Linv = np.linalg.solve(L, eye)
    return Linv.T @ Linv


def _ln_integral(
    Lam: np.ndarray, b: np.ndarray, m: np.ndarray, L: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """ln ∫ exp(−½θᵀΛθ + θᵀb)·N(θ; m, LLᵀ) dθ, and the tilted posterior's mean and covariance.

    Λ (k, k), b (k,), m (k,), L (k, r). Returns (ln I, mean (k,), covariance (k, k)).
    """
    M = np.eye(L.shape[1]) + L.T @ Lam @ L
    g = L.T @ (b - Lam @ m)
    sign, logdet = np.linalg.slogdet(M)
    if sign <= 0:
        raise ValueError(
            "the reduced prior is broader than the data can normalise "
            "(I + LᵀΛL is not positive definite)"
        )
    Minv = np.linalg.inv(M)
    Minv = (Minv + Minv.T) / 2.0
    u = Minv @ g
    lnI = float(-0.5 * m @ Lam @ m + m @ b - 0.5 * logdet + 0.5 * g @ u)
    return lnI, m + L @ u, L @ Minv @ L.T


def _factor(C: np.ndarray) -> np.ndarray:
    """L with C = L·Lᵀ for a symmetric positive semi-definite C (rank-revealing)."""
    C = (C + C.T) / 2.0
    w, V = np.linalg.eigh(C)
    scale = max(float(np.abs(w).max(initial=0.0)), np.finfo(float).tiny)
    if w.min(initial=0.0) < -1e-8 * scale:
        raise ValueError("reduced prior covariance is not positive semi-definite")
    keep = w > SUPPORT_TOL * scale
    return V[:, keep] * np.sqrt(w[keep])


# --- one reduced prior ---------------------------------------------------------------------------


def reduce_posterior(
    pE: np.ndarray, pC: np.ndarray, qE: np.ndarray, qC: np.ndarray, rE: np.ndarray, rC: np.ndarray
) -> ReducedPosterior:
    """Free-energy change and posterior of a model when its prior is replaced (BMR).

    Parameters
    ----------
    pE, pC : (n,), (n, n) full prior mean and covariance (zero variance = fixed parameter).
    qE, qC : (n,), (n, n) posterior mean and covariance under the full prior.
    rE, rC : (n,), (n, n) reduced prior mean and covariance; zero variance switches a
        parameter off (fixes it at rE). rC may be singular; it must not give variance, nor
        rE a different mean, to parameters the full prior fixes.

    Returns
    -------
    :class:`ReducedPosterior` with ΔF (nats, reduced − full) and the reduced posterior.
    """
    full = _full_model(pE, pC, qE, qC)
    rE = np.asarray(rE, dtype=float)
    rC = np.asarray(rC, dtype=float)
    n = full.pE.size
    if rE.shape != (n,) or rC.shape != (n, n):
        raise ValueError(f"rE, rC must have shapes ({n},), ({n}, {n}); got {rE.shape}, {rC.shape}")
    if not (np.all(np.isfinite(rE)) and np.all(np.isfinite(rC))):
        raise ValueError("reduced prior contains NaN or infinite values")
    U = full.U
    outside = np.eye(n) - U @ U.T
    d = rE - full.pE
    if np.abs(outside @ d).max(initial=0.0) > 1e-10 * max(1.0, np.abs(d).max(initial=0.0)):
        raise ValueError("the reduced prior moves the mean of a parameter the full prior fixes")
    if np.abs(outside @ rC).max(initial=0.0) > 1e-10 * max(1.0, np.abs(rC).max(initial=0.0)):
        raise ValueError("the reduced prior gives variance to a parameter the full prior fixes")
    Lr = _factor(U.T @ rC @ U)
    lnI, mz, Cz = _ln_integral(full.Lam, full.b, U.T @ d, Lr)
    return ReducedPosterior(dF=lnI - full.lnI_full, Ep=full.pE + U @ mz, Cp=U @ Cz @ U.T)


def free_energy_change(
    pE: np.ndarray, pC: np.ndarray, qE: np.ndarray, qC: np.ndarray, rE: np.ndarray, rC: np.ndarray
) -> float:
    """ΔF (nats) of the reduced prior N(rE, rC) against the full prior (see
    :func:`reduce_posterior`)."""
    return reduce_posterior(pE, pC, qE, qC, rE, rC).dF


# --- spaces of switched-off parameters -----------------------------------------------------------


def _score_switch_offs(
    full: _FullModel,
    present: np.ndarray,
    off_mean: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score models that switch parameters off (fix them at ``off_mean``).

    present : (n_models, n) bool, True where a parameter keeps its full prior.
    off_mean : (n,) value an absent parameter is fixed at.
    Returns ΔF (n_models,), reduced means (n_models, n), covariances (n_models, n, n).

    Switching θ_j off acts on the parameter axes: θ − pE = D·U·Lp·z + (I − D)(off − pE),
    D = diag(present); a rank-deficient L is fine (see :func:`_ln_integral`).
    """
    U, Lp = full.U, full.Lp
    k = Lp.shape[0]
    Lz = U.T @ (present[:, :, None] * (U @ Lp)[None])  # (n_models, k, k)
    m = (~present * (off_mean - full.pE)[None]) @ U  # (n_models, k) reduced mean in z
    LzT = np.swapaxes(Lz, 1, 2)
    M = np.eye(k)[None] + LzT @ full.Lam[None] @ Lz
    g = np.einsum("mji,mj->mi", Lz, full.b[None] - m @ full.Lam)
    sign, logdet = np.linalg.slogdet(M)
    if np.any(sign <= 0):
        raise ValueError("a reduced model is not normalisable (I + LᵀΛL not positive definite)")
    Minv = np.linalg.inv(M)
    Minv = (Minv + np.swapaxes(Minv, 1, 2)) / 2.0
    u = np.einsum("mij,mj->mi", Minv, g)
    quad = -0.5 * np.einsum("mi,ij,mj->m", m, full.Lam, m) + m @ full.b
    dF = quad - 0.5 * logdet + 0.5 * np.einsum("mi,mi->m", g, u) - full.lnI_full
    mz = m + np.einsum("mij,mj->mi", Lz, u)
    Cz = Lz @ Minv @ LzT
    Ep = full.pE[None] + mz @ U.T
    Cp = U[None] @ Cz @ U.T[None]
    return dF, Ep, Cp


def _free_mask(full: _FullModel) -> np.ndarray:
    """(n,) bool: parameters with prior variance on the support."""
    return np.abs(full.U).sum(axis=1) > 1e-12


def _off_mean(full: _FullModel, off_mean: np.ndarray | None) -> np.ndarray:
    """(n,) value each parameter takes when switched off (prior mean unless given)."""
    if off_mean is None:
        return full.pE.copy()
    off = np.asarray(off_mean, dtype=float)
    if off.shape != full.pE.shape or not np.all(np.isfinite(off)):
        raise ValueError(f"off_mean must be a finite ({full.pE.size},) vector, got {off.shape}")
    return np.where(_free_mask(full), off, full.pE)  # fixed parameters stay at the prior mean


def _average(full: _FullModel, present: np.ndarray, off_mean: np.ndarray) -> ModelAverage:
    present = np.asarray(present, dtype=bool)
    free = _free_mask(full)
    present = present & free[None]
    dF, Ep, Cp = _score_switch_offs(full, present, off_mean)
    w = np.exp(dF - dF.max())
    w /= w.sum()
    mean = w @ Ep
    dev = Ep - mean
    cov = np.einsum("m,mij->ij", w, Cp) + np.einsum("m,mi,mj->ij", w, dev, dev)
    return ModelAverage(
        models=present,
        dF=dF,
        posterior=w,
        Ep=mean,
        Cp=(cov + cov.T) / 2.0,
        # a sum of model probabilities: rounding must not take it past 1
        Pp=np.clip(w @ present.astype(float), 0.0, 1.0),
        best=present[int(np.argmax(dF))].copy(),
    )


def compare_models(
    pE: np.ndarray,
    pC: np.ndarray,
    qE: np.ndarray,
    qC: np.ndarray,
    models: np.ndarray | Sequence[Sequence[bool]],
    off_mean: np.ndarray | None = None,
) -> ModelAverage:
    """Bayesian model comparison and averaging over given reduced models.

    Parameters
    ----------
    pE, pC, qE, qC : full prior and posterior, as for :func:`reduce_posterior`.
    models : (n_models, n) bool, True where a parameter is present; an absent parameter is
        fixed at ``off_mean``. Parameters fixed under the full prior are absent whatever the
        mask says.
    off_mean : (n,) value of a switched-off parameter (default: its prior mean; a PEB's
        second-level effects are switched off to zero).

    Returns
    -------
    :class:`ModelAverage` (flat prior over the models given).
    """
    full = _full_model(pE, pC, qE, qC)
    models = np.atleast_2d(np.asarray(models, dtype=bool))
    if models.shape[1] != full.pE.size or models.shape[0] == 0:
        raise ValueError(f"models must have shape (n_models, {full.pE.size}), got {models.shape}")
    return _average(full, models, _off_mean(full, off_mean))


def all_subsets(n: int) -> np.ndarray:
    """(2ⁿ, n) bool: every subset of n parameters, the full model (all True) first."""
    if n < 0 or n > 20:
        raise ValueError(f"all subsets of {n} parameters is not a sensible model space")
    return np.array(list(product([True, False], repeat=n)), dtype=bool).reshape(2**n, n)


def _subspace_models(base: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Models that keep ``base`` and switch every subset of ``idx`` off."""
    models = np.repeat(base[None], 2**idx.size, axis=0)
    models[:, idx] = all_subsets(idx.size)
    return models


def search_reduced_models(
    pE: np.ndarray,
    pC: np.ndarray,
    qE: np.ndarray,
    qC: np.ndarray,
    candidates: np.ndarray | None = None,
    max_exhaustive: int = MAX_EXHAUSTIVE,
    off_mean: np.ndarray | None = None,
) -> ReductionSearch:
    """Automatic search over which parameters to switch off, then model averaging.

    Parameters
    ----------
    pE, pC, qE, qC : full prior and posterior, as for :func:`reduce_posterior`.
    candidates : (n,) bool, parameters that may be switched off (default: every parameter
        free under the full prior). The others stay present in every model.
    max_exhaustive : with at most this many candidates every subset is scored (2^k
        models); otherwise a greedy search, round by round: the pool of the
        max(n/4, ``max_exhaustive``) candidates whose single removal costs least evidence
        is removed together when that gains more than one nat per pooled parameter, else
        every subset of the ``max_exhaustive`` least costly is scored (module docstring).
    off_mean : (n,) value of a switched-off parameter (default: its prior mean).

    Returns
    -------
    :class:`ReductionSearch`: BMA means and covariance, Pp per parameter (0 for fixed or
    removed, 1 for non-candidates), and the last model space with its ΔF and probabilities.
    """
    if max_exhaustive < 1:
        raise ValueError(f"max_exhaustive must be at least 1, got {max_exhaustive}")
    full = _full_model(pE, pC, qE, qC)
    n = full.pE.size
    free = _free_mask(full)
    if candidates is None:
        candidates = free
    candidates = np.asarray(candidates, dtype=bool)
    if candidates.shape != (n,):
        raise ValueError(f"candidates must be a ({n},) bool mask, got {candidates.shape}")
    candidates = candidates & free
    off = _off_mean(full, off_mean)
    present = free.copy()  # the current model
    rounds = n_models = 0
    while True:
        idx = np.flatnonzero(candidates & present)
        pool_size = max(idx.size // 4, max_exhaustive)
        exhaustive = idx.size <= pool_size
        if exhaustive:
            average = _average(full, _subspace_models(present, idx), off)
            n_models += average.models.shape[0]
        else:
            # proxy: evidence of removing each candidate alone; keep the least costly
            single = np.repeat(present[None], idx.size, axis=0)
            single[np.arange(idx.size), idx] = False
            dF_single = _score_switch_offs(full, single, off)[0]
            pool = idx[np.argsort(-dF_single, kind="stable")[:pool_size]]
            both = np.repeat(present[None], 2, axis=0)  # the pool switched off, and kept
            both[0, pool] = False
            average = _average(full, both, off)
            n_models += idx.size + 2
            if average.dF[0] - average.dF[1] <= pool_size:  # not plainly redundant
                subsets = _subspace_models(present, np.sort(pool[:max_exhaustive]))
                average = _average(full, subsets, off)
                n_models += subsets.shape[0]
        rounds += 1
        best = average.best
        if exhaustive or np.array_equal(best, present):
            break
        present = best
    removed = free & ~present
    return ReductionSearch(average=average, removed=removed, rounds=rounds, n_models=n_models)
