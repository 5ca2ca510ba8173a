"""Parametric empirical Bayes (PEB) over first-level DCM posteriors.

The second-level model (Friston et al. 2016, NeuroImage 128:413; Zeidman et al. 2019,
NeuroImage 200:12) treats the first-level parameters θᵢ of participant i (p of them, e.g.
every free A and B connection) as

    θᵢ = (Xᵢ ⊗ I_p)·vec(β) + εᵢ,   εᵢ ~ N(0, Π(γ)⁻¹),   Π(γ) = Π_floor + Σⱼ exp(γⱼ)·Qⱼ,

with X (N × k) the between-participant design, β (p × k) the group effects and γ the
log-precisions of the random (between-participant) effects. No first-level model is
re-fitted: replacing participant i's first-level prior N(pE, pC) by the empirical prior
N((Xᵢ ⊗ I)β, Π(γ)⁻¹) changes their free energy by a closed-form Bayesian-model-reduction
ΔFᵢ(β, γ) (:mod:`.reduction`), so the second-level log evidence is
Σᵢ(Fᵢ + ΔFᵢ(β, γ)) + ln p(β) + ln p(γ), maximised over (β, γ) by variational Laplace on its
exact gradient and Hessian.

Defaults (SPM12's ``spm_dcm_peb``):

- random effects: one precision component ('single'), Q = 16·pC⁻¹ — a priori the
  between-participant variance is 1/16 of the first-level prior variance (``beta`` = 16);
  γ ~ N(0, 1/16);
- group effects: the constant column's effects ~ N(pE, pC); every other column j's effects
  ~ N(0, pC / mean(X[:, j]²)) — the first-level prior for a covariate scaled to unit root
  mean square, so the prior does not depend on the covariate's units (SPM12 divides the
  prior covariance of column j by ΣᵢXᵢⱼ²/N).

Two estimation methods (``method``):

``"spm12"`` (default) reproduces SPM12 r7771's ``spm_dcm_peb`` as it runs, with these
facts of that implementation (its 12-participant reference, ``tests/science/dcm``, is met
to 1e-6 in the means):

1. with two or more participants each first-level posterior is widened towards its prior
   before use: its precision gains pC⁻¹/16 (SPM: "to accommodate inefficient inversions");
2. the random-effects precision has a floor, Π_floor = e⁻⁸·beta·pC⁻¹;
3. (β, γ) move together by Fisher scoring: the step is dθ = (exp(τH) − I)·H⁻¹·g (H, g the
   curvature and gradient of F), τ = exp(t − ln|H|/n), through the matrix exponential of
   the augmented matrix [[0, 0], [τg, τH]]; γ moves by tanh of its step. t starts at −4.
   A point whose F is at least the best so far is kept and t ← min(t + ¼, 2); otherwise the
   best point is restored and t ← max(t − 1, −4), and the next step is still the one
   computed from the rejected point's gradient and curvature (SPM restores the expansion
   point and the diagonal blocks of the curvature only). When a step's L1 norm reaches 8 it
   is recomputed without the β–γ cross-curvature;
4. it stops after a step, from the fifth iteration on, once t ≤ −4 or the last accepted gain
   in F is below 1e−4 nats; at most 64 iterations;
5. reported: β and γ after that last step; the covariances (−∂²F/∂β²)⁻¹ and (−∂²F/∂γ²)⁻¹ —
   each conditional on the other block — and F, all at the last point evaluated; F's
   second-level complexity is ½·bᵀΠ_β·b + ½·gᵀΠ_γ·g − ½·ln|Π₀·C| with b and g the estimates
   themselves, not their deviations from the prior means (C the inverse negative Hessian
   over (β, γ), Π₀ the prior precision).

``"exact"`` is the model as published, maximised to numerical precision: the posteriors
enter as given, no precision floor, Newton steps with Levenberg–Marquardt damping until the
gain and the step vanish; Cp is the (β, β) block of the inverse negative Hessian over
(β, γ) — it carries the uncertainty about γ — and
F = ΣFᵢ + ΣΔFᵢ + ½ln|C·Π₀| − ½eᵀΠ₀e (e the deviation from the prior means).

Vectors over second-level parameters are vec(β), column-major: all p parameters of the
first covariate, then of the second, and so on (SPM's order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

# method "spm12" (module docstring, facts 1-5)
SPM_SHRINK = 16.0  # a posterior's precision gains pC⁻¹/SPM_SHRINK
SPM_FLOOR = float(np.exp(-8.0))  # random-effects precision floor, × beta·pC⁻¹
SPM_MAX_ITER = 64
SPM_LOG_TIME = (-4.0, 2.0)  # start (and floor) and ceiling of the log integration time t
SPM_LOG_TIME_UP, SPM_LOG_TIME_DOWN = 0.25, 1.0
SPM_MAX_STEP_L1 = 8.0  # larger steps are recomputed without the β–γ cross-curvature
SPM_MIN_GAIN = 1e-4  # nats
SPM_MIN_ITER = 5

# method "exact"
MAX_ITER = 128
TOL = 1e-9  # convergence: objective gain (nats) and largest step
MAX_LOG_STEP = 1.0  # largest change of a log-precision in one step

Method = Literal["spm12", "exact"]
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
    floor : (p, p) precision floor added to the random-effects precision (zero for
        method "exact").
    pE, pC : (p,), (p, p) first-level prior of the modelled parameters.
    dF : (N,) change in each participant's free energy (nats) when their prior is replaced
        by the empirical prior N((Xᵢ ⊗ I)·vec(Ep), Π(Eh)⁻¹), from their posterior as given.
    F_first : sum of the first-level free energies used (0 if none were given).
    method : "spm12" or "exact" (module docstring).
    n_iter : iterations run.
    converged : whether the stopping rule was met before the iteration limit.
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
    floor: np.ndarray
    pE: np.ndarray
    pC: np.ndarray
    dF: np.ndarray
    F_first: float
    method: Method
    n_iter: int
    converged: bool

    @property
    def sd(self) -> np.ndarray:
        """(p, k) posterior standard deviations of β."""
        p, k = self.Ep.shape
        return np.sqrt(np.clip(np.diag(self.Cp), 0.0, None)).reshape(p, k, order="F")

    @property
    def random_precision(self) -> np.ndarray:
        """(p, p) expected between-participant precision Π(Eh), floor included."""
        return self.floor + np.einsum("m,mij->ij", np.exp(self.Eh), self.components)

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
    floor: np.ndarray  # (p, p) added to Σ exp(γⱼ)·Qⱼ


def _data(
    qE: np.ndarray,
    qC: np.ndarray,
    pE: np.ndarray,
    pC: np.ndarray,
    X: np.ndarray,
    Q: np.ndarray,
    floor: np.ndarray | None = None,
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
    return _Data(
        X=X,
        qP=qP,
        c=c,
        const=const,
        logdet=-ld_qC + np.linalg.slogdet(pC)[1],
        pP=pP,
        Q=Q,
        floor=np.zeros_like(pP) if floor is None else floor,
    )


def _terms(data: _Data, B: np.ndarray, g: np.ndarray, hessian: bool = True):
    """ΔFᵢ at (β, γ) and the gradient and Hessian of ΣΔFᵢ in (vec β, γ).

    Returns dF (N,), grad (p·k + m,), H (p·k + m, p·k + m) (None if not ``hessian``).
    """
    X, Q = data.X, data.Q
    N, k = X.shape
    p = B.shape[0]
    P = np.exp(g)[:, None, None] * Q  # (m, p, p) scaled components
    rP = data.floor + P.sum(axis=0)
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


@dataclass(frozen=True, eq=False)
class _Point:
    """The objective at one (vec β, γ): F as the method scores it, its gradient and Hessian
    (prior included), and each participant's ΔFᵢ."""

    theta: np.ndarray
    F: float
    grad: np.ndarray
    H: np.ndarray
    dF: np.ndarray


def _block_diagonal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[[a, 0], [0, b]] for square a, b."""
    return np.block(
        [[a, np.zeros((a.shape[0], b.shape[1]))], [np.zeros((b.shape[0], a.shape[1])), b]]
    )


def _shrink_posteriors(qC: np.ndarray, pC: np.ndarray, ratio: float) -> np.ndarray:
    """(N, p, p) posterior covariances whose precisions gain pC⁻¹/ratio (SPM12, fact 1)."""
    qP = np.linalg.inv((qC + np.swapaxes(qC, 1, 2)) / 2.0)
    widened = np.linalg.inv(qP + np.linalg.inv(pC)[None] / ratio)
    return (widened + np.swapaxes(widened, 1, 2)) / 2.0


def _expm_step(H: np.ndarray, grad: np.ndarray, log_time: float) -> np.ndarray:
    """(exp(τH) − I)·H⁻¹·grad, τ = exp(log_time − ln|H|/n): SPM12's regularised Fisher step
    (fact 3; SPM evaluates it as the matrix exponential of [[0, 0], [τ·grad, τ·H]]). For a
    symmetric H = V·diag(λ)·Vᵀ it is V·diag(expm1(τλ)/λ)·Vᵀ·grad, computed so here."""
    w, V = np.linalg.eigh((H + H.T) / 2.0)
    size = np.abs(w)
    usable = (size > 1e-16) & (size < 1e16)  # the singular values SPM's log-determinant keeps
    tau = np.exp(log_time - np.log(size[usable]).sum() / grad.size)
    x = tau * w
    safe_w = np.where(x == 0.0, 1.0, w)
    factor = np.where(x == 0.0, tau, np.expm1(x) / safe_w)  # → τ as λ → 0
    return V @ (factor * (V.T @ grad))


def _spm12_fisher_scoring(
    evaluate: Callable[[np.ndarray], _Point], theta0: np.ndarray, n_beta: int, max_iter: int
) -> tuple[np.ndarray, _Point, int, bool]:
    """SPM12's schedule (facts 3-4). Returns the estimate after the last step, the last
    point evaluated, the iterations run and whether the stopping rule was met."""
    theta = theta0.copy()
    log_time = SPM_LOG_TIME[0]
    best: _Point | None = None
    gain = 0.0
    last: _Point | None = None
    for n_iter in range(1, max_iter + 1):
        try:
            point = evaluate(theta)
        except np.linalg.LinAlgError:
            point = None  # not a valid model: treated as a worse point
        if point is not None and (best is None or point.F >= best.F):
            gain = 0.0 if best is None else point.F - best.F
            best = point
            log_time = min(log_time + SPM_LOG_TIME_UP, SPM_LOG_TIME[1])
        else:
            if best is None:
                raise ValueError("PEB: the free energy cannot be evaluated at the prior means")
            log_time = max(log_time - SPM_LOG_TIME_DOWN, SPM_LOG_TIME[0])
            theta = best.theta
        step_from = point if point is not None else best
        last = step_from
        step = _expm_step(step_from.H, step_from.grad, log_time)
        if np.abs(step).sum() >= SPM_MAX_STEP_L1:
            # the restored point's diagonal blocks, the evaluated point's gradient
            diagonal = _block_diagonal(best.H[:n_beta, :n_beta], best.H[n_beta:, n_beta:])
            step = _expm_step(diagonal, step_from.grad, log_time)
        theta = np.concatenate(
            [theta[:n_beta] + step[:n_beta], theta[n_beta:] + np.tanh(step[n_beta:])]
        )
        if n_iter >= SPM_MIN_ITER and (log_time <= SPM_LOG_TIME[0] or gain < SPM_MIN_GAIN):
            return theta, last, n_iter, True
    assert last is not None  # max_iter ≥ 1
    return theta, last, max_iter, False


def _newton_maximum(
    evaluate: Callable[[np.ndarray], _Point], theta0: np.ndarray, n_beta: int, max_iter: int
) -> tuple[np.ndarray, _Point, int, bool]:
    """Newton steps with Levenberg–Marquardt damping to the maximum (method "exact").
    Returns the maximum, the point there, the iterations run and whether it converged."""
    point = evaluate(theta0)
    lam = 1e-6  # damping, relative to the curvature's scale
    converged = False
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        scale = np.abs(np.diag(point.H)).max()
        new = None
        step = np.zeros_like(theta0)
        while lam < 1e12:
            A = -point.H + lam * scale * np.eye(point.H.shape[0])
            try:
                np.linalg.cholesky(A)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            step = np.linalg.solve(A, point.grad)
            # at most one unit of log-precision per step: far from the prior the reduced
            # evidence loses precision, and a wild step could look like a gain
            step[n_beta:] = np.clip(step[n_beta:], -MAX_LOG_STEP, MAX_LOG_STEP)
            try:
                new = evaluate(point.theta + step)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            if np.isfinite(new.F) and new.F >= point.F:
                break
            lam *= 10.0
        else:
            break  # no ascent direction found: at the maximum to numerical precision
        assert new is not None
        gain = new.F - point.F
        point = new
        lam = max(lam / 10.0, 1e-12)
        if gain < TOL and np.abs(step).max() < 1e-6:
            converged = True
            break
    if not converged and np.abs(point.grad).max() < 1e-6:
        converged = True  # stopped because no step improved on a stationary point
    return point.theta, point, n_iter, converged


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
    method: Method = "spm12",
    max_iter: int | None = None,
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
    method : "spm12" (SPM12's spm_dcm_peb as it runs) or "exact" (module docstring).
    max_iter : maximum iterations (default 64 for "spm12", 128 for "exact").

    Returns
    -------
    :class:`PEBResult`.
    """
    if method not in ("spm12", "exact"):
        raise ValueError(f"method must be 'spm12' or 'exact', got {method!r}")
    if max_iter is not None and max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
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
    spm12 = method == "spm12"
    pC = (pC + pC.T) / 2.0
    Q = precision_components(pC, components, names, beta)
    m = Q.shape[0]
    floor = SPM_FLOOR * beta * np.linalg.inv(pC) if spm12 else np.zeros((p, p))
    bE, bC = second_level_prior(pE, pC, X, alpha)
    bP = np.linalg.inv(bC)
    gE = np.full(m, hE)
    gP = np.eye(m) / hC
    prior_P = _block_diagonal(bP, gP)
    ln_prior_P = np.linalg.slogdet(prior_P)[1]
    theta0 = np.concatenate([bE.ravel(order="F"), gE])
    n_beta = p * k
    qC_used = _shrink_posteriors(qC, pC, SPM_SHRINK) if spm12 and N > 1 else qC
    data = _data(qE, qC_used, pE, pC, X, Q, floor)
    F_first_sum = 0.0 if F_first is None else float(np.sum(F_first))

    def evaluate(theta: np.ndarray) -> _Point:
        B = theta[:n_beta].reshape(p, k, order="F")
        dF, grad, H = _terms(data, B, theta[n_beta:])
        assert H is not None  # _terms computes the Hessian unless told not to
        e = theta - theta0
        H = H - prior_P
        if spm12:  # the objective SPM12 accepts steps on (fact 5)
            complexity = theta @ prior_P @ theta - ln_prior_P + np.linalg.slogdet(H)[1]
            F = F_first_sum + float(dF.sum()) - 0.5 * complexity
        else:  # the log joint; the Laplace terms are added at the maximum
            F = float(dF.sum() - 0.5 * e @ prior_P @ e)
        return _Point(theta=theta, F=F, grad=grad - prior_P @ e, H=H, dF=dF)

    if spm12:
        theta, last, n_iter, converged = _spm12_fisher_scoring(
            evaluate, theta0, n_beta, SPM_MAX_ITER if max_iter is None else max_iter
        )
        # conditional covariances at the last point evaluated (fact 5)
        Cp = np.linalg.inv(-last.H[:n_beta, :n_beta])
        Ch = np.linalg.inv(-last.H[n_beta:, n_beta:])
        F = last.F
    else:
        theta, last, n_iter, converged = _newton_maximum(
            evaluate, theta0, n_beta, MAX_ITER if max_iter is None else max_iter
        )
        sign, logdet = np.linalg.slogdet(-last.H)
        if sign <= 0:
            raise ValueError("PEB: the free energy has no maximum (Hessian not negative definite)")
        C = np.linalg.inv(-last.H)
        Cp, Ch = C[:n_beta, :n_beta], C[n_beta:, n_beta:]
        F = F_first_sum + last.F - 0.5 * logdet + 0.5 * ln_prior_P
    Ep = theta[:n_beta].reshape(p, k, order="F")
    # each participant's ΔF under the reported empirical prior, from their posterior as given
    dF = _terms(_data(qE, qC, pE, pC, X, Q, floor), Ep, theta[n_beta:], hessian=False)[0]
    return PEBResult(
        parameters=names,
        covariates=cov_names,
        X=X,
        Ep=Ep,
        Cp=(Cp + Cp.T) / 2.0,
        Eh=theta[n_beta:],
        Ch=(Ch + Ch.T) / 2.0,
        F=float(F),
        prior_mean=bE,
        prior_cov=bC,
        components=Q,
        floor=floor,
        pE=pE,
        pC=pC,
        dF=dF,
        F_first=F_first_sum,
        method=method,
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
