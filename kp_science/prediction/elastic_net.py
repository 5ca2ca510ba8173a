"""Leave-one-out elastic net: fold-internal z-scoring, glmnet-style grid, selection, refit.

(Above ``EnetSettings.loo_max_participants`` participants the same model is selected by
K-fold cross-validation instead, with the same scaling, grid and tie rules: :mod:`.kfold`.)

The model (docs/architecture.md §5): predictors are z-scored, the outcome (CAPS-5
improvement, in CAPS-5 points) is left in its units, and scikit-learn's ``ElasticNet``
objective is minimised,

    (1 / 2n) ‖y − Xw − b‖² + α·ρ‖w‖₁ + α(1 − ρ)/2 ‖w‖²        (ρ = l1_ratio),

so every fit here equals ``ElasticNet(alpha=α, l1_ratio=ρ).fit`` on the same z-scored data
(verified to 1e-6 against a brute-force loop, :func:`loo_select_sklearn`; the solver,
:mod:`.solver`, is exact rather than tolerance-limited).

* **Grid.** For every mixing ratio ρ (default 0.1, 0.2, …, 1.0) a glmnet-style penalty
  path: ``alpha_max(ρ) = max_j |z_jᵀ(y − ȳ)| / (n ρ)`` — the smallest penalty at which all
  coefficients are zero — computed once on the full z-scored data, then ``n_alphas``
  (default 50) log-spaced values down to ``eps · alpha_max`` (default 1e-3). The same grid
  is used in every fold.
* **Leave-one-out.** In each fold the predictors are z-scored with the mean and SD (ddof 0)
  of the training rows only; the held-out participant is scaled with those and never
  contributes to them. Its prediction is the training mean of y plus ``z_testᵀ w``.
* **Selection.** The grid point with the smallest LOO mean squared error; ties (within a
  relative 1e-9, e.g. several penalties that all give the empty model) go to the larger
  alpha, then the larger l1_ratio. It is refitted on all participants.
* **Coefficients.** ``beta_std``: the refit's coefficient on z-scored predictors with the
  raw outcome — CAPS-5 points per SD of the predictor. ``beta_fully_std``: the same fit
  expressed per SD of the outcome, ``beta_std / SD(y)`` (ddof 0; a rescaling of the one
  fitted model, not a refit on a z-scored outcome, which would be a different model
  because the penalty is not scale-free).

Which convention did the paper's "standardized β = 2.90" use? ``beta_std``, almost
certainly. A fully standardised coefficient of a single predictor is a partial correlation
scaled by a variance-inflation ratio: it is bounded by 1 for one predictor, and exceeding 1
needs strong suppression among collinear predictors — whereas an elastic net shrinks every
coefficient towards zero, and a minimum-LOO-error model on N = 21 is shrunk hard. The
reported values (2.90, −2.82, 0.86, 0.69, 0.60) instead have the size of CAPS-5 points per
SD of a change score: with an SD of CAPS-5 improvement of roughly 10–20 points, 2.90 points
per SD is a fully standardised 0.15–0.3, a plausible shrunk effect. They also match the
analysis as described (z-scored change scores, raw CAPS-5 improvement) and glmnet/
scikit-learn practice of reporting coefficients on the scale of the outcome. So the paper
table compares against ``beta_std``; ``beta_fully_std`` is reported alongside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp_science.prediction.parallel import single_blas_thread
from kp_science.prediction.solver import enet_paths

DEFAULT_L1_RATIOS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
_TIE_RTOL = 1e-9  # LOO errors this close count as tied


@dataclass(frozen=True)
class EnetSettings:
    """Everything that defines one elastic-net analysis (besides the data).

    ``l1_ratios``, ``n_alphas``, ``eps``: the grid (see the module docstring).
    ``n_permutations``: outcome permutations for the p-value (0 = skip).
    ``n_bootstraps``: resamples for selection frequencies (0 = skip).
    ``nested``: run nested LOO for honest out-of-sample r and RMSE.
    ``seed``: seeds permutations, bootstrap resamples and the K-fold folds.
    ``min_participants``: fewest complete participants per variant.
    ``n_jobs``: worker threads for the permutation test and nested LOO.
    ``loo_max_participants``: exact leave-one-out up to this many participants (in a
    variant, after exclusions); above it K-fold cross-validation (:mod:`.kfold`). Default
    60, measured (``bench/enet.py --schemes``; all four variants, default settings, one
    core's CPU time, 2 cores ≈ half): on a null study exact LOO costs 143 s at N = 40 and
    616 s at N = 60 against 181–184 s for 10-fold, and grows about as N³, reaching the
    10-minute budget (2 cores) that N = 1000 is held to near N = 75; 60 keeps a margin
    (the estimates vary 2–3× with the data) and the exact, fold-free LOO for single-trial
    sizes.
    ``cv_folds``: K of the K-fold scheme (default 10).
    """

    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS
    n_alphas: int = 50
    eps: float = 1e-3
    n_permutations: int = 1000
    n_bootstraps: int = 500
    nested: bool = True
    seed: int = 0
    min_participants: int = 10
    n_jobs: int = 2
    loo_max_participants: int = 60
    cv_folds: int = 10

    def __post_init__(self) -> None:
        if not self.l1_ratios or any(not 0 < r <= 1 for r in self.l1_ratios):
            raise ValueError("l1_ratios must be in (0, 1]")
        if self.n_alphas < 1 or not 0 < self.eps < 1:
            raise ValueError("need n_alphas ≥ 1 and 0 < eps < 1")
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be at least 2, got {self.cv_folds}")


def standardize(
    train: np.ndarray, apply: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """z-score columns with the mean and SD (ddof 0) of ``train`` only.

    Returns (z_train, z_apply, mean, sd). A column that is constant in ``train`` becomes 0
    everywhere (it cannot be selected). Shapes: train (n, p), apply (k, p).
    """
    train = np.asarray(train, dtype=float)
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    safe = np.where(sd > 0, sd, 1.0)
    z_train = np.where(sd > 0, (train - mean) / safe, 0.0)
    z_apply = None
    if apply is not None:
        z_apply = np.where(sd > 0, (np.asarray(apply, dtype=float) - mean) / safe, 0.0)
    return z_train, z_apply, mean, sd


def grid_fractions(n_alphas: int, eps: float) -> np.ndarray:
    """alpha / alpha_max along the path: ``n_alphas`` log-spaced values from 1 to eps."""
    return np.geomspace(1.0, eps, n_alphas)


def alpha_grid(
    X: np.ndarray,
    y: np.ndarray,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
) -> np.ndarray:
    """Penalty grid (len(l1_ratios), n_alphas), computed on the z-scored full data."""
    z, _, _, _ = standardize(X)
    y = np.asarray(y, dtype=float)
    top = np.abs(z.T @ (y - y.mean())).max()
    if not top > 0:
        raise ValueError("the outcome is constant or uncorrelated with every predictor")
    rho = np.asarray(l1_ratios, dtype=float)
    return (top / (len(y) * rho))[:, None] * grid_fractions(n_alphas, eps)[None, :]


def penalties(alphas: np.ndarray, rho: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum-scaled (μ, λ) of the solver from scikit-learn's (alpha, l1_ratio), m rows."""
    return m * alphas * rho[:, None], m * alphas * (1 - rho)[:, None]


@dataclass
class LooSelection:
    """Leave-one-out errors over the grid and the selected grid point.

    ``alphas`` (R, T); ``loo_pred`` (R, T, n) LOO predictions in outcome units;
    ``loo_mse`` (R, T); ``best`` = (index of l1_ratio, index of alpha); ``coefs``
    (folds, R, T, p): every fold's coefficients, when requested; ``cv``: the scheme,
    "loo" here, e.g. "10-fold" for the K-fold selection of :mod:`.kfold` (whose held-out
    predictions and errors the same fields then hold).
    """

    l1_ratios: np.ndarray
    alphas: np.ndarray
    loo_pred: np.ndarray
    loo_mse: np.ndarray
    best: tuple[int, int]
    coefs: np.ndarray | None = None
    cv: str = "loo"

    @property
    def l1_ratio(self) -> float:
        return float(self.l1_ratios[self.best[0]])

    @property
    def alpha(self) -> float:
        return float(self.alphas[self.best])

    @property
    def min_mse(self) -> float:
        return float(self.loo_mse[self.best])

    @property
    def predictions(self) -> np.ndarray:
        """(n,) LOO predictions at the selected grid point."""
        return self.loo_pred[self.best]


def select_best(loo_mse: np.ndarray, alphas: np.ndarray, l1_ratios: np.ndarray) -> tuple[int, int]:
    """Index (r, t) of the minimum LOO error; ties → larger alpha, then larger l1_ratio."""
    best = np.nanmin(loo_mse)
    tied = np.argwhere(loo_mse <= best + _TIE_RTOL * abs(best))
    key = [(alphas[r, t], l1_ratios[r]) for r, t in tied]
    r, t = tied[max(range(len(tied)), key=key.__getitem__)]
    return int(r), int(t)


def loo_folds(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All LOO folds of X (n, p): z-scored training designs (n, n−1, p), held-out rows
    (n, 1, p) scaled with the training statistics, and training indices (n, n−1)."""
    n = X.shape[0]
    train_idx = np.array([np.delete(np.arange(n), k) for k in range(n)])
    Xtr = X[train_idx]  # (n, n−1, p)
    mean = Xtr.mean(axis=1, keepdims=True)
    sd = Xtr.std(axis=1, keepdims=True)
    safe = np.where(sd > 0, sd, 1.0)
    z_train = np.where(sd > 0, (Xtr - mean) / safe, 0.0)
    z_test = np.where(sd > 0, (X[:, None, :] - mean) / safe, 0.0)
    return z_train, z_test, train_idx


def loo_many(
    datasets: list[tuple[np.ndarray, np.ndarray]],
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    max_rows: int = 1500,
    return_coefs: bool = False,
) -> list[LooSelection]:
    """:func:`loo_select` for several datasets of equal size in batched solver calls
    (the nested LOO's inner selections)."""
    rho = np.asarray(l1_ratios, dtype=float)
    R, T = rho.size, n_alphas
    prepared = []
    for X, y in datasets:
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        alphas = alpha_grid(X, y, l1_ratios, n_alphas, eps)
        z_train, z_test, train_idx = loo_folds(X)
        prepared.append((X, y, alphas, z_train, z_test, train_idx))
    n = prepared[0][0].shape[0]
    m = n - 1
    per_design_rows = R
    designs_per_call = max(1, max_rows // per_design_rows)
    # flatten (dataset, fold) into designs, each with R rows (one per l1_ratio)
    all_designs = [(d, k) for d in range(len(prepared)) for k in range(n)]
    preds = [np.empty((R, T, n)) for _ in prepared]
    coefs = (
        [np.empty((n, R, T, prepared[0][0].shape[1])) for _ in prepared] if return_coefs else None
    )
    for start in range(0, len(all_designs), designs_per_call):
        chunk = all_designs[start : start + designs_per_call]
        Xd = np.stack([prepared[d][3][k] for d, k in chunk])
        Xe = np.stack([prepared[d][4][k] for d, k in chunk])
        Ytr = np.stack([prepared[d][1][prepared[d][5][k]] for d, k in chunk])
        mu = np.concatenate([penalties(prepared[d][2], rho, m)[0] for d, _ in chunk])
        lam = np.concatenate([penalties(prepared[d][2], rho, m)[1] for d, _ in chunk])
        which = np.repeat(np.arange(len(chunk)), R)
        Y = np.repeat(Ytr, R, axis=0)
        pred, cf, _ = enet_paths(Xd, Y, mu, lam, which=which, X_eval=Xe, return_coefs=return_coefs)
        assert pred is not None  # predictions come back for the given X_eval
        offset = np.repeat(Ytr.mean(axis=1), R)
        pred = pred[:, :, 0] + offset[:, None]
        for i, (d, k) in enumerate(chunk):
            preds[d][:, :, k] = pred[i * R : (i + 1) * R]
            if coefs is not None and cf is not None:  # both exactly when return_coefs
                coefs[d][k] = cf[i * R : (i + 1) * R]
    out = []
    for d, ((_X, y, alphas, *_), pr) in enumerate(zip(prepared, preds, strict=True)):
        mse = ((pr - y[None, None, :]) ** 2).mean(axis=2)
        out.append(
            LooSelection(
                rho,
                alphas,
                pr,
                mse,
                select_best(mse, alphas, rho),
                coefs[d] if coefs is not None else None,
            )
        )
    return out


@single_blas_thread
def loo_select(
    X: np.ndarray,
    y: np.ndarray,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    return_coefs: bool = False,
) -> LooSelection:
    """LOO error of every grid point and the selected one, for X (n, p), y (n,);
    ``return_coefs`` keeps every fold's coefficients (for verification)."""
    return loo_many([(X, y)], l1_ratios, n_alphas, eps, return_coefs=return_coefs)[0]


@dataclass
class Refit:
    """The selected model refitted on all participants.

    ``beta_std`` (p,): outcome units per SD of each predictor; ``beta_fully_std`` (p,):
    per SD of the outcome too; ``intercept``: mean outcome (outcome units); ``mean``/``sd``
    (p,): the predictors' scaling; ``sd_outcome``: SD of y (ddof 0).
    """

    l1_ratio: float
    alpha: float
    beta_std: np.ndarray
    beta_fully_std: np.ndarray
    intercept: float
    mean: np.ndarray
    sd: np.ndarray
    sd_outcome: float

    @classmethod
    def of_fit(
        cls,
        beta: np.ndarray,
        y: np.ndarray,
        l1_ratio: float,
        alpha: float,
        mean: np.ndarray,
        sd: np.ndarray,
    ) -> Refit:
        """The refit of coefficients ``beta`` (p,) on z-scored predictors (scaling ``mean``,
        ``sd``) fitted to outcome ``y`` (n,) at grid point (``l1_ratio``, ``alpha``)."""
        sd_y = float(y.std())
        return cls(
            l1_ratio=float(l1_ratio),
            alpha=float(alpha),
            beta_std=beta,
            beta_fully_std=beta / sd_y if sd_y > 0 else np.full_like(beta, np.nan),
            intercept=float(y.mean()),
            mean=mean,
            sd=sd,
            sd_outcome=sd_y,
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions (k,) for raw predictor rows X (k, p)."""
        safe = np.where(self.sd > 0, self.sd, 1.0)
        z = np.where(self.sd > 0, (np.asarray(X, dtype=float) - self.mean) / safe, 0.0)
        return self.intercept + z @ self.beta_std


@single_blas_thread
def refit(
    X: np.ndarray,
    y: np.ndarray,
    l1_ratio: float,
    alphas_path: np.ndarray,
) -> Refit:
    """Fit on all participants along ``alphas_path`` (decreasing; warm starts), returning
    the fit at its last value — the selected alpha."""
    z, _, mean, sd = standardize(X)
    y = np.asarray(y, dtype=float)
    n = len(y)
    path = np.asarray(alphas_path, dtype=float)[None, :]
    mu, lam = penalties(path, np.array([l1_ratio]), n)
    _, coefs, _ = enet_paths(z, y[None, :], mu, lam, return_coefs=True)
    assert coefs is not None  # asked for with return_coefs
    return Refit.of_fit(coefs[0, -1], y, l1_ratio, float(path[0, -1]), mean, sd)


def refit_selected(X: np.ndarray, y: np.ndarray, sel: LooSelection) -> Refit:
    """Refit the selected grid point of ``sel`` on all of X, y."""
    r, t = sel.best
    return refit(X, y, sel.l1_ratio, sel.alphas[r, : t + 1])


def loo_select_sklearn(
    X: np.ndarray,
    y: np.ndarray,
    l1_ratios: tuple[float, ...] = DEFAULT_L1_RATIOS,
    n_alphas: int = 50,
    eps: float = 1e-3,
    tol: float = 1e-10,
    return_coefs: bool = False,
) -> tuple[LooSelection, np.ndarray | None]:
    """Reference implementation: one ``sklearn.linear_model.ElasticNet`` fit per fold and
    grid point (no warm starts), same folds, scaling and grid. Slow; for verification.

    Returns the selection and, with ``return_coefs``, every fold's coefficients
    (n, R, T, p) (also stored in the selection).
    """
    from sklearn.linear_model import ElasticNet

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    rho = np.asarray(l1_ratios, dtype=float)
    alphas = alpha_grid(X, y, l1_ratios, n_alphas, eps)
    z_train, z_test, train_idx = loo_folds(X)
    pred = np.empty((rho.size, n_alphas, n))
    coefs = np.empty((n, rho.size, n_alphas, p)) if return_coefs else None
    for k in range(n):
        for r, l1 in enumerate(rho):
            for t in range(n_alphas):
                model = ElasticNet(alpha=alphas[r, t], l1_ratio=l1, tol=tol, max_iter=1_000_000)
                model.fit(z_train[k], y[train_idx[k]])
                pred[r, t, k] = model.predict(z_test[k])[0]
                if coefs is not None:
                    coefs[k, r, t] = model.coef_
    mse = ((pred - y[None, None, :]) ** 2).mean(axis=2)
    return LooSelection(rho, alphas, pred, mse, select_best(mse, alphas, rho), coefs), coefs
