"""Parametric empirical Bayes (PEB) over first-level DCM posteriors.

The second-level model (Friston et al. 2016, NeuroImage 128:413; Zeidman et al. 2019,
NeuroImage 200:12) treats the first-level parameters θᵢ of participant i (p of them, e.g.
every free A and B connection) as

    θᵢ = (Xᵢ ⊗ I_p)·vec(β) + εᵢ,   εᵢ ~ N(0, Π(γ)⁻¹),   Π(γ) = Σⱼ exp(γⱼ)·Qⱼ,

with X (N × k) the between-participant design, β (p × k) the group effects and γ the
log-precisions of the random (between-participant) effects. No first-level model is
re-fitted: replacing participant i's first-level prior N(pE, pC) by the empirical prior
N((Xᵢ ⊗ I)β, Π(γ)⁻¹) changes their free energy by a closed-form Bayesian-model-reduction
ΔFᵢ(β, γ) (:mod:`.reduction`), so the second-level log evidence is
Σᵢ(Fᵢ + ΔFᵢ(β, γ)) + ln p(β) + ln p(γ), maximised here by Newton steps with
Levenberg–Marquardt damping on the exact gradient and Hessian in (β, γ) (variational
Laplace); the posterior covariance is the inverse negative Hessian at the maximum and
F = ΣFᵢ + ΣΔFᵢ + ½ln|C·Π₀| − ½eᵀΠ₀e (Π₀ prior precision, e deviation from prior means).

Defaults (SPM12's, checked against the SPM12 PEB reference, docs/dcm-model.md):

- random effects: one precision component ('single'), Q = 16·pC⁻¹ — a priori the
  between-participant variance is 1/16 of the first-level prior variance (``beta`` = 16);
  γ ~ N(0, 1/16);
- group effects: the constant column's effects ~ N(pE, pC); every other column j's effects
  ~ N(0, pC / mean(X[:, j]²)) — the first-level prior for a covariate scaled to unit root
  mean square, so the prior does not depend on the covariate's units (for a mean-centred
  covariate, pC / its variance). This is what SPM12's model comparison over the fixture's
  second-level parameters implies (each parameter's posterior odds agree to < 0.02 in
  log-odds); a constant-only prior scale (pC for every column) fits the fixture worse.

Vectors over second-level parameters are vec(β), column-major: all p parameters of the
first covariate, then of the second, and so on (SPM's order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kp_science.dcm.reduction import (
    ReductionSearch,
    reduce_posterior,
    search_reduced_models,
)

BETA = 16.0  # prior ratio of first-level prior precision to between-participant precision
H_MEAN = 0.0  # prior mean of the random-effects log-precision(s)
H_VAR = 1.0 / 16.0  # prior variance of the random-effects log-precision(s)
MAX_ITER = 128
TOL = 1e-9  # convergence: objective gain (nats) and largest step
MAX_LOG_STEP = 1.0  # largest change of a log-precision in one step

# named precision components (see precision_components), or explicit index groups
ComponentName = Literal["single", "fields", "all"]
Components = ComponentName | Sequence[Sequence[int]]


@dataclass(frozen=True, eq=False)
class PEBResult:
    """Posterior of a second-level (PEB) model.

    Attributes
    ----------
    parameters : names of the p first-level parameters modelled.
    covariates : names of the k design columns.
    X : (N, k) design (first column constant).
    Ep : (p, k) posterior means of the group effects β.
    Cp : (p·k, p·k) posterior covariance of vec(β), column-major.
    Eh : (m,) posterior means of the random-effects log-precisions γ.
    Ch : (m, m) their posterior covariance.
    F : free energy of the whole hierarchical model, nats (includes the first-level free
        energies when they were given).
    prior_mean : (p, k) prior means of β.
    prior_cov : (p·k, p·k) prior covariance of vec(β).
    components : (m, p, p) precision components Qⱼ.
    pE, pC : (p,), (p, p) first-level prior of the modelled parameters.
    dF : (N,) change in each participant's free energy under the empirical prior.
    F_first : sum of the first-level free energies used (0 if none were given).
    n_iter : iterations run.
    converged : whether the convergence criterion was met.
    """

    parameters: tuple[str, ...]
    covariates: tuple[str, ...]
    X: np.ndarray
    Ep: np.ndarray
    Cp: np.ndarray
    Eh: np.ndarray
    Ch: np.ndarray
    F: float
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    components: np.ndarray
    pE: np.ndarray
    pC: np.ndarray
    dF: np.ndarray
    F_first: float
    n_iter: int
    converged: bool

    @property
    def sd(self) -> np.ndarray:
        """(p, k) posterior standard deviations of β."""
        p, k = self.Ep.shape
        return np.sqrt(np.clip(np.diag(self.Cp), 0.0, None)).reshape(p, k, order="F")

    @property
    def random_precision(self) -> np.ndarray:
        """(p, p) expected between-participant precision Π(Eh)."""
        return np.einsum("m,mij->ij", np.exp(self.Eh), self.components)

    @property
    def random_covariance(self) -> np.ndarray:
        """(p, p) expected between-participant covariance Π(Eh)⁻¹."""
        return np.linalg.inv(self.random_precision)

    @property
    def empirical_prior_means(self) -> np.ndarray:
        """(N, p) each participant's empirical prior mean (Xᵢ ⊗ I)·vec(Ep)."""
        return self.X @ self.Ep.T


@dataclass(frozen=True, eq=False)
class PEBReduction:
    """Bayesian model reduction and averaging over a PEB's group effects.

    Attributes
    ----------
    Ep : (p, k) model-averaged means of β.
    sd : (p, k) model-averaged standard deviations.
    Pp : (p, k) posterior probability that each group effect is present.
    Cp : (p·k, p·k) model-averaged covariance of vec(β).
    search : the underlying :class:`ReductionSearch` (models, ΔF, model probabilities).
    """

    Ep: np.ndarray
    sd: np.ndarray
    Pp: np.ndarray
    Cp: np.ndarray
    search: ReductionSearch


# --- set-up ---------------------------------------------------------------------------------


def _field(name: str) -> str:
    """The field of a parameter name: 'A' for 'A[x->y]', 'B' for 'B[u][x->y]', else itself."""
    return name.split("[", 1)[0].split("(", 1)[0]


def precision_components(
    pC: np.ndarray,
    components: Components = "single",
    parameters: Sequence[str] | None = None,
    beta: float = BETA,
) -> np.ndarray:
    """(m, p, p) precision components of the between-participant random effects.

    'single': one component, beta·pC⁻¹; 'all': one per parameter; 'fields': one per field
    (A, B, …; needs ``parameters``); or a list of index groups. Each component is beta times
    the first-level prior precision restricted to its parameters, so exp(γ) = 1 means the
    between-participant variance is 1/beta of the first-level prior variance.
    """
    p = pC.shape[0]
    pP = np.linalg.inv(pC)
    if isinstance(components, str):
        if components == "single":
            groups = [list(range(p))]
        elif components == "all":
            groups = [[i] for i in range(p)]
        elif components == "fields":
            if parameters is None:
                raise ValueError("components='fields' needs the parameter names")
            fields = list(dict.fromkeys(_field(n) for n in parameters))
            groups = [[i for i, n in enumerate(parameters) if _field(n) == f] for f in fields]
        else:
            raise ValueError(
                f"components must be 'single', 'fields', 'all' or index groups, got {components!r}"
            )
    else:
        groups = [sorted({int(i) for i in g}) for g in components]
    covered = sorted(i for g in groups for i in g)
    if covered != list(range(p)):
        raise ValueError(
            f"precision component groups must cover each of the {p} parameters "
            f"exactly once, got {groups}"
        )
    Q = np.zeros((len(groups), p, p))
    for j, g in enumerate(groups):
        Q[j][np.ix_(g, g)] = beta * pP[np.ix_(g, g)]
    return Q


def second_level_prior(
    pE: np.ndarray, pC: np.ndarray, X: np.ndarray, alpha: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean (p, k) and covariance (p·k, p·k) of the group effects β.

    The first (constant) column's effects ~ N(pE, pC/alpha); column j's ~ N(0,
    pC/(alpha·mean(X[:, j]²))): a covariate's prior is that of the covariate scaled to unit
    root mean square (see the module docstring).
    """
    p, k = pE.size, X.shape[1]
    mean = np.zeros((p, k))
    mean[:, 0] = pE
    scale = 1.0 / np.mean(X**2, axis=0)
    return mean, np.kron(np.diag(scale), pC) / alpha


def _check_inputs(
    qE: np.ndarray,
    qC: np.ndarray,
    pE: np.ndarray,
    pC: np.ndarray,
    X: np.ndarray,
    parameters: Sequence[str] | None,
) -> None:
    if qE.ndim != 2:
        raise ValueError(f"qE must be (participants, parameters), got shape {qE.shape}")
    N, p = qE.shape
    if qC.shape != (N, p, p):
        raise ValueError(f"qC must have shape ({N}, {p}, {p}), got {qC.shape}")
    if pE.shape != (p,) or pC.shape != (p, p):
        raise ValueError(f"pE, pC must have shapes ({p},), ({p}, {p}); got {pE.shape}, {pC.shape}")
    if X.ndim != 2 or X.shape[0] != N:
        raise ValueError(f"X must have one row per participant ({N}), got shape {X.shape}")
    for name, arr in (("qE", qE), ("qC", qC), ("pE", pE), ("pC", pC), ("X", X)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if parameters is not None and len(parameters) != p:
        raise ValueError(f"{len(parameters)} parameter names for {p} parameters")
    fixed = np.flatnonzero(np.diag(pC) <= 0)
    if fixed.size:
        names = [parameters[i] if parameters else str(i) for i in fixed.tolist()]
        raise ValueError(
            f"parameters with zero prior variance cannot vary between "
            f"participants: {', '.join(names)}"
        )
    if not np.allclose(X[:, 0], X[0, 0]) or X[0, 0] == 0:
        raise ValueError("the first column of X must be the constant (group mean)")
    k = X.shape[1]
    if N < k:
        raise ValueError(
            f"{N} participants are fewer than the {k} second-level parameters "
            f"(design columns) per connection"
        )
    if np.linalg.matrix_rank(X) < k:
        raise ValueError(f"the design X ({N} × {k}) is rank deficient")


# --- the objective and its derivatives ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Data:
    """Per-participant quantities that do not depend on (β, γ)."""

    X: np.ndarray  # (N, k)
    qP: np.ndarray  # (N, p, p) posterior precisions
    c: np.ndarray  # (N, p) qP·qE − pP·pE
    const: np.ndarray  # (N,) qEᵀqP·qE − pEᵀpP·pE
    logdet: np.ndarray  # (N,) ln|qP| + ln|pC|
    pP: np.ndarray  # (p, p)
    Q: np.ndarray  # (m, p, p)


def _data(
    qE: np.ndarray, qC: np.ndarray, pE: np.ndarray, pC: np.ndarray, X: np.ndarray, Q: np.ndarray
) -> _Data:
    qC = (qC + np.swapaxes(qC, 1, 2)) / 2.0
    sign, ld_qC = np.linalg.slogdet(qC)
    if np.any(sign <= 0):
        bad = np.flatnonzero(sign <= 0)
        raise ValueError(
            f"posterior covariance of participant(s) {bad.tolist()} is not positive definite"
        )
    qP = np.linalg.inv(qC)
    pP = np.linalg.inv(pC)
    c = np.einsum("nij,nj->ni", qP, qE) - pP @ pE
    const = np.einsum("ni,nij,nj->n", qE, qP, qE) - pE @ pP @ pE
    return _Data(X=X, qP=qP, c=c, const=const, logdet=-ld_qC + np.linalg.slogdet(pC)[1], pP=pP, Q=Q)


def _terms(data: _Data, B: np.ndarray, g: np.ndarray, hessian: bool = True):
    """ΔFᵢ at (β, γ) and the gradient and Hessian of ΣΔFᵢ in (vec β, γ).

    Returns dF (N,), grad (p·k + m,), H (p·k + m, p·k + m) (None if not ``hessian``).
    """
    X, Q = data.X, data.Q
    N, k = X.shape
    p = B.shape[0]
    P = np.exp(g)[:, None, None] * Q  # (m, p, p) scaled components
    rP = P.sum(axis=0)
    rC = np.linalg.inv(rP)
    rE = X @ B.T  # (N, p)
    sP = data.qP + rP[None] - data.pP[None]
    sign, ld_sP = np.linalg.slogdet(sP)
    if np.any(sign <= 0):
        raise np.linalg.LinAlgError("reduced posterior precision not positive definite")
    sC = np.linalg.inv(sP)
    bb = data.c + rE @ rP
    sE = np.einsum("nij,nj->ni", sC, bb)
    dF = 0.5 * (np.linalg.slogdet(rP)[1] + data.logdet - ld_sP) - 0.5 * (
        data.const + np.einsum("ni,ij,nj->n", rE, rP, rE) - np.einsum("ni,ni->n", bb, sE)
    )
    d = sE - rE  # (N, p)
    grad_B = (rP @ d.T @ X).ravel(order="F")
    Pd = np.einsum("mab,nb->mna", P, d)  # (m, N, p)
    grad_g = 0.5 * np.einsum("mab,nba->m", P, rC[None] - sC) - 0.5 * np.einsum("mna,na->m", Pd, d)
    grad = np.concatenate([grad_B, grad_g])
    if not hessian:
        return dF, grad, None
    Hi = np.einsum("ab,nbc,cd->nad", rP, sC, rP) - rP[None]
    H_BB = np.einsum("na,nb,nij->aibj", X, X, Hi).reshape(k * p, k * p)
    # ∂/∂γⱼ of the β gradient: Σᵢ Xᵢ ⊗ (I − rP·sCᵢ)·Pⱼ·dᵢ
    v = Pd - np.einsum("ab,nbc,mnc->mna", rP, sC, Pd)
    H_Bg = np.einsum("mna,nk->kam", v, X).reshape(k * p, -1)
    sCP = np.einsum("nab,mbc->mnac", sC, P)  # sCᵢ·Pⱼ
    rCP = np.einsum("ab,mbc->mac", rC, P)
    H_gg = (
        0.5 * np.einsum("lnab,mnba->ml", sCP, sCP)
        - 0.5 * N * np.einsum("lab,mba->ml", rCP, rCP)
        + np.einsum("mna,lnab,nb->ml", Pd, sCP, d)
    )
    H_gg = H_gg + np.diag(grad_g)
    H = np.block([[H_BB, H_Bg], [H_Bg.T, H_gg]])
    return dF, grad, (H + H.T) / 2.0


# --- estimation -----------------------------------------------------------------------------


def estimate_peb(
    qE: np.ndarray,
    qC: np.ndarray,
    pE: np.ndarray,
    pC: np.ndarray,
    X: np.ndarray,
    *,
    F_first: np.ndarray | None = None,
    parameters: Sequence[str] | None = None,
    covariates: Sequence[str] | None = None,
    components: Components = "single",
    beta: float = BETA,
    alpha: float = 1.0,
    hE: float = H_MEAN,
    hC: float = H_VAR,
    max_iter: int = MAX_ITER,
) -> PEBResult:
    """Estimate a PEB model from first-level posteriors.

    Parameters
    ----------
    qE : (N, p) first-level posterior means of the modelled parameters.
    qC : (N, p, p) their posterior covariances (marginal over the modelled parameters).
    pE, pC : (p,), (p, p) the first-level prior of those parameters (shared by everyone;
        every variance must be positive).
    X : (N, k) design; the first column constant (the group mean), the others covariates
        (mean-centre them so the first column's effects are group means).
    F_first : (N,) first-level free energies (nats), added to F (default: left out).
    parameters, covariates : names for the p parameters and k design columns.
    components : random-effects precision components ('single', 'fields', 'all' or index
        groups), see :func:`precision_components`.
    beta : first-level prior precision ÷ expected between-participant precision (16).
    alpha : the group effects' prior covariance is divided by alpha (1).
    hE, hC : prior mean and variance of each log-precision γ (0, 1/16).
    max_iter : maximum Newton iterations.

    Returns
    -------
    :class:`PEBResult`.
    """
    qE, qC, pE, pC, X = (np.asarray(a, dtype=float) for a in (qE, qC, pE, pC, X))
    if X.ndim == 1:
        X = X[:, None]
    _check_inputs(qE, qC, pE, pC, X, parameters)
    N, p = qE.shape
    k = X.shape[1]
    names = tuple(parameters) if parameters is not None else tuple(f"p{i}" for i in range(p))
    cov_names = (
        tuple(covariates)
        if covariates is not None
        else ("mean",) + tuple(f"x{j}" for j in range(1, k))
    )
    if len(cov_names) != k:
        raise ValueError(f"{len(cov_names)} covariate names for {k} design columns")
    pC = (pC + pC.T) / 2.0
    Q = precision_components(pC, components, names, beta)
    m = Q.shape[0]
    bE, bC = second_level_prior(pE, pC, X, alpha)
    bP = np.linalg.inv(bC)
    gE = np.full(m, hE)
    gP = np.eye(m) / hC
    data = _data(qE, qC, pE, pC, X, Q)
    prior_P = np.block([[bP, np.zeros((p * k, m))], [np.zeros((m, p * k)), gP]])
    theta0 = np.concatenate([bE.ravel(order="F"), gE])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        B = theta[: p * k].reshape(p, k, order="F")
        dF, grad, H = _terms(data, B, theta[p * k :])
        assert H is not None  # _terms computes the Hessian unless told not to
        e = theta - theta0
        L = float(dF.sum() - 0.5 * e @ prior_P @ e)
        grad = grad - prior_P @ e
        return L, dF, grad, H - prior_P

    theta = theta0.copy()
    L, dF, grad, H = objective(theta)
    lam = 1e-6  # Levenberg–Marquardt damping, relative to the curvature's scale
    converged = False
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        scale = np.abs(np.diag(H)).max()
        step = None
        while lam < 1e12:
            A = -H + lam * scale * np.eye(H.shape[0])
            try:
                np.linalg.cholesky(A)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            step = np.linalg.solve(A, grad)
            # at most one unit of log-precision per step: far from the prior the reduced
            # evidence loses precision, and a wild step could look like a gain
            step[p * k :] = np.clip(step[p * k :], -MAX_LOG_STEP, MAX_LOG_STEP)
            try:
                L_new, dF_new, grad_new, H_new = objective(theta + step)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            if np.isfinite(L_new) and L_new >= L:
                break
            lam *= 10.0
        else:
            break  # no ascent direction found: at the maximum to numerical precision
        gain = L_new - L
        theta, L, dF, grad, H = theta + step, L_new, dF_new, grad_new, H_new
        lam = max(lam / 10.0, 1e-12)
        if gain < TOL and np.abs(step).max() < 1e-6:
            converged = True
            break
    if not converged and np.abs(grad).max() < 1e-6:
        converged = True  # stopped because no step improved on a stationary point

    negH = -H
    sign, logdet = np.linalg.slogdet(negH)
    if sign <= 0:
        raise ValueError("PEB: the free energy has no maximum (Hessian not negative definite)")
    C = np.linalg.inv(negH)
    C = (C + C.T) / 2.0
    e = theta - theta0
    F_first_sum = 0.0 if F_first is None else float(np.sum(F_first))
    F = (
        F_first_sum
        + float(dF.sum())
        - 0.5 * logdet
        + 0.5 * np.linalg.slogdet(prior_P)[1]
        - 0.5 * e @ prior_P @ e
    )
    return PEBResult(
        parameters=names,
        covariates=cov_names,
        X=X,
        Ep=theta[: p * k].reshape(p, k, order="F"),
        Cp=C[: p * k, : p * k],
        Eh=theta[p * k :],
        Ch=C[p * k :, p * k :],
        F=float(F),
        prior_mean=bE,
        prior_cov=bC,
        components=Q,
        pE=pE,
        pC=pC,
        dF=dF,
        F_first=F_first_sum,
        n_iter=n_iter,
        converged=converged,
    )


# --- empirical priors back to the participants ----------------------------------------------


def empirical_priors(result: PEBResult) -> tuple[np.ndarray, np.ndarray]:
    """Each participant's empirical prior: means (N, p) and the shared covariance (p, p)."""
    return result.empirical_prior_means, result.random_covariance


def empirical_posteriors(
    result: PEBResult,
    qE: np.ndarray,
    qC: np.ndarray,
    pE: np.ndarray | None = None,
    pC: np.ndarray | None = None,
    index: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-estimate each participant under the PEB's empirical priors, by model reduction.

    Parameters
    ----------
    result : the PEB.
    qE, qC : (N, n), (N, n, n) first-level posteriors over n ≥ p parameters.
    pE, pC : (n,), (n, n) their first-level prior (default: the PEB's, when n = p).
    index : positions of the PEB's p parameters among the n (default: 0..p−1). The other
        parameters keep their first-level prior, which must be independent a priori of
        the modelled ones.

    Returns
    -------
    Ep (N, n), Cp (N, n, n): posteriors under the empirical priors; dF (N,): the change in
    each participant's free energy (nats).
    """
    qE = np.asarray(qE, dtype=float)
    qC = np.asarray(qC, dtype=float)
    p = result.pE.size
    idx = np.arange(p) if index is None else np.asarray(index, dtype=int)
    if idx.shape != (p,):
        raise ValueError(f"index must give the positions of the PEB's {p} parameters")
    pE = result.pE if pE is None else np.asarray(pE, dtype=float)
    pC = result.pC if pC is None else np.asarray(pC, dtype=float)
    n = pE.size
    if qE.ndim != 2 or qE.shape[1] != n or qC.shape != (qE.shape[0], n, n):
        raise ValueError(f"qE, qC must be (N, {n}) and (N, {n}, {n}); got {qE.shape}, {qC.shape}")
    if qE.shape[0] != result.X.shape[0]:
        raise ValueError(f"{qE.shape[0]} posteriors for a PEB of {result.X.shape[0]} participants")
    if not (np.allclose(pE[idx], result.pE) and np.allclose(pC[np.ix_(idx, idx)], result.pC)):
        raise ValueError("the first-level prior of the modelled parameters differs from the PEB's")
    rest = np.setdiff1d(np.arange(n), idx)
    if np.abs(pC[np.ix_(idx, rest)]).max(initial=0.0) > 0:
        raise ValueError("modelled parameters are correlated a priori with the others")
    means, cov = empirical_priors(result)
    rC = pC.copy()
    rC[np.ix_(idx, idx)] = cov
    Ep = np.empty_like(qE)
    Cp = np.empty_like(qC)
    dF = np.empty(qE.shape[0])
    for i in range(qE.shape[0]):
        rE = pE.copy()
        rE[idx] = means[i]
        red = reduce_posterior(pE, pC, qE[i], qC[i], rE, rC)
        Ep[i], Cp[i], dF[i] = red.Ep, red.Cp, red.dF
    return Ep, Cp, dF


# --- model reduction over the group effects -------------------------------------------------


def reduce_peb(result: PEBResult, max_exhaustive: int = 8) -> PEBReduction:
    """Bayesian model reduction and averaging over the PEB's p·k group effects.

    Each reduced model switches some group effects off (fixes them at zero); the search is
    :func:`~kp_science.dcm.reduction.search_reduced_models` (every subset when at most
    ``max_exhaustive`` effects, else greedy rounds), as SPM's ``spm_dcm_peb_bmc`` does
    without a model space. Returns averaged means and SDs and, per effect, the posterior
    probability that it is present, all (p, k).
    """
    p, k = result.Ep.shape
    search = search_reduced_models(
        result.prior_mean.ravel(order="F"),
        result.prior_cov,
        result.Ep.ravel(order="F"),
        result.Cp,
        max_exhaustive=max_exhaustive,
        off_mean=np.zeros(p * k),
    )
    sd = np.sqrt(np.clip(np.diag(search.Cp), 0.0, None))
    return PEBReduction(
        Ep=search.Ep.reshape(p, k, order="F"),
        sd=sd.reshape(p, k, order="F"),
        Pp=search.Pp.reshape(p, k, order="F"),
        Cp=search.Cp,
        search=search,
    )
