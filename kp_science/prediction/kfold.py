"""K-fold cross-validation of the elastic net, for studies too large for exact leave-one-out.

Exact nested LOO costs about n³ (n folds, each a path on n − 1 rows, and n outer folds for
the nested estimate); at a few hundred participants it would not finish in a day. Above
``EnetSettings.loo_max_participants`` participants, :mod:`.fit` therefore switches every
step that used LOO to K-fold cross-validation (K = ``EnetSettings.cv_folds``); everything
else is as in :mod:`.elastic_net` and :mod:`.evaluation`:

* **Folds.** Deterministic: the participants (in the design matrix's order, i.e. sorted by
  participant_id) are shuffled by ``numpy.random.default_rng([seed, 1])`` and dealt to the
  K folds in turn, so fold sizes differ by at most one (:func:`kfold_assignment`). The same
  folds serve the selection and every permutation.
* **Scaling, grid, selection.** As for LOO: each training fold is z-scored with its own
  mean and SD (ddof 0), its held-out rows with those; the grid is computed once on the
  full z-scored data; the CV error of a grid point is the mean squared error over all
  participants of their held-out predictions (the pooled mean — equal to scikit-learn's
  mean of fold MSEs when the folds are equal in size); the minimum is selected with the
  same tie rule and refitted on everyone.
* **Nested K-fold.** Outer fold f: the inner folds are :func:`kfold_assignment` of the other
  participants (same seed), the grid, inner selection and refit use those participants
  only, and the fold's participants are predicted by the refit.
* **Permutation test.** The outcome is permuted (the same draws as for LOO) and the whole
  selection repeated — grid recomputed, every fold × grid point refitted — with the pruning
  rules of :mod:`.evaluation` (folds in place of participants), which keep every
  permutation's verdict exact.
* **Bootstrap.** As :func:`.evaluation.bootstrap_selection` (same resamples, same paths),
  solved from each resample's Gram matrix.

Why it scales: a fold's training problem is its Gram matrix G = ZᵀZ (p × p) and c = Zᵀ(y − ȳ)
(p,), and its validation error s − 2gᵀw + wᵀHw with H = Z_vaᵀZ_va, g = Z_vaᵀe₀, s = e₀ᵀe₀
(:mod:`.gram_kernels`). The designs — G, H and G's eigendecomposition — do not depend on
the outcome: they are computed once and shared by every permutation, which only recomputes
c, g and s (O(n·p)); the solver's work does not grow with n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp_science.prediction import gram_kernels
from kp_science.prediction.elastic_net import (
    DEFAULT_L1_RATIOS,
    LooSelection,
    Refit,
    alpha_grid,
    grid_fractions,
    penalties,
    select_best,
    standardize,
)
from kp_science.prediction.evaluation import (
    _TIE_RTOL,
    BootstrapResult,
    NestedResult,
    PermutationResult,
    _extremes_first,
    pearson_r,
)
from kp_science.prediction.parallel import run_parallel, single_blas_thread
from kp_science.prediction.solver import PathStats

_FOLD_STREAM = 1  # folds use their own random stream: default_rng([seed, 1])
_PDAS_ITER, _MAX_ITER = 3, 500


def cv_label(n_folds: int) -> str:
    """How the ``cv`` column of the enet tables names K-fold cross-validation."""
    return f"{n_folds}-fold"


def kfold_assignment(n: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold (0 … n_folds − 1) of each of n participants (n,): shuffled by
    ``default_rng([seed, 1])``, then dealt in turn (fold sizes differ by ≤ 1)."""
    if not 2 <= n_folds <= n:
        raise ValueError(f"K-fold needs 2 ≤ folds ≤ participants, got {n_folds} folds, n = {n}")
    order = np.random.default_rng([seed, _FOLD_STREAM]).permutation(n)
    folds = np.empty(n, dtype=np.int64)
    folds[order] = np.arange(n) % n_folds
    return folds


@dataclass
class GramDesigns:
    """D z-scored designs as the Gram kernels take them: ``G``, ``V``, ``R``, ``RT``
    (D, p, p) — Gram matrix ZᵀZ, its eigenvectors (columns), square root diag(√d)Vᵀ and its
    transpose — ``dv`` (D, p) eigenvalues, ``rank`` (D,), ``rows`` (D,) rows of each Z."""

    G: np.ndarray
    V: np.ndarray
    dv: np.ndarray
    R: np.ndarray
    RT: np.ndarray
    rank: np.ndarray
    rows: np.ndarray


def gram_designs(Z: list[np.ndarray]) -> GramDesigns:
    """:class:`GramDesigns` of centred designs Z[d] (m_d, p)."""
    G = np.stack([z.T @ z for z in Z])
    dv, V = np.linalg.eigh(G)
    dv = np.maximum(dv, 0.0)
    R = np.ascontiguousarray(np.sqrt(dv)[:, :, None] * V.transpose(0, 2, 1))
    top = dv.max(axis=1, keepdims=True)
    rank = (dv > gram_kernels._ZERO_EIGEN * top).sum(axis=1)
    return GramDesigns(
        G=np.ascontiguousarray(G),
        V=np.ascontiguousarray(V),
        dv=np.ascontiguousarray(dv),
        R=R,
        RT=np.ascontiguousarray(R.transpose(0, 2, 1)),
        rank=rank.astype(np.int64),
        rows=np.array([len(z) for z in Z], dtype=np.int64),
    )


@dataclass
class FoldDesigns:
    """Everything about the K folds of X that does not depend on the outcome.

    ``folds`` (n,) fold of each participant; ``train``/``test``: index arrays per fold;
    ``z_train``/``z_test``: per fold (m_f, p) / (n_f, p), z-scored with the training fold's
    mean and SD; ``gram``: their :class:`GramDesigns`; ``H`` (K, p, p) = Z_testᵀZ_test;
    ``z_full`` (n, p): all participants z-scored together (for the grid).
    """

    folds: np.ndarray
    train: list[np.ndarray]
    test: list[np.ndarray]
    z_train: list[np.ndarray]
    z_test: list[np.ndarray]
    gram: GramDesigns
    H: np.ndarray
    z_full: np.ndarray

    @property
    def n_folds(self) -> int:
        return len(self.train)


def fold_designs(X: np.ndarray, folds: np.ndarray) -> FoldDesigns:
    """:class:`FoldDesigns` of X (n, p) for the fold assignment ``folds`` (n,)."""
    X = np.asarray(X, dtype=float)
    K = int(folds.max()) + 1
    train = [np.flatnonzero(folds != f) for f in range(K)]
    test = [np.flatnonzero(folds == f) for f in range(K)]
    z_train, z_test = [], []
    for tr, te in zip(train, test, strict=True):
        z, zt, _, _ = standardize(X[tr], X[te])
        assert zt is not None  # asked for with apply
        z_train.append(z)
        z_test.append(zt)
    return FoldDesigns(
        folds=folds,
        train=train,
        test=test,
        z_train=z_train,
        z_test=z_test,
        gram=gram_designs(z_train),
        H=np.ascontiguousarray(np.stack([z.T @ z for z in z_test])),
        z_full=standardize(X)[0],
    )


def outcome_terms(
    d: FoldDesigns, Y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The outcome-dependent terms of B outcomes Y (B, n) in every fold: C (B, K, p) =
    Z_trainᵀ(y_train − ȳ_train), g (B, K, p) = Z_testᵀe₀ and s (B, K) = e₀ᵀe₀ with
    e₀ = y_test − ȳ_train (outcome units), and ȳ_train (B, K)."""
    B, K, p = len(Y), d.n_folds, d.H.shape[1]
    C, g = np.empty((B, K, p)), np.empty((B, K, p))
    s, ybar = np.empty((B, K)), np.empty((B, K))
    for f in range(K):
        ytr = Y[:, d.train[f]]
        ybar[:, f] = ytr.mean(axis=1)
        C[:, f] = (ytr - ybar[:, f, None]) @ d.z_train[f]
        e0 = Y[:, d.test[f]] - ybar[:, f, None]
        g[:, f] = e0 @ d.z_test[f]
        s[:, f] = (e0 * e0).sum(axis=1)
    return C, g, s, ybar


def _caps(rho: np.ndarray, rank: np.ndarray, p: int) -> np.ndarray:
    """Largest active set (R, D): rank of the design for the lasso, p otherwise."""
    return np.where((rho >= 1)[:, None], rank[None, :], p).astype(np.int64)


@single_blas_thread
def cv_select(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    return_coefs: bool = False,
    designs: FoldDesigns | None = None,
) -> LooSelection:
    """K-fold CV error of every grid point and the selected one, for X (n, p), y (n,) and
    the fold of each participant ``folds`` (n,) (see the module docstring).

    Returns a :class:`.elastic_net.LooSelection` whose ``loo_pred`` (R, T, n) are the
    held-out predictions, ``loo_mse`` (R, T) the CV errors (outcome units²), ``cv`` the
    scheme (e.g. "10-fold") and, with ``return_coefs``, ``coefs`` (K, R, T, p) every
    fold's coefficients. ``designs``: :func:`fold_designs` of X and folds, if already made.
    """
    return _cv_select(X, y, folds, l1_ratios, n_alphas, eps, return_coefs, designs)


def _cv_select(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    l1_ratios: tuple[float, ...],
    n_alphas: int,
    eps: float,
    return_coefs: bool,
    designs: FoldDesigns | None,
) -> LooSelection:
    """:func:`cv_select` as it is, for worker threads (BLAS limits are the caller's)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    d = designs if designs is not None else fold_designs(X, folds)
    K = d.n_folds
    rho = np.asarray(l1_ratios, dtype=float)
    R, T = rho.size, n_alphas
    alphas = alpha_grid(X, y, l1_ratios, n_alphas, eps)
    C, g, s, ybar = outcome_terms(d, y[None])
    mu = np.concatenate([penalties(alphas, rho, int(m))[0] for m in d.gram.rows])
    lam = np.concatenate([penalties(alphas, rho, int(m))[1] for m in d.gram.rows])
    err, coefs, _ = gram_kernels.gram_paths(
        d.gram.G,
        d.gram.V,
        d.gram.dv,
        d.gram.R,
        d.gram.RT,
        d.H,
        np.repeat(np.arange(K), R),
        np.repeat(C[0], R, axis=0),
        np.repeat(g[0], R, axis=0),
        np.repeat(s[0], R),
        np.ascontiguousarray(mu),
        np.ascontiguousarray(lam),
        np.full(K * R, T - 1, dtype=np.int64),
        _caps(rho, d.gram.rank, p).T.ravel(),
        _PDAS_ITER,
        _MAX_ITER,
        True,
    )
    coefs = coefs.reshape(K, R, T, p)
    mse = err.reshape(K, R, T).sum(axis=0) / n
    pred = np.empty((R, T, n))
    for f in range(K):
        pred[:, :, d.test[f]] = ybar[0, f] + coefs[f] @ d.z_test[f].T
    return LooSelection(
        rho,
        alphas,
        pred,
        mse,
        select_best(mse, alphas, rho),
        coefs if return_coefs else None,
        cv=cv_label(K),
    )


@single_blas_thread
def refit_gram(X: np.ndarray, y: np.ndarray, l1_ratio: float, alphas_path: np.ndarray) -> Refit:
    """:func:`.elastic_net.refit` (same model, same result to rounding) from the Gram
    matrix of the z-scored X (n, p): the fit on all participants at the last of
    ``alphas_path`` (decreasing; warm starts)."""
    return _refit_gram(X, y, l1_ratio, alphas_path)


def _refit_gram(X: np.ndarray, y: np.ndarray, l1_ratio: float, alphas_path: np.ndarray) -> Refit:
    """:func:`refit_gram` as it is, for worker threads (BLAS limits are the caller's)."""
    z, _, mean, sd = standardize(X)
    y = np.asarray(y, dtype=float)
    n, p = z.shape
    path = np.asarray(alphas_path, dtype=float)[None, :]
    mu, lam = penalties(path, np.array([l1_ratio]), n)
    coefs = _gram_fit(z, y - y.mean(), mu, lam, np.array([l1_ratio]))
    return Refit.of_fit(coefs[0, -1], y, l1_ratio, float(path[0, -1]), mean, sd)


def _gram_fit(
    z: np.ndarray, yc: np.ndarray, mu: np.ndarray, lam: np.ndarray, rho: np.ndarray
) -> np.ndarray:
    """Coefficients (B, T, p) of B paths (penalties mu, lam (B, T); mixing ratio rho (B,))
    on one centred design z (n, p) and centred outcome yc (n,)."""
    p = z.shape[1]
    gd = gram_designs([z])
    B = mu.shape[0]
    _, coefs, _ = gram_kernels.gram_paths(
        gd.G,
        gd.V,
        gd.dv,
        gd.R,
        gd.RT,
        np.zeros((1, 0, 0)),
        np.zeros(B, dtype=np.int64),
        np.repeat((z.T @ yc)[None], B, axis=0),
        np.zeros((B, p)),
        np.zeros(B),
        np.ascontiguousarray(mu),
        np.ascontiguousarray(lam),
        np.full(B, mu.shape[1] - 1, dtype=np.int64),
        _caps(rho, gd.rank, p)[:, 0],
        _PDAS_ITER,
        _MAX_ITER,
        True,
    )
    return coefs


@single_blas_thread
def nested_cv(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    seed: int = 0,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    n_jobs: int = 1,
) -> NestedResult:
    """Out-of-sample predictions by nested K-fold: for outer fold f, inner folds
    (:func:`kfold_assignment` of the other participants with ``seed``), grid, selection and
    refit on the other participants only; the fold's participants are predicted.

    X (n, p), y (n,), folds (n,); ``n_jobs`` worker threads (outer folds split between
    them). The result's ``l1_ratios``/``alphas`` (n,) are each participant's outer fold's
    selection.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    K = int(folds.max()) + 1
    grid = (tuple(l1_ratios), n_alphas, eps)
    parts = run_parallel(_nested_fold, [(X, y, folds, f, seed, *grid) for f in range(K)], n_jobs)
    predicted, rho_sel, alpha_sel = np.empty(len(y)), np.empty(len(y)), np.empty(len(y))
    for f, (pred, l1, alpha) in enumerate(parts):
        test = folds == f
        predicted[test], rho_sel[test], alpha_sel[test] = pred, l1, alpha
    return NestedResult(
        predicted=predicted,
        r=pearson_r(y, predicted),
        rmse=float(np.sqrt(np.mean((y - predicted) ** 2))),
        l1_ratios=rho_sel,
        alphas=alpha_sel,
    )


def _nested_fold(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    f: int,
    seed: int,
    l1_ratios: tuple[float, ...],
    n_alphas: int,
    eps: float,
) -> tuple[np.ndarray, float, float]:
    """Outer fold f: predictions of its participants (outcome units), selected l1_ratio and
    alpha. Nothing of fold f's participants enters the selection or the refit."""
    train, test = folds != f, folds == f
    K = int(folds.max()) + 1
    inner = kfold_assignment(int(train.sum()), K, seed)
    sel = _cv_select(X[train], y[train], inner, l1_ratios, n_alphas, eps, False, None)
    r, t = sel.best
    model = _refit_gram(X[train], y[train], sel.l1_ratio, sel.alphas[r, : t + 1])
    return model.predict(X[test]), sel.l1_ratio, sel.alpha


@single_blas_thread
def cv_permutation_test(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    n_permutations: int = 1000,
    seed: int = 0,
    *,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    observed: LooSelection | None = None,
    exact_null: bool = False,
    designs: FoldDesigns | None = None,
    n_jobs: int = 1,
    chunk: int = 25,
) -> PermutationResult:
    """p-value of the minimum K-fold CV error, the outcome permuted and the selection
    repeated on the same folds; as :func:`.evaluation.permutation_test` (same permutations,
    same p-value definition and tie rule, exact pruning).

    X (n, p), y (n,), folds (n,); ``observed``: the real data's :func:`cv_select` on these
    folds if already computed; ``exact_null``: compute every permutation's minimum;
    ``designs``: :func:`fold_designs` of X and folds, if already made; ``n_jobs``: worker
    threads; ``chunk``: permutations per work item (the result does not depend on it).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(y)
    d = designs if designs is not None else fold_designs(X, folds)
    if observed is None:
        observed = _cv_select(X, y, folds, l1_ratios, n_alphas, eps, False, d)
    obs = observed.min_mse
    rng = np.random.default_rng(seed)
    perms = np.array([rng.permutation(n) for _ in range(n_permutations)], dtype=np.intp)
    if n_permutations == 0:
        return PermutationResult(float("nan"), 0, 0, obs, None, PathStats())
    cut = n * obs * (1 + _TIE_RTOL)  # as a sum of squared errors
    rho = np.asarray(l1_ratios, dtype=float)
    shared = _PermutationShared(d, rho, grid_fractions(n_alphas, eps), cut, exact_null)
    blocks = [perms[i : i + chunk] for i in range(0, n_permutations, chunk)]
    results = run_parallel(_cv_permutation_block, [(b, y, shared) for b in blocks], n_jobs)
    best = np.concatenate([r[0] for r in results])
    n_as_good = int((best <= cut).sum())
    stats = PathStats()
    for r in results:
        stats.add(r[1])
    return PermutationResult(
        p_value=(1 + n_as_good) / (1 + n_permutations),
        n_permutations=n_permutations,
        n_as_good=n_as_good,
        observed_mse=obs,
        null_mse=best / n if exact_null else None,
        stats=stats,
    )


@dataclass
class _PermutationShared:
    """What every block of permutations shares: the fold designs, mixing ratios, grid
    fractions, the observed minimum as a sum of squared errors (``cut``) and the mode."""

    d: FoldDesigns
    rho: np.ndarray
    fractions: np.ndarray
    cut: float
    exact: bool


def _cv_permutation_block(
    perms: np.ndarray, y: np.ndarray, sh: _PermutationShared
) -> tuple[np.ndarray, PathStats]:
    """Minimum sum of squared CV errors of the permutations ``perms`` (N, n) (pruned: see
    :func:`.gram_kernels.cv_permutation_block`). Folds are first taken by decreasing
    empty-model error, so that grid points die early."""
    d = sh.d
    n = perms.shape[1]
    Yp = np.ascontiguousarray(y[perms])
    centred = Yp - Yp.mean(axis=1, keepdims=True)
    # μ of fold f at grid point t = m_f · alpha_max(ρ)·ρ · fraction_t, alpha_max·ρ = top / n
    top = np.abs(centred @ d.z_full).max(axis=1)
    mu_row = np.ascontiguousarray((top / n)[:, None] * sh.fractions[None, :])
    C, g, s, _ = outcome_terms(d, Yp)
    K = d.n_folds
    if sh.exact:
        order = np.broadcast_to(np.arange(K), s.shape)
    else:
        order = np.argsort(-s, axis=1, kind="stable")
    gd = d.gram
    best, counts = gram_kernels.cv_permutation_block(
        C,
        g,
        s,
        np.ascontiguousarray(order, dtype=np.int64),
        gd.rows.astype(float),
        gd.G,
        gd.V,
        gd.dv,
        gd.R,
        gd.RT,
        d.H,
        mu_row,
        (1 - sh.rho) / sh.rho,
        _extremes_first(sh.rho),
        _caps(sh.rho, gd.rank, d.H.shape[1]),
        sh.cut * (1 + 1e-12),
        sh.cut,
        sh.exact,
        _PDAS_ITER,
        _MAX_ITER,
    )
    return best, PathStats.from_counts(counts)


@single_blas_thread
def bootstrap_selection_gram(
    X: np.ndarray,
    y: np.ndarray,
    n_resamples: int = 500,
    seed: int = 0,
    *,
    l1_ratio: float,
    alpha: float,
    n_alphas: int = 50,
    eps: float = 1e-3,
    n_jobs: int = 1,
    chunk: int = 25,
) -> BootstrapResult:
    """:func:`.evaluation.bootstrap_selection` (same resamples, scaling and paths) solved
    from each resample's Gram matrix — for many participants, where the row-based solver's
    cost grows with n². X (n, p), y (n,); ``n_jobs`` worker threads."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    if n_resamples == 0:
        return BootstrapResult(np.full(p, np.nan), 0, l1_ratio, alpha)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    chunks = [idx[i : i + chunk] for i in range(0, n_resamples, chunk)]
    # first pass: each resample's alpha_max, for the common number of path points
    alpha_max = np.concatenate(
        run_parallel(_resample_alpha_max, [(X, y, c, l1_ratio) for c in chunks], n_jobs)
    )
    step = (1 / eps) ** (1 / max(n_alphas - 1, 1))
    with np.errstate(divide="ignore"):
        n_steps = np.ceil(np.log(np.maximum(alpha_max / alpha, 1.0)) / np.log(step)).astype(int)
    T = int(n_steps.max()) + 1
    counts = run_parallel(
        _resample_support,
        [(X, y, c, l1_ratio, alpha, T) for c in chunks],
        n_jobs,
    )
    return BootstrapResult(np.sum(counts, axis=0) / n_resamples, n_resamples, l1_ratio, alpha)


def _resample(X: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One resample z-scored with its own statistics (n, p) and its centred outcome (n,)."""
    yb = y[rows]
    return standardize(X[rows])[0], yb - yb.mean()


def _resample_alpha_max(
    X: np.ndarray, y: np.ndarray, idx: np.ndarray, l1_ratio: float
) -> np.ndarray:
    """alpha_max (B,) of the resamples idx (B, n) at mixing ratio ``l1_ratio``."""
    out = np.empty(len(idx))
    for b, rows in enumerate(idx):
        z, yc = _resample(X, y, rows)
        out[b] = np.abs(z.T @ yc).max() / (len(rows) * l1_ratio)
    return out


def _resample_support(
    X: np.ndarray, y: np.ndarray, idx: np.ndarray, l1_ratio: float, alpha: float, T: int
) -> np.ndarray:
    """How many of the resamples idx (B, n) select each term (p,): the path from the
    resample's alpha_max to ``alpha`` in T log-spaced points (as the row-based version)."""
    n, p = idx.shape[1], X.shape[1]
    counts = np.zeros(p)
    for rows in idx:
        z, yc = _resample(X, y, rows)
        amax = np.abs(z.T @ yc).max() / (n * l1_ratio)
        if not amax > alpha:  # the empty model at alpha
            continue
        alphas = np.geomspace(amax, alpha, T)[None, :]
        mu, lam = n * alphas * l1_ratio, n * alphas * (1 - l1_ratio)
        coefs = _gram_fit(z, yc, mu, lam, np.array([l1_ratio]))
        counts += coefs[0, -1] != 0
    return counts
