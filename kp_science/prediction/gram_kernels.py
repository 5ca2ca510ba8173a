"""Compiled (numba) kernels of the K-fold path solver: the training data enter only through
their Gram matrix; see :mod:`.kfold`.

With many participants (n rows ≫ p columns) an elastic-net problem is fully described by

* ``G`` (p, p) = ZᵀZ of the z-scored training rows and ``c`` (p,) = Zᵀ(y − ȳ):
  ½‖y − ȳ − Zw‖² = ½wᵀGw − cᵀw + const,

so a fold's path costs nothing that grows with n, and a permuted outcome changes only c.
The held-out rows enter through ``H`` (p, p) = Z_vaᵀZ_va, ``g`` (p,) = Z_vaᵀe₀ and
``s`` = e₀ᵀe₀ (e₀ = held-out outcome − training mean): the fold's squared validation error
at coefficients w is s − 2gᵀw + wᵀHw (outcome units², summed over the held-out rows).

The active-set method is the one of :mod:`.kernels` (guess by extrapolation, primal–dual
active-set updates, the monotone method as fallback), with the same KKT check, so each
solution is exact to floating-point accuracy. Only the linear solve differs: on active set
A (q columns, k = p − q inactive) it takes the cheaper of

* Cholesky of G_AA + λI (about q³/3 operations, :func:`.kernels._solve_primal`), and
* the eigendecomposition G = V diag(d) Vᵀ, computed once per fold and shared by every
  outcome, mixing ratio and grid point: with M = (G + λI)⁻¹ = V diag(1/(d + λ)) Vᵀ,
  (G_AA + λI)⁻¹ = M_AA − M_AI M_II⁻¹ M_IA, about 3p² + k²p/2 + k³/3 operations — O(p²)
  when nearly every column is active (the small-penalty half of a path), where Cholesky
  costs O(p³).

The monotone fallback of :mod:`.kernels` needs rows: it gets the square root
R = diag(√d) Vᵀ (RᵀR = G) and ỹ = diag(1/√d) Vᵀc (Rᵀỹ = c), which define the same
objective up to a constant.

Work counters (``stats``, int64) as in :mod:`.kernels`; index 5 counts eigen solves.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from kp_science.prediction.kernels import (
    _JIT,
    BOUNDARY_RTOL,
    _active,
    _cholesky_solve,
    _dot,
    _enter_capped,
    _monotone,
    _solve_primal,
    _sort_desc,
    _violations,
    _workspace,
)

N_STATS = 6
# eigen solves only when G + λI is safely invertible (d_min + λ above this × d_max + λ)
_EIGEN_RCOND = 1e-10
# an eigenvalue of G below this × the largest is zero (rank, and ỹ of the fallback)
_ZERO_EIGEN = 1e-12


@nb.njit(**_JIT)
def _eigen_workspace(p: int):
    """Scratch arrays of :func:`_solve_eigen`: inactive list, 1/(d + λ), two p-vectors, the
    k × k system, its right-hand side."""
    return (
        np.empty(p, dtype=np.int64),
        np.empty(p),
        np.empty(p),
        np.empty(p),
        np.empty((p, p)),
        np.empty(p),
    )


@nb.njit(**_JIT)
def _solve_eigen(G, V, dv, c, S, mu, lam, es, w, z) -> bool:
    """Exact optimum on the active set and signs S via the eigendecomposition (G = V diag(dv)
    Vᵀ, V (p, p) with eigenvectors as columns): w (p,) and z = c − Gw (p,). Returns False
    (w, z undefined) when the inactive block M_II is numerically singular."""
    inact, inv, u, x, Mii, v = es[0], es[1], es[2], es[3], es[4], es[5]
    p = c.shape[0]
    for e in range(p):
        inv[e] = 1.0 / (dv[e] + lam)
        u[e] = 0.0
    k = 0
    for j in range(p):  # u = Vᵀ [c_A − μ s_A; 0]
        if S[j] != 0.0:
            bj, row = c[j] - mu * S[j], V[j]
            for e in range(p):
                u[e] += bj * row[e]
        else:
            inact[k] = j
            k += 1
    for e in range(p):
        u[e] *= inv[e]
    for j in range(p):  # x = M [b_A; 0]
        x[j] = _dot(V[j], u)
    if k > 0:
        for a in range(k):  # M_II (lower triangle) and x_I
            ra = V[inact[a]]
            for b in range(a + 1):
                rb = V[inact[b]]
                acc = 0.0
                for e in range(p):
                    acc += ra[e] * rb[e] * inv[e]
                Mii[a, b] = acc
            v[a] = x[inact[a]]
        if _cholesky_solve(Mii, v, k) >= 0:
            return False
        for e in range(p):  # u = diag(1/(d + λ)) V_Iᵀ M_II⁻¹ x_I
            u[e] = 0.0
        for a in range(k):
            ra, va = V[inact[a]], v[a]
            for e in range(p):
                u[e] += va * ra[e]
        for e in range(p):
            u[e] *= inv[e]
    for j in range(p):
        z[j] = c[j]
    for j in range(p):
        if S[j] == 0.0:
            w[j] = 0.0
            continue
        w[j] = x[j] - _dot(V[j], u) if k > 0 else x[j]
        row, wj = G[j], w[j]
        for i in range(p):
            z[i] -= row[i] * wj
    return True


@nb.njit(**_JIT)
def _solve_gram(G, V, dv, c, S, mu, lam, eigen_ok, ws, es, w, z, stats) -> None:
    """Exact optimum for the active set and signs S (writes w, z): eigen solve when it is
    cheaper and ``eigen_ok`` (G + λI well conditioned), else Cholesky of G_AA + λI."""
    act = ws[0]
    p = c.shape[0]
    q = _active(S, act)
    k = p - q
    stats[1] += 1
    if eigen_ok and 3.0 * p * p + 0.5 * k * k * p + k * k * k / 3.0 < q * q * q / 3.0 + q * q:
        stats[5] += 1
        if _solve_eigen(G, V, dv, c, S, mu, lam, es, w, z):
            return
    no_rows, no_cols = np.empty((0, p)), np.empty((p, 0))  # G present: rows are not needed
    _solve_primal(no_rows, no_cols, G, c, S, act, q, mu, lam, ws[4], ws[5], ws[6], w, z)


@nb.njit(**_JIT)
def _fold_error(H, g, s, w, act) -> float:
    """Squared validation error s − 2gᵀw + wᵀHw of coefficients w (p,); ``act`` scratch."""
    q = _active(w, act)
    e = s
    for a in range(q):
        ja = act[a]
        row, acc = H[ja], 0.0
        for b in range(q):
            acc += row[act[b]] * w[act[b]]
        e += w[ja] * (acc - 2.0 * g[ja])
    return e


@nb.njit(**_JIT)
def _gram_path(
    G, V, dv, R, RT, c, mu, lam, t_last, cap, pdas_iter, max_iter, H, g, s, err, coef, want_coef,
    ws, es, stats,
) -> None:  # fmt: skip
    """Solve one problem along grid points t = 0 … t_last (decreasing μ, λ (T,)), as
    :func:`.kernels._path` does, from G (p, p), its eigenvectors V (p, p) and eigenvalues dv
    (p,), its square root R (p, p) (RT = Rᵀ) and c (p,).

    With ``H.shape[0] > 0`` writes err[t] = s − 2gᵀw_t + w_tᵀHw_t (the fold's squared
    validation error); with ``want_coef`` coef[t] = w_t (p,).
    """
    p = c.shape[0]
    K, Vd, SK, act = ws[1], ws[2], ws[3], ws[0]
    for i in range(p):  # the dual kernel of the monotone fallback starts empty
        Vd[i] = 0.0
        SK[i] = 0.0
        for j in range(p):
            K[i, j] = 0.0
    ytil = np.zeros(p)  # Rᵀỹ = c, for the fallback
    top = 0.0
    for i in range(p):
        top = max(top, dv[i])
    for i in range(p):
        if dv[i] > _ZERO_EIGEN * top:
            acc = 0.0
            for j in range(p):
                acc += V[j, i] * c[j]
            ytil[i] = acc / np.sqrt(dv[i])
    d_min = np.inf
    for i in range(p):
        d_min = min(d_min, dv[i])
    w, z, w_prev, z_prev = np.zeros(p), np.empty(p), np.zeros(p), np.empty(p)
    wn, zn, zg = np.empty(p), np.empty(p), np.empty(p)
    S, Sg = np.zeros(p), np.zeros(p)
    cand = np.empty(p, dtype=np.int64)
    for j in range(p):
        z[j] = c[j]
        z_prev[j] = c[j]
    for t in range(t_last + 1):
        mu_t, lam_t = mu[t], lam[t]
        eigen_ok = V.shape[0] > 0 and d_min + lam_t > _EIGEN_RCOND * (top + lam_t)
        n_cand = 0
        for j in range(p):
            zg[j] = 2.0 * z[j] - z_prev[j]
            Sg[j] = S[j] if S[j] * (2.0 * w[j] - w_prev[j]) > 0.0 else 0.0
            if Sg[j] == 0.0 and abs(zg[j]) > mu_t:
                cand[n_cand] = j
                n_cand += 1
        _enter_capped(Sg, cand, zg, n_cand, cap)
        settled = False
        for it in range(pdas_iter):
            _solve_gram(G, V, dv, c, Sg, mu_t, lam_t, eigen_ok, ws, es, wn, zn, stats)
            if _violations(Sg, wn, zn, mu_t) == 0:
                settled = True
                break
            if it == pdas_iter - 1:
                break
            lim = mu_t * (1.0 + BOUNDARY_RTOL)
            n_cand = 0
            for j in range(p):
                if Sg[j] == 0.0:
                    if abs(zn[j]) > lim:
                        cand[n_cand] = j
                        n_cand += 1
                elif Sg[j] * wn[j] < 0.0:
                    Sg[j] = 0.0
            _enter_capped(Sg, cand, zn, n_cand, cap)
        w_prev, w, wn = w, wn, w_prev
        z_prev, z, zn = z, zn, z_prev
        if not settled:
            _monotone(R, RT, G, ytil, c, mu_t, lam_t, cap, max_iter, w_prev, S, ws, w, z, Sg, stats)
        for j in range(p):
            S[j] = Sg[j]
        stats[0] += 1
        if H.shape[0] > 0:
            err[t] = _fold_error(H, g, s, w, act)
        if want_coef:
            for j in range(p):
                coef[t, j] = w[j]


@nb.njit(**_JIT)
def gram_paths(G, V, dv, R, RT, H, which, C, g, s, mu, lam, t_last, cap, pdas_iter, max_iter,
               want_coef):  # fmt: skip
    """Solve problems b = 0 … B − 1 along their paths; see :func:`_gram_path`.

    G, V, R, RT (D, p, p) and dv (D, p): each design's Gram matrix, eigenvectors (columns),
    square root and its transpose, eigenvalues; H (D, p, p) held-out Gram matrices, or
    (D, 0, 0) for no validation error; which (B,) each problem's design; C (B, p) = Zᵀ(y − ȳ);
    g (B, p), s (B,) held-out terms; mu, lam (B, T); t_last (B,); cap (B,).
    Returns err (B, T) squared validation errors (NaN after t_last or without H), coef
    (B, T, p) (shape (0, T, p) without ``want_coef``) and stats (N_STATS,).
    """
    B, T = mu.shape
    p = G.shape[1]
    err = np.full((B, T), np.nan)
    coef = np.zeros((B if want_coef else 0, T, p))
    dummy = np.zeros((T, p))
    stats = np.zeros(N_STATS, dtype=np.int64)
    ws = _workspace(p, p)
    es = _eigen_workspace(p)
    for b in range(B):
        d = which[b]
        if t_last[b] < 0:
            continue
        _gram_path(
            G[d], V[d], dv[d], R[d], RT[d], C[b], mu[b], lam[b], t_last[b], cap[b], pdas_iter,
            max_iter, H[d], g[b], s[b], err[b], coef[b] if want_coef else dummy, want_coef, ws,
            es, stats,
        )  # fmt: skip
    return err, coef, stats


@nb.njit(**_JIT)
def cv_permutation_block(
    C, g, s, order, m_rows, G, V, dv, R, RT, H, mu_row, ratio, rho_order, cap, limit, cut,
    exact, pdas_iter, max_iter,
):  # fmt: skip
    """Minimum K-fold CV error of permuted outcomes, pruned like
    :func:`.kernels.permutation_block` (same rules, folds in place of participants).

    C, g (N, F, p) and s (N, F): each permutation's training and held-out terms per fold;
    order (N, F) first fold order; m_rows (F,) training rows per fold; G, V, R, RT, H
    (F, p, p), dv (F, p): the folds' designs (see :func:`gram_paths`); mu_row (N, T) the
    permutation's penalty path per training row (μ of fold f = m_rows[f] · mu_row);
    ratio (R,) λ/μ per mixing ratio; rho_order (R,); cap (R, F); ``cut``: the observed
    minimum as a sum of squared errors over every participant (with the tie tolerance),
    ``limit``: cut with a rounding margin (a partial sum above it is dead).

    Returns best (N,), the minimum sum of squared errors over the grid — exact with
    ``exact``, else ≤ cut exactly when the true one is — and stats (N_STATS,).
    """
    N, F, p = C.shape
    T = mu_row.shape[1]
    n_rho = ratio.shape[0]
    best = np.full(N, np.inf)
    stats = np.zeros(N_STATS, dtype=np.int64)
    ws = _workspace(p, p)
    es = _eigen_workspace(p)
    sums, err = np.empty(T), np.empty(T)
    mu, lam = np.empty(T), np.empty(T)
    dummy = np.zeros((T, p))
    decided = np.zeros(n_rho)
    prio = np.empty(n_rho)
    for a in range(n_rho):
        prio[rho_order[a]] = n_rho - a
    rhos = np.empty(n_rho, dtype=np.int64)
    folds = np.empty(F, dtype=np.int64)
    score = np.empty(F)
    for i in range(N):
        for f in range(F):
            folds[f] = order[i, f]
            score[f] = s[i, f]  # the empty model's error
        for a in range(n_rho):
            rhos[a] = rho_order[a]
        if not exact:
            _sort_desc(decided * (n_rho + 1.0) + prio, rhos)
        for a in range(n_rho):
            r = rhos[a]
            if a > 0 and not exact:
                _sort_desc(score, folds)
            for t in range(T):
                sums[t] = 0.0
            t_last = T - 1
            for stage in range(F):
                f = folds[stage]
                for t in range(T):
                    mu[t] = m_rows[f] * mu_row[i, t]
                    lam[t] = mu[t] * ratio[r]
                _gram_path(
                    G[f], V[f], dv[f], R[f], RT[f], C[i, f], mu, lam, t_last, cap[r, f],
                    pdas_iter, max_iter, H[f], g[i, f], s[i, f], err, dummy, False, ws, es,
                    stats,
                )  # fmt: skip
                total = 0.0
                for t in range(t_last + 1):
                    sums[t] += err[t]
                    total += err[t]
                score[f] = total / (t_last + 1)
                for t in range(t_last + 1, T):
                    sums[t] = np.inf
                if not exact:
                    while t_last >= 0 and not sums[t_last] <= limit:
                        t_last -= 1
                    if t_last < 0:
                        break
            if t_last >= 0:
                total = np.inf
                for t in range(T):
                    total = min(total, sums[t])
                best[i] = min(best[i], total)
                if not exact and best[i] <= cut:
                    decided[r] += 1
                    break
    return best, stats
