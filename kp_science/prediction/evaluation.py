"""Honest evaluation of the LOO elastic net: nested LOO, permutation test, bootstrap.

(Their K-fold counterparts, used above ``EnetSettings.loo_max_participants``
participants, are in :mod:`.kfold`.)

* :func:`nested_loo` — each participant is predicted by a model whose whole selection (grid
  search by inner LOO, refit) saw only the other participants; r and RMSE of those
  predictions are the out-of-sample performance. (The LOO error of the selected grid point
  is optimistically biased: it is the minimum over 500 grid points.)
* :func:`permutation_test` — the statistic is the minimum LOO error over the grid; under the
  null it is recomputed with the outcome permuted and the *whole* selection repeated
  (grid recomputed, every fold × grid point refitted), so the selection's optimism is in
  the null distribution too. ``p = (1 + #{perm ≤ observed}) / (1 + n_permutations)``;
  "≤" allows a relative 1e-9 so that permutations whose best model is, like the observed
  one, the empty model (whose LOO error does not depend on the order of y) count as ties.
* :func:`bootstrap_selection` — how often each term is selected (nonzero) when the data are
  resampled with replacement and the model refitted. The selected grid point (l1_ratio,
  alpha) is *reused*, not re-selected by LOO per resample: re-running the 10 500-fit LOO
  search 500 times would cost half a permutation test again, and LOO on a bootstrap sample
  is ill-posed anyway (a held-out participant's duplicates stay in training). So the
  frequency measures the stability of the selected model's support, conditional on its
  penalty.

Speed: the permutation test solves up to 10 500 elastic-net paths per permutation (21 folds
× 10 l1_ratios, 50 grid points each) — 10⁷ fits for 1000 permutations — in compiled code
(:mod:`.kernels`, a few µs per fit). Only whether a permutation's minimum is ≤ the observed
one matters, and every rule that skips work keeps that verdict exactly (so the p-value is
the one of the full computation, for every data set; ``exact_null=True`` computes every
minimum instead):

1. LOO squared errors only add up over folds, so each (permutation, l1_ratio) takes its
   folds one by one; a grid point whose partial sum already exceeds n × the observed
   minimum can never come back below it (it is dead), the l1_ratio's paths are cut after
   its last live grid point, and the l1_ratio is abandoned when none is left.
2. A permutation is decided as soon as one l1_ratio completes all folds with a minimum ≤
   the observed one: the other l1_ratios cannot change "as good". So l1_ratios are tried
   in the order most likely to decide — those that decided the most permutations so far
   in the same block first, initially from the outside in (lasso, 0.1, 0.9, …: under the
   null the minimum sits most often at an extreme).
3. Folds with large errors come first, so that grid points die early: the first l1_ratio
   takes the folds by decreasing |permuted outcome − mean|, later ones by the mean squared
   error the folds had in the earlier l1_ratios of the same permutation.

What remains is the work that decides the verdict: on a null study about a fifth of the
full computation, less with a clear effect (the observed error is then far below the
null's). Permutations are split into blocks of 25 over ``n_jobs`` threads (the kernels
release the GIL); the result does not depend on the blocks or the number of threads.

Not done, deliberately: a sequential Monte-Carlo p-value (stop once, say, 50 permutations
were as good as the observed data, Besag & Clifford 1991). It would give exactly the same
verdict whenever p < 0.05, and cut the null study's cost several-fold, but it reports a
different p-value (a bound or an estimate) whenever p ≥ 0.05 — and the p-value reported
must be the one of all ``n_permutations``, significant or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp_science.prediction import kernels
from kp_science.prediction.elastic_net import (
    DEFAULT_L1_RATIOS,
    LooSelection,
    grid_fractions,
    loo_folds,
    loo_many,
    loo_select,
    penalties,
    standardize,
)
from kp_science.prediction.parallel import run_parallel, single_blas_thread
from kp_science.prediction.solver import PathStats, enet_paths, prepare_designs

_TIE_RTOL = 1e-9


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, NaN when either side is constant."""
    a = np.asarray(a, dtype=float) - np.mean(a)
    b = np.asarray(b, dtype=float) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


@dataclass
class NestedResult:
    """Nested-LOO predictions (n,) in outcome units, their r and RMSE against y, and the
    l1_ratio and alpha each outer fold selected."""

    predicted: np.ndarray
    r: float
    rmse: float
    l1_ratios: np.ndarray
    alphas: np.ndarray


@single_blas_thread
def nested_loo(
    X: np.ndarray,
    y: np.ndarray,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    n_jobs: int = 1,
) -> NestedResult:
    """Out-of-sample predictions with the whole selection repeated inside each outer fold.

    For outer fold k: grid, inner LOO and selection on the other n − 1 participants, refit
    on them (z-scored with their statistics), predict participant k. X (n, p), y (n,);
    ``n_jobs``: worker threads (outer folds are split between them).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(y)
    chunks = np.array_split(np.arange(n), max(1, min(n_jobs, n)))
    grid = (tuple(l1_ratios), n_alphas, eps)
    parts = run_parallel(_nested_chunk, [(X, y, ks, *grid) for ks in chunks], n_jobs)
    predicted = np.concatenate([p[0] for p in parts])
    return NestedResult(
        predicted=predicted,
        r=pearson_r(y, predicted),
        rmse=float(np.sqrt(np.mean((y - predicted) ** 2))),
        l1_ratios=np.concatenate([p[1] for p in parts]),
        alphas=np.concatenate([p[2] for p in parts]),
    )


def _nested_chunk(
    X: np.ndarray,
    y: np.ndarray,
    ks: np.ndarray,
    l1_ratios: tuple[float, ...],
    n_alphas: int,
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nested-LOO predictions of participants ``ks``: (predicted, l1_ratio, alpha)."""
    n = len(y)
    keep = [np.delete(np.arange(n), k) for k in ks]
    inner = loo_many([(X[i], y[i]) for i in keep], l1_ratios, n_alphas, eps)
    # the refits in one batch: design k = outer-training data z-scored, path to its pick
    rho = np.asarray(l1_ratios, dtype=float)
    designs, evals, Y, mus, lams, t_last = [], [], [], [], [], []
    for k, train, sel in zip(ks, keep, inner, strict=True):
        z, zk, _, _ = standardize(X[train], X[k : k + 1])
        r, t = sel.best
        mu, lam = penalties(sel.alphas[r : r + 1], rho[r : r + 1], n - 1)
        designs.append(z)
        evals.append(zk)
        Y.append(y[train])
        mus.append(mu[0])
        lams.append(lam[0])
        t_last.append(t)
    pred, _, _ = enet_paths(
        np.stack(designs),
        np.stack(Y),
        np.stack(mus),
        np.stack(lams),
        which=np.arange(len(ks)),
        X_eval=np.stack(evals),
        t_last=np.array(t_last),
    )
    assert pred is not None  # predictions come back for the given X_eval
    predicted = np.array([y[train].mean() + pred[i, t_last[i], 0] for i, train in enumerate(keep)])
    return (predicted, np.array([s.l1_ratio for s in inner]), np.array([s.alpha for s in inner]))


@dataclass
class PermutationResult:
    """Permutation test of the minimum LOO error.

    ``p_value`` = (1 + n_as_good) / (1 + n_permutations); ``observed_mse``: minimum LOO
    error of the real data; ``null_mse`` (n_permutations,): each permutation's minimum, or
    None when pruning left it uncomputed; ``stats``: solver work counters.
    """

    p_value: float
    n_permutations: int
    n_as_good: int
    observed_mse: float
    null_mse: np.ndarray | None
    stats: PathStats


@single_blas_thread
def permutation_test(
    X: np.ndarray,
    y: np.ndarray,
    n_permutations: int = 1000,
    seed: int = 0,
    *,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    observed: LooSelection | None = None,
    exact_null: bool = False,
    n_jobs: int = 1,
    chunk: int = 25,
) -> PermutationResult:
    """p-value of the minimum LOO error, the outcome permuted and the selection repeated.

    X (n, p), y (n,); ``observed``: the real data's :func:`loo_select` if already computed;
    ``exact_null``: compute every permutation's minimum (no pruning; slower);
    ``n_jobs``: worker threads; ``chunk``: permutations per work item (load balance only —
    the result does not depend on it).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(y)
    if observed is None:
        observed = loo_select(X, y, l1_ratios, n_alphas, eps)
    obs = observed.min_mse
    rng = np.random.default_rng(seed)
    perms = np.array([rng.permutation(n) for _ in range(n_permutations)], dtype=np.intp)
    if n_permutations == 0:
        return PermutationResult(float("nan"), 0, 0, obs, None, PathStats())
    folds = _PermutationFolds(X, l1_ratios, n_alphas, eps)
    blocks = [perms[i : i + chunk] for i in range(0, n_permutations, chunk)]
    results = run_parallel(
        _permutation_block, [(b, y, folds, obs, exact_null) for b in blocks], n_jobs
    )
    best = np.concatenate([r[0] for r in results])
    n_as_good = int((best <= obs * (1 + _TIE_RTOL)).sum())
    stats = PathStats()
    for r in results:
        stats.add(r[1])
    return PermutationResult(
        p_value=(1 + n_as_good) / (1 + n_permutations),
        n_permutations=n_permutations,
        n_as_good=n_as_good,
        observed_mse=obs,
        null_mse=best if exact_null else None,
        stats=stats,
    )


class _PermutationFolds:
    """What every permutation shares: the LOO folds' z-scored designs (they do not depend on
    the outcome), their Gram matrices and ranks, the grid's shape and the order in which the
    mixing ratios are tried first."""

    def __init__(
        self, X: np.ndarray, l1_ratios: tuple[float, ...], n_alphas: int, eps: float
    ) -> None:
        z_train, z_test, self.train_idx = loo_folds(X)
        self.designs = prepare_designs(z_train)
        self.gram = self.designs.gram  # formed here, not lazily in the worker threads
        self.z_full = standardize(X)[0]
        self.XE = np.ascontiguousarray(z_test)  # (n, 1, p) held-out rows
        rho = np.asarray(l1_ratios, dtype=float)
        self.ratio = (1 - rho) / rho  # λ / μ per mixing ratio
        self.fractions = grid_fractions(n_alphas, eps)
        self.rho_order = _extremes_first(rho)
        # largest active set per (mixing ratio, fold): rank(X) for the lasso (see solver)
        p = X.shape[1]
        self.cap = np.where((self.ratio <= 0)[:, None], self.designs.rank[None, :], p).astype(
            np.int64
        )


def _extremes_first(rho: np.ndarray) -> np.ndarray:
    """Indices of the mixing ratios from the outside in: largest, smallest, second largest,
    … — the order in which they are tried in the permutation test at first. Under the null
    the minimum LOO error is most often at an extreme (the lasso or the most ridge-like
    ratio), and the first mixing ratio that attains a minimum ≤ the observed one decides a
    permutation."""
    by_value = np.argsort(rho, kind="stable")
    out = []
    lo, hi = 0, len(by_value) - 1
    while lo <= hi:
        out.append(by_value[hi])
        if lo < hi:
            out.append(by_value[lo])
        lo, hi = lo + 1, hi - 1
    return np.array(out, dtype=np.int64)


def _permutation_block(
    perms: np.ndarray,
    y: np.ndarray,
    folds: _PermutationFolds,
    obs: float,
    exact_null: bool,
) -> tuple[np.ndarray, PathStats]:
    """Minimum LOO error of the permutations ``perms`` (N, n) — exact with ``exact_null``,
    otherwise a value that is ≤ the observed minimum (with the tie tolerance) exactly when
    the true one is.

    Without ``exact_null`` each permutation takes its folds in order of decreasing
    |permuted outcome − mean| (the largest squared errors come first, so pruning bites
    early); see :func:`.kernels.permutation_block` for the pruning rules.
    """
    N, n = perms.shape
    m = n - 1
    Yp = np.ascontiguousarray(y[perms])  # (N, n) permuted outcomes
    centred = Yp - Yp.mean(axis=1, keepdims=True)
    # alpha_max(ρ)·m·ρ is the same for every ρ: the grid's μ depends on the permutation only
    top = np.abs(centred @ folds.z_full).max(axis=1)
    mu_row = np.ascontiguousarray((m / n) * top[:, None] * folds.fractions[None, :])  # (N, T)
    if exact_null:
        order = np.broadcast_to(np.arange(n), (N, n))
    else:
        order = np.argsort(-np.abs(centred), axis=1, kind="stable")
    cut = obs * (1 + _TIE_RTOL)
    limit = n * cut * (1 + 1e-12)  # a partial sum above it can never give a minimum ≤ cut
    d = folds.designs
    best, counts = kernels.permutation_block(
        Yp,
        np.ascontiguousarray(order, dtype=np.int64),
        folds.train_idx.astype(np.int64),
        d.Q,
        d.X,
        d.XT,
        folds.gram,
        folds.XE,
        mu_row,
        folds.ratio,
        folds.rho_order,
        folds.cap,
        limit,
        cut,
        exact_null,
        3,
        500,
    )
    return best, PathStats.from_counts(counts)


@dataclass
class BootstrapResult:
    """Selection frequency (p,) of each term over ``n_resamples`` bootstrap refits at the
    selected (l1_ratio, alpha), in [0, 1]."""

    frequency: np.ndarray
    n_resamples: int
    l1_ratio: float
    alpha: float


@single_blas_thread
def bootstrap_selection(
    X: np.ndarray,
    y: np.ndarray,
    n_resamples: int = 500,
    seed: int = 0,
    *,
    l1_ratio: float,
    alpha: float,
    n_alphas: int = 50,
    eps: float = 1e-3,
    max_rows: int = 1000,
) -> BootstrapResult:
    """How often each term is nonzero when refitting on bootstrap resamples.

    Each resample (n participants drawn with replacement) is z-scored with its own
    statistics and fitted at the given (l1_ratio, alpha) — the selected grid point — along
    a warm-started path from its own alpha_max, with the grid's step ratio.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    if n_resamples == 0:
        return BootstrapResult(np.full(p, np.nan), 0, l1_ratio, alpha)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    Xb = X[idx]  # (B, n, p)
    mean = Xb.mean(axis=1, keepdims=True)
    sd = Xb.std(axis=1, keepdims=True)
    Zb = np.where(sd > 0, (Xb - mean) / np.where(sd > 0, sd, 1.0), 0.0)
    Yb = y[idx]
    top = np.abs(np.einsum("bnp,bn->bp", Zb, Yb - Yb.mean(axis=1, keepdims=True))).max(axis=1)
    alpha_max = top / (n * l1_ratio)
    # path from each resample's alpha_max to alpha with (at most) the grid's step ratio
    step = (1 / eps) ** (1 / max(n_alphas - 1, 1))
    with np.errstate(divide="ignore"):
        n_steps = np.ceil(np.log(np.maximum(alpha_max / alpha, 1.0)) / np.log(step)).astype(int)
    T = int(n_steps.max()) + 1
    fit = np.flatnonzero(alpha_max > alpha)  # others are the empty model at alpha
    freq_counts = np.zeros(p)
    if fit.size:
        start = np.maximum(alpha_max[fit], alpha)
        alphas = np.geomspace(start, np.full(fit.size, alpha), T, axis=1)  # (b, T)
        mu = n * alphas * l1_ratio
        lam = n * alphas * (1 - l1_ratio)
        chunks = [fit[i : i + max_rows] for i in range(0, fit.size, max_rows)]
        counts = []
        for rows in chunks:
            pos = np.searchsorted(fit, rows)
            _, coefs, _ = enet_paths(
                Zb[rows], Yb[rows], mu[pos], lam[pos], which=np.arange(rows.size), return_coefs=True
            )
            assert coefs is not None  # asked for with return_coefs
            counts.append((coefs[:, -1] != 0).sum(axis=0))
        freq_counts = np.sum(counts, axis=0)
    return BootstrapResult(freq_counts / n_resamples, n_resamples, l1_ratio, alpha)
