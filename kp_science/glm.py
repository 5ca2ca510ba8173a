"""Batched GLM with AR(1) noise: nilearn's ``run_glm(noise_model="ar1")`` + ``compute_contrast``.

Written for few targets (ROI signals) and many small designs (one per gPPI seed), where
nilearn's per-call machinery (label grouping, joblib, one model object per AR bin) costs far
more than the algebra. Every array may carry leading batch dimensions ``...`` (one design per
batch element); results equal nilearn's to rounding error. The steps, as nilearn defines them:

1. OLS fit with the pseudo-inverse of the design.
2. Per target, the lag-1 Yule–Walker coefficient of the OLS residuals:
   ``r_k = Σ_t y_t y_{t+k} / ((n − k)·n)`` with ``y`` the residuals minus their mean over
   *all* targets of the design (nilearn centres the whole residual matrix), ``ρ = r_1 / r_0``,
   then quantized towards zero to a multiple of ``1/bins`` (``trunc(ρ·bins)/bins``).
3. Refit of each target on the whitened design and data: the first sample is kept as is,
   sample ``t ≥ 1`` becomes ``x_t − ρ·x_{t−1}`` (no √(1−ρ²) scaling of the first sample).
4. Dispersion ``σ² = ‖whitened residuals‖² / (n − p)`` with ``p`` the number of design
   *columns* (not its rank; the callers put the confounds in the design, so they count),
   covariance of the betas ``σ²·W⁺W⁺ᵀ`` with ``W⁺`` the pseudo-inverse of the whitened
   design.
5. t contrast ``c``: effect ``cβ``, variance ``c W⁺W⁺ᵀ cᵀ σ²``,
   ``t = effect / √max(variance, 1e-50)``; degrees of freedom ``n − rank(X)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AR_BINS = 100  # nilearn run_glm's default: AR(1) coefficients quantized to 0.01
TINY_VARIANCE = 1e-50  # nilearn Contrast: floor of the variance in the t statistic
# designs whose singular values span less than this ratio take the p×p (SVD-basis) refit,
# which then agrees with the per-target pseudo-inverse to ~1e-13
WELL_CONDITIONED = 1e-8


@dataclass(frozen=True)
class GlmFit:
    """Fitted GLM of ``k`` targets on one design per batch element.

    beta: (..., k, p) parameter estimates; cov: (..., k, p, p) unscaled covariance
    ``W⁺W⁺ᵀ`` of each target's (whitened) design; dispersion: (..., k) residual variance σ²;
    rho: (..., k) quantized AR(1) coefficient used to whiten (0 for OLS);
    df_residuals: (...) ``n − rank(X)``, the t statistic's degrees of freedom.
    """

    beta: np.ndarray
    cov: np.ndarray
    dispersion: np.ndarray
    rho: np.ndarray
    df_residuals: np.ndarray


@dataclass(frozen=True)
class TContrasts:
    """t contrasts, each array (..., k, q) for k targets and q contrast vectors.

    effect: ``cβ``; se: its standard error; t: effect / se (variance floored at 1e-50).
    """

    effect: np.ndarray
    se: np.ndarray
    t: np.ndarray


def swap(a: np.ndarray) -> np.ndarray:
    """Transpose of the last two axes."""
    return np.swapaxes(a, -1, -2)


def pinv_cutoff(s: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Singular values (..., r) of (..., n, p) matrices that the pseudo-inverse keeps:
    above ``max(n, p)·eps·s_max`` (scipy ``linalg.pinv``'s default, which nilearn uses)."""
    return s > max(shape[-2:]) * np.finfo(np.float64).eps * s[..., :1]


def pinv(a: np.ndarray) -> np.ndarray:
    """Pseudo-inverse (..., p, n) of (..., n, p) matrices (scipy ``linalg.pinv`` semantics)."""
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    inverse = np.divide(1.0, s, out=np.zeros_like(s), where=pinv_cutoff(s, a.shape))
    return swap(vh) @ (inverse[..., :, None] * swap(u))


def ar1_coefficients(residuals: np.ndarray, bins: int = AR_BINS) -> np.ndarray:
    """Quantized lag-1 Yule–Walker coefficient (..., k) of residuals (..., n, k).

    Centred on the mean over all targets and times of each batch element, as nilearn does.
    """
    n = residuals.shape[-2]
    y = residuals - residuals.mean(axis=(-2, -1), keepdims=True)
    r0 = np.einsum("...tk,...tk->...k", y, y) / (n * n)
    r1 = np.einsum("...tk,...tk->...k", y[..., 1:, :], y[..., :-1, :]) / ((n - 1) * n)
    return np.trunc(r1 / r0 * bins) / bins


def whiten_ar1(values: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """AR(1) prewhitening along axis -2 of (..., n, m): row 0 kept, row t − ρ·row t−1.

    ``rho`` broadcasts against (...,), e.g. (..., k) against values (..., 1, n, m).
    """
    rho = np.asarray(rho)[..., None, None]
    out = np.broadcast_to(values, np.broadcast_shapes(values.shape, rho.shape)).copy()
    out[..., 1:, :] -= rho * values[..., :-1, :]
    return out


def refit_pinv(
    design: np.ndarray, white_y: np.ndarray, rho: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitened refit by the pseudo-inverse of each target's whitened design (any rank).

    ``design`` (..., n, p), ``white_y`` (..., k, n), ``rho`` (..., k) → beta (..., k, p),
    unscaled covariance (..., k, p, p), whitened residuals (..., k, n).
    """
    white_design = whiten_ar1(design[..., None, :, :], rho)  # (..., k, n, p)
    white_pinv = pinv(white_design)
    beta = (white_pinv @ white_y[..., None])[..., 0]
    residuals = white_y - (white_design @ beta[..., None])[..., 0]
    return beta, white_pinv @ swap(white_pinv), residuals


def refit_svd_basis(
    u: np.ndarray, s: np.ndarray, vt: np.ndarray, white_y: np.ndarray, rho: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same refit for a well-conditioned design given its SVD ``X = U·diag(s)·Vᵀ``.

    Whitening is linear, so ``W = L·X = (L·U)·diag(s)·Vᵀ`` with ``A = L·U`` as well
    conditioned as ``L`` (cond ≤ (1+|ρ|)/(1−|ρ|)): ``W⁺ = V·diag(1/s)·(AᵀA)⁻¹Aᵀ``, which
    needs p×p inverses instead of an n×p SVD per target. Shapes as :func:`refit_pinv`.
    """
    a = whiten_ar1(u[..., None, :, :], rho)  # (..., k, n, p)
    gram_inverse = np.linalg.inv(swap(a) @ a)
    coordinates = (gram_inverse @ (swap(a) @ white_y[..., None]))[..., 0]
    residuals = white_y - (a @ coordinates[..., None])[..., 0]
    scaled_v = (swap(vt) / s[..., None, :])[..., None, :, :]  # V·diag(1/s), (..., 1, p, p)
    beta = (scaled_v @ coordinates[..., None])[..., 0]
    return beta, scaled_v @ gram_inverse @ swap(scaled_v), residuals


def fit_ar1_glm(
    y: np.ndarray, design: np.ndarray, noise_model: str = "ar1", bins: int = AR_BINS
) -> GlmFit:
    """Fit targets ``y`` (..., n, k) on ``design`` (..., n, p); ``noise_model`` "ar1" or "ols".

    Each target is refitted with its own whitened design (ROI-sized problems: k is small).
    A column that is zero in every design (e.g. a confound the confounds' rank lacks) is
    left out of the fit and counted in ``p``: the pseudo-inverse would give it beta 0 and no
    variance, so the result is nilearn's while the fit keeps the full-rank refit.
    """
    if noise_model not in ("ar1", "ols"):
        raise ValueError(f"noise_model must be 'ar1' or 'ols', got {noise_model!r}")
    y = np.asarray(y, np.float64)
    design = np.asarray(design, np.float64)
    n, p = design.shape[-2:]
    if y.shape[-2] != n:
        raise ValueError(f"{y.shape[-2]} data rows but {n} design rows")
    used = np.any(design != 0, axis=tuple(range(design.ndim - 1)))  # (p,) over every design
    if used.any() and not used.all():
        return with_zero_columns(fit_ar1_glm(y, design[..., used], noise_model, bins), used, n)
    u, s, vt = np.linalg.svd(design, full_matrices=False)
    batch = np.broadcast_shapes(y.shape[:-2], design.shape[:-2])
    if noise_model == "ar1":
        retained = u * pinv_cutoff(s, design.shape)[..., None, :]  # OLS fit = X·X⁺·y
        rho = ar1_coefficients(y - retained @ (swap(retained) @ y), bins)
    else:
        rho = np.zeros(batch + y.shape[-1:])
    white_y = whiten_ar1(swap(y)[..., None], rho)[..., 0]  # (..., k, n)
    if np.all(s[..., -1] > WELL_CONDITIONED * s[..., 0]):
        beta, cov, residuals = refit_svd_basis(u, s, vt, white_y, rho)
    else:  # (near-)singular design: the pseudo-inverse's cut-off decides, as in nilearn
        beta, cov, residuals = refit_pinv(design, white_y, rho)
    rank_tolerance = np.abs(design).sum(axis=(-2, -1)) * np.finfo(np.float64).eps
    return GlmFit(
        beta=beta,
        cov=cov,
        dispersion=np.einsum("...t,...t->...", residuals, residuals) / (n - p),
        rho=rho,
        df_residuals=np.broadcast_to(n - (s > rank_tolerance[..., None]).sum(axis=-1), batch),
    )


def with_zero_columns(fit: GlmFit, used: np.ndarray, n: int) -> GlmFit:
    """``fit`` of the ``used`` columns (boolean (p,)) of designs with ``n`` rows as the fit of
    the whole designs, whose other columns are zero: their betas and covariances 0, and the
    dispersion's ``n − p`` counting them."""
    index = np.flatnonzero(used)
    beta = np.zeros((*fit.beta.shape[:-1], used.size))
    beta[..., index] = fit.beta
    cov = np.zeros((*fit.cov.shape[:-2], used.size, used.size))
    cov[..., index[:, None], index[None, :]] = fit.cov
    return GlmFit(
        beta=beta,
        cov=cov,
        dispersion=fit.dispersion * (n - index.size) / (n - used.size),
        rho=fit.rho,
        df_residuals=fit.df_residuals,
    )


def t_contrasts(fit: GlmFit, contrasts: np.ndarray) -> TContrasts:
    """t contrasts of ``fit`` for contrast vectors ``contrasts`` (q, p)."""
    contrasts = np.atleast_2d(np.asarray(contrasts, np.float64))
    effect = fit.beta @ contrasts.T
    variance = np.einsum("qi,...ij,qj->...q", contrasts, fit.cov, contrasts)
    variance = variance * fit.dispersion[..., None]
    return TContrasts(
        effect=effect, se=np.sqrt(variance), t=effect / np.sqrt(np.maximum(variance, TINY_VARIANCE))
    )
