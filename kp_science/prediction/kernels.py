"""Compiled (numba) kernels of the exact elastic-net path solver; see :mod:`.solver`.

One problem at a time, one grid point after the other: in compiled code a 19 × 19 system
costs about a microsecond, so nothing is gained by batching problems, and each problem can
stop, be pruned or be skipped on its own. Everything here works in the centring basis of
:mod:`.solver` (m = rows − 1) and on

* ``X`` (m, p) the design and ``XT`` (p, m) its columns as rows (x_j = XT[j]), both
  contiguous, so that Xᵀθ and X_A s_A are sums of contiguous rows (vectorised loops);
* ``G`` (p, p): its Gram matrix XᵀX — or, when p is too large to keep one per design, an
  empty (0, p) array: products with G are then formed from X (slower for small active
  sets, no p × p memory);
* signs ``S`` (p,) float: the active set A = {j: S_j ≠ 0} with the signs of its
  coefficients.

Objective (sum scaling): ½‖y − Xw‖² + μ‖w‖₁ + ½λ‖w‖². For a given (A, s):

* primal, |A| < m or λ = 0: (G_AA + λI) w_A = c_A − μ s_A, c = Xᵀy;
* dual, λ > 0 and |A| ≥ m: (X_A X_Aᵀ + λI) θ = λy + μ X_A s_A, w_A = (X_Aᵀθ − μ s_A)/λ,

and the Karush–Kuhn–Tucker check (z = Xᵀ(y − Xw)): ``|z_j| ≤ μ`` for j ∉ A and
``sign(w_j) = s_j`` for j ∈ A decides whether the solution is the optimum. The m × m kernel
X_A X_Aᵀ of the dual is kept per problem and updated by rank-one terms. Systems are solved
by Cholesky (lower factor, dot-product form along contiguous rows).

Only explicit loops and ``np.empty``/``np.zeros`` are used: numba's generic slicing,
broadcasting and ``linalg`` routines would each add seconds to the first compilation (the
compiled code is cached on disk, ``cache=True``).

Work counters (``stats``, int64): 0 instances (problem × grid point), 1 linear solves,
2 of them dual, 3 monotone steps, 4 coordinate-descent fallbacks.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

# KKT check: an inactive column may exceed μ by this relative amount (a column exactly on the
# boundary has w_j = 0 either way, so both verdicts give the same solution).
BOUNDARY_RTOL = 1e-10
# a Cholesky pivot below this fraction of its diagonal entry: numerically singular system
_PIVOT_RTOL = 1e-13

# typed as Any-valued: each keyword goes to its own, differently typed parameter of njit
_JIT: dict[str, Any] = dict(
    cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"}
)


@nb.njit(**_JIT)
def _cholesky_solve(M: np.ndarray, b: np.ndarray, q: int) -> int:
    """Solve M x = b for the symmetric positive definite leading q × q block of M, given by
    its lower triangle (overwritten by the factor L, M = LLᵀ); b[:q] ← x. Returns −1, or
    the first index j whose pivot is not clearly positive — row/column j depends on the ones
    before it (M and b are then undefined). Dot-product (left-looking) form: the inner loops
    run along contiguous rows."""
    for j in range(q):
        Mj = M[j]
        d = Mj[j]
        for k in range(j):
            d -= Mj[k] * Mj[k]
        if not d > _PIVOT_RTOL * Mj[j]:
            return j
        d = np.sqrt(d)
        Mj[j] = d
        inv = 1.0 / d
        for i in range(j + 1, q):
            Mi = M[i]
            s = Mi[j]
            for k in range(j):
                s -= Mi[k] * Mj[k]
            Mi[j] = s * inv
    for i in range(q):  # L u = b
        Mi = M[i]
        s = b[i]
        for k in range(i):
            s -= Mi[k] * b[k]
        b[i] = s / Mi[i]
    for i in range(q - 1, -1, -1):  # Lᵀ x = u
        Mi = M[i]
        u = b[i] / Mi[i]
        b[i] = u
        for k in range(i):
            b[k] -= Mi[k] * u
    return -1


@nb.njit(**_JIT)
def _dot(x: np.ndarray, v: np.ndarray) -> float:
    """xᵀv of two vectors (m,)."""
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * v[i]
    return s


@nb.njit(**_JIT)
def _gram_entry(G, XT, a: int, b: int) -> float:
    """(XᵀX)_ab, from G when there is one."""
    if G.shape[0] > 0:
        return G[a, b]
    return _dot(XT[a], XT[b])


@nb.njit(**_JIT)
def _primal_system(G, XT, c, S, act, q, mu, lam, M, rhs) -> None:
    """Lower triangle of M[:q, :q] ← G_AA + λI and rhs[:q] ← c_A − μ s_A."""
    for a in range(q):
        for b in range(a + 1):
            M[a, b] = _gram_entry(G, XT, act[a], act[b])
        M[a, a] += lam
        rhs[a] = c[act[a]] - mu * S[act[a]]


@nb.njit(**_JIT)
def _solve_primal(X, XT, G, c, S, act, q, mu, lam, M, rhs, r, w, z) -> None:
    """Primal solve on (A, s): w (p,) and z = c − G_{:,A} w_A (p,) (without G:
    c − Xᵀ(X_A w_A), via the scratch r (m,)).

    A lasso (λ = 0) system is singular when active columns are linearly dependent —
    duplicated columns, say, whose lasso coefficients are not unique. A column whose pivot
    vanishes depends on the ones before it: it leaves the active set (S_j ← 0), which picks
    one of the equally good solutions, and the KKT check then judges the result as usual.
    """
    p = c.shape[0]
    while True:
        _primal_system(G, XT, c, S, act, q, mu, lam, M, rhs)
        dependent = _cholesky_solve(M, rhs, q)
        if dependent < 0:
            break
        S[act[dependent]] = 0.0
        for a in range(dependent, q - 1):
            act[a] = act[a + 1]
        q -= 1
    for j in range(p):
        w[j] = 0.0
        z[j] = c[j]
    for a in range(q):
        w[act[a]] = rhs[a]
    if G.shape[0] > 0:
        for a in range(q):
            row, wa = G[act[a]], rhs[a]
            for j in range(p):
                z[j] -= row[j] * wa
        return
    m = X.shape[0]
    for i in range(m):
        r[i] = 0.0
    for a in range(q):
        x, wa = XT[act[a]], rhs[a]
        for i in range(m):
            r[i] += x[i] * wa
    for i in range(m):
        row, ri = X[i], r[i]
        for j in range(p):
            z[j] -= row[j] * ri


@nb.njit(**_JIT)
def _update_kernel(XT, S, K, V, SK) -> None:
    """Make K (lower triangle) = X_A X_Aᵀ and V = X_A s_A for the signs S, from the ones
    of the signs SK, by rank-one terms for the columns that changed (from K = 0, V = 0 this
    is the plain sum)."""
    p, m = XT.shape
    for j in range(p):
        if S[j] == SK[j]:
            continue
        x = XT[j]
        ds = S[j] - SK[j]
        for i in range(m):
            V[i] += ds * x[i]
        if (S[j] != 0.0) != (SK[j] != 0.0):  # membership changed, not just the sign
            sgn = 1.0 if S[j] != 0.0 else -1.0
            for i in range(m):
                xi = sgn * x[i]
                Ki = K[i]
                for k in range(i + 1):
                    Ki[k] += xi * x[k]
        SK[j] = S[j]


@nb.njit(**_JIT)
def _solve_dual(X, XT, y, S, act, q, mu, lam, K, V, SK, M, rhs, w, z) -> None:
    """Dual (kernel) solve on (A, s), λ > 0: w (p,) and z = Xᵀθ (p,)."""
    m, p = X.shape
    _update_kernel(XT, S, K, V, SK)
    for i in range(m):
        for k in range(i + 1):
            M[i, k] = K[i, k]
        M[i, i] += lam
        rhs[i] = lam * y[i] + mu * V[i]
    # K + λI is positive definite for λ > 0: the factorisation cannot fail
    _cholesky_solve(M, rhs, m)
    for j in range(p):
        z[j] = 0.0
        w[j] = 0.0
    for i in range(m):
        row, th = X[i], rhs[i]
        for j in range(p):
            z[j] += row[j] * th
    for a in range(q):
        ja = act[a]
        w[ja] = (z[ja] - mu * S[ja]) / lam


@nb.njit(**_JIT)
def _active(S: np.ndarray, act: np.ndarray) -> int:
    """act[:q] ← the active columns {j: S_j ≠ 0} in order; returns q."""
    q = 0
    for j in range(S.shape[0]):
        if S[j] != 0.0:
            act[q] = j
            q += 1
    return q


@nb.njit(**_JIT)
def _solve(X, XT, G, y, c, S, mu, lam, ws, w, z, stats) -> None:
    """Exact optimum for the active set and signs S: writes w and z (p,). ``ws``: the
    workspace of :func:`_workspace`."""
    act, K, V, SK, M, rhs, r = ws[0], ws[1], ws[2], ws[3], ws[4], ws[5], ws[6]
    m = X.shape[0]
    q = _active(S, act)
    stats[1] += 1
    if q < m or lam <= 0.0:
        # the lasso caps |A| at rank(X) ≤ m, so this cannot happen; were it to, columns
        # beyond m are dependent anyway (and M has room for m)
        for a in range(M.shape[0], q):
            S[act[a]] = 0.0
        q = min(q, M.shape[0])
        _solve_primal(X, XT, G, c, S, act, q, mu, lam, M, rhs, r, w, z)
    else:
        stats[2] += 1
        _solve_dual(X, XT, y, S, act, q, mu, lam, K, V, SK, M, rhs, w, z)


@nb.njit(**_JIT)
def _workspace(m: int, p: int):
    """Scratch arrays of :func:`_solve`: active list; dual kernel X_A X_Aᵀ, X_A s_A and
    the signs they are for; system matrix; right-hand side; an m-vector."""
    return (
        np.empty(p, dtype=np.int64),
        np.zeros((m, m)),
        np.zeros(m),
        np.zeros(p),
        np.empty((m, m)),
        np.empty(max(m, 1)),
        np.empty(m),
    )


@nb.njit(**_JIT)
def _violations(S, w, z, mu) -> int:
    """Number of KKT violations: active with the wrong sign, inactive with |z_j| > μ."""
    lim = mu * (1.0 + BOUNDARY_RTOL)
    n = 0
    for j in range(S.shape[0]):
        if S[j] == 0.0:
            if abs(z[j]) > lim:
                n += 1
        elif S[j] * w[j] < 0.0:
            n += 1
    return n


@nb.njit(**_JIT)
def _enter_capped(S, cand, score, n_cand, cap) -> None:
    """Give the candidate columns cand[:n_cand] the sign of score, keeping |A| ≤ cap: when
    there is no room for all, those with the largest |score| enter (ties: lower index)."""
    size = 0
    for j in range(S.shape[0]):
        if S[j] != 0.0:
            size += 1
    room = cap - size
    if n_cand <= room:
        for i in range(n_cand):
            j = cand[i]
            S[j] = 1.0 if score[j] > 0 else -1.0
        return
    for _ in range(max(room, 0)):  # selection, one at a time (rare)
        best, i_best = -1.0, -1
        for i in range(n_cand):
            j = cand[i]
            if S[j] == 0.0 and abs(score[j]) > best:
                best, i_best = abs(score[j]), i
        if i_best < 0:  # only NaN scores left
            return
        j = cand[i_best]
        S[j] = 1.0 if score[j] > 0 else -1.0


@nb.njit(**_JIT)
def _null_step(G, XT, Wc, Sc, jb, sg, ws) -> bool:
    """Lasso with |A| = rank(X): column jb cannot simply enter (singular system). Move along
    the null direction of X_{A∪jb} — X_A v = −s x_jb keeps the fit and lowers the penalty —
    until an active coefficient reaches zero; that column leaves, jb enters. False if no
    coefficient reaches zero (then the caller falls back)."""
    act, M, rhs = ws[0], ws[4], ws[5]
    q = _active(Sc, act)
    # the system G_AA v = −s G_{A,jb}
    for a in range(q):
        for b in range(a + 1):
            M[a, b] = _gram_entry(G, XT, act[a], act[b])
        rhs[a] = -sg * _gram_entry(G, XT, act[a], jb)
    if _cholesky_solve(M, rhs, q) >= 0:
        return False
    g_min, k_min = np.inf, -1
    for a in range(q):
        ja = act[a]
        if Sc[ja] * rhs[a] < 0.0:
            g = -Wc[ja] / rhs[a]
            if g < g_min:
                g_min, k_min = g, a
    if k_min < 0 or not np.isfinite(g_min):
        return False
    for a in range(q):
        Wc[act[a]] += g_min * rhs[a]
    leave = act[k_min]
    Wc[jb] = g_min * sg
    Wc[leave] = 0.0
    Sc[leave] = 0.0
    Sc[jb] = sg
    return True


@nb.njit(**_JIT)
def _coordinate_descent(X, XT, y, mu, lam, w, z) -> None:
    """Coordinate descent from w to convergence (changes below 1e-13 of the largest |w|);
    z ← Xᵀ(y − Xw). The last resort of :func:`_monotone` (not seen in testing)."""
    m, p = X.shape
    res = y.copy()
    for j in range(p):
        if w[j] != 0.0:
            for i in range(m):
                res[i] -= XT[j, i] * w[j]
    for _ in range(1_000_000):
        change, top = 0.0, 0.0
        for j in range(p):
            x = XT[j]
            norm2, u = 0.0, 0.0
            for i in range(m):
                norm2 += x[i] * x[i]
                u += x[i] * res[i]
            old = w[j]
            u += norm2 * old
            den = norm2 + lam
            new = 0.0
            if den > 0.0 and abs(u) > mu:
                new = (u - mu if u > 0 else u + mu) / den
            d = new - old
            if d != 0.0:
                for i in range(m):
                    res[i] -= x[i] * d
                w[j] = new
                change = max(change, abs(d))
            top = max(top, abs(new))
        if change <= 1e-13 * max(top, 1e-300):
            break
    for j in range(p):
        z[j] = 0.0
    for i in range(m):
        row, ri = X[i], res[i]
        for j in range(p):
            z[j] += row[j] * ri


@nb.njit(**_JIT)
def _monotone(X, XT, G, y, c, mu, lam, cap, max_iter, W0, S0, ws, w, z, S, stats) -> None:
    """Osborne–Presnell–Turlach active-set method from (W0, S0), the previous grid point's
    solution (sign-consistent with its active set); writes the optimum into w, z, S.

    Each step solves on the current (A, s); if a coefficient would change sign, it moves to
    the first zero crossing and drops that column, otherwise it accepts the solution and
    adds the single most violating column. Both moves lower the objective, so no active set
    repeats and the method terminates.
    """
    p = c.shape[0]
    Wc = np.empty(p)
    for j in range(p):
        Wc[j] = W0[j]
        S[j] = S0[j]
    lim = mu * (1.0 + BOUNDARY_RTOL)
    for _ in range(max_iter):
        stats[3] += 1
        _solve(X, XT, G, y, c, S, mu, lam, ws, w, z, stats)
        g_min, j_min = np.inf, -1
        for j in range(p):
            if S[j] * w[j] < 0.0:
                g = Wc[j] / (Wc[j] - w[j])
                if g < g_min:
                    g_min, j_min = g, j
        if j_min >= 0:  # step to the first zero crossing, drop that column
            g = min(max(g_min, 0.0), 1.0)
            for j in range(p):
                Wc[j] += g * (w[j] - Wc[j])
            Wc[j_min] = 0.0
            S[j_min] = 0.0
            continue
        best, jb, size = 0.0, -1, 0
        for j in range(p):
            Wc[j] = w[j]
            if S[j] == 0.0:
                e = abs(z[j]) - lim
                if e > best:
                    best, jb = e, j
            else:
                size += 1
        if jb < 0:
            return  # optimal
        sg = 1.0 if z[jb] > 0 else -1.0
        if size >= cap:
            if not _null_step(G, XT, Wc, S, jb, sg, ws):
                break
        else:
            S[jb] = sg
    # not settled: coordinate descent, then the exact solution on its support if it checks
    stats[4] += 1
    for j in range(p):
        w[j] = Wc[j]
    _coordinate_descent(X, XT, y, mu, lam, w, z)
    size = 0
    for j in range(p):
        S[j] = 0.0 if w[j] == 0.0 else (1.0 if w[j] > 0 else -1.0)
        size += S[j] != 0.0
    if size <= cap:
        w2, z2, S2 = np.empty(p), np.empty(p), S.copy()
        _solve(X, XT, G, y, c, S2, mu, lam, ws, w2, z2, stats)
        if _violations(S2, w2, z2, mu) == 0:
            for j in range(p):
                w[j] = w2[j]
                z[j] = z2[j]
                S[j] = S2[j]


@nb.njit(**_JIT)
def _path(
    X, XT, G, xe, y, mu, lam, t_last, cap, pdas_iter, max_iter, pred, coef, want_coef, ws, stats
) -> None:
    """Solve one problem along grid points t = 0 … t_last (decreasing penalties μ, λ (T,)).

    X (m, p), XT (p, m), G (p, p), xe (k, p) evaluation rows, y (m,) outcome in the
    centring basis; ``ws``: :func:`_workspace`. Writes pred[t] = xe·w_t (k,) and, with
    ``want_coef``, coef[t] = w_t (p,).

    Each grid point starts from a guess of its active set — the solutions at t − 1 and t − 2
    extrapolated linearly (the grid is geometric: linear in log α) — then up to
    ``pdas_iter`` primal–dual active-set updates (all violators at once), then the monotone
    method from the previous solution.
    """
    m, p = X.shape
    k = xe.shape[0]
    K, V, SK = ws[1], ws[2], ws[3]
    for i in range(m):
        V[i] = 0.0
        for j in range(m):
            K[i, j] = 0.0
    c = np.zeros(p)
    for i in range(m):
        row, yi = X[i], y[i]
        for j in range(p):
            c[j] += row[j] * yi
    w, z, w_prev, z_prev = np.zeros(p), np.empty(p), np.zeros(p), np.empty(p)
    wn, zn, zg = np.empty(p), np.empty(p), np.empty(p)
    S, Sg = np.zeros(p), np.zeros(p)
    cand = np.empty(p, dtype=np.int64)
    for j in range(p):
        z[j] = c[j]
        z_prev[j] = c[j]
        SK[j] = 0.0
    for t in range(t_last + 1):
        mu_t, lam_t = mu[t], lam[t]
        # guess: active coefficients predicted to cross zero leave, inactive columns
        # predicted to clear μ enter
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
            _solve(X, XT, G, y, c, Sg, mu_t, lam_t, ws, wn, zn, stats)
            if _violations(Sg, wn, zn, mu_t) == 0:
                settled = True
                break
            if it == pdas_iter - 1:
                break
            # all violators at once: wrong signs leave, columns over μ enter
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
        # shift the history: (w_prev, z_prev) ← (w, z), (w, z) ← the new solution
        w_prev, w, wn = w, wn, w_prev
        z_prev, z, zn = z, zn, z_prev
        if not settled:
            _monotone(X, XT, G, y, c, mu_t, lam_t, cap, max_iter, w_prev, S, ws, w, z, Sg, stats)
        for j in range(p):
            S[j] = Sg[j]
        stats[0] += 1
        for r in range(k):
            s = 0.0
            row = xe[r]
            for j in range(p):
                s += row[j] * w[j]
            pred[t, r] = s
        if want_coef:
            for j in range(p):
                coef[t, j] = w[j]


@nb.njit(**_JIT)
def gram(XT: np.ndarray) -> np.ndarray:
    """XᵀX (p, p) of a design given by its columns as rows XT (p, m)."""
    p = XT.shape[0]
    G = np.empty((p, p))
    for a in range(p):
        for b in range(a + 1):
            G[a, b] = _dot(XT[a], XT[b])
            G[b, a] = G[a, b]
    return G


@nb.njit(**_JIT)
def paths_batch(X, XT, G, XE, which, Y, mu, lam, t_last, cap, pdas_iter, max_iter, want_coef):
    """Solve problems b = 0 … B − 1 along their paths; see :func:`_path`.

    X (D, m, p) designs and XT (D, p, m) their columns as rows; G (D, p, p) their Gram
    matrices or (0, 0, p) to work without; XE (D, k, p) evaluation rows; which (B,) each
    problem's design; Y (B, m); mu, lam (B, T); t_last (B,) last grid point (−1: none);
    cap (B,) largest active set. Returns pred (B, T, k) (NaN after t_last), coef (B, T, p)
    (zeros after t_last; shape (0, T, p) without ``want_coef``) and stats (5,).
    """
    B, T = mu.shape
    D, m, p = X.shape
    k = XE.shape[1]
    pred = np.full((B, T, k), np.nan)
    coef = np.zeros((B if want_coef else 0, T, p))
    dummy = np.zeros((T, p))
    stats = np.zeros(5, dtype=np.int64)
    ws = _workspace(m, p)
    no_gram = np.empty((0, p))
    for b in range(B):
        d = which[b]
        if t_last[b] < 0:
            continue
        _path(
            X[d],
            XT[d],
            G[d] if G.shape[0] > 0 else no_gram,
            XE[d],
            Y[b],
            mu[b],
            lam[b],
            t_last[b],
            cap[b],
            pdas_iter,
            max_iter,
            pred[b],
            coef[b] if want_coef else dummy,
            want_coef,
            ws,
            stats,
        )
    return pred, coef, stats


@nb.njit(**_JIT)
def _sort_desc(keys: np.ndarray, idx: np.ndarray) -> None:
    """Stable insertion sort of idx (short) by decreasing keys[idx]."""
    for a in range(1, idx.shape[0]):
        v = idx[a]
        b = a - 1
        while b >= 0 and keys[idx[b]] < keys[v]:
            idx[b + 1] = idx[b]
            b -= 1
        idx[b + 1] = v


@nb.njit(**_JIT)
def _fold_errors(
    X,
    XT,
    Gf,
    XE,
    Q,
    train_idx,
    y,
    f,
    mu,
    lam,
    t_last,
    cap,
    pdas_iter,
    max_iter,
    ytr,
    yq,
    pred,
    dummy,
    ws,
    stats,
) -> float:
    """LOO fold f of outcome y (n,): solve its path up to t_last and leave the held-out
    participant's predictions (outcome units, training mean not yet added) in pred[:, 0];
    returns the empty model's error, y_f − mean of the training outcomes."""
    m_full, m = Q.shape
    mean = 0.0
    for a in range(m_full):
        ytr[a] = y[train_idx[f, a]]
        mean += ytr[a]
    mean /= m_full
    for b in range(m):
        yq[b] = 0.0
    for a in range(m_full):  # yq = Qᵀ y (Qᵀ1 = 0: centring included)
        qa, ya = Q[a], ytr[a]
        for b in range(m):
            yq[b] += qa[b] * ya
    _path(
        X[f],
        XT[f],
        Gf,
        XE[f],
        yq,
        mu,
        lam,
        t_last,
        cap,
        pdas_iter,
        max_iter,
        pred,
        dummy,
        False,
        ws,
        stats,
    )
    return y[f] - mean


@nb.njit(**_JIT)
def permutation_block(
    Yp,
    order,
    train_idx,
    Q,
    X,
    XT,
    G,
    XE,
    mu_row,
    ratio,
    rho_order,
    cap,
    limit,
    cut,
    exact,
    pdas_iter,
    max_iter,
):
    """Minimum LOO error of permuted outcomes, pruned; see :mod:`.evaluation`.

    Yp (N, n) permuted outcomes; order (N, n) first fold order per permutation; train_idx
    (n, n−1); Q (n − 1, m) centring basis of the training rows; X (n, m, p), XT (n, p, m),
    G (n, p, p) or (0, 0, p), XE (n, 1, p): the folds' z-scored designs, Gram matrices (or
    none, see :func:`_gram_entry`) and held-out rows;
    mu_row (N, T) the permutation's μ path; ratio (R,) λ/μ of each mixing ratio; rho_order
    (R,) the mixing ratios by priority; cap (R, n) largest active set (rank for the lasso).

    With ``exact`` every (mixing ratio, fold, grid point) is solved, folds and mixing ratios
    in the given order. Otherwise (every rule below is exact — the verdict "minimum ≤ cut"
    of each permutation is the one of the full computation):

    * squared errors only add up, so a grid point whose partial sum over the folds done so
      far exceeds ``limit`` (n × cut, with a margin) can never end ≤ cut: a mixing ratio's
      paths stop after its last grid point still under ``limit``, and the mixing ratio is
      abandoned when none is left;
    * a permutation stops as soon as one mixing ratio completes all folds with a minimum ≤
      cut — its verdict is decided, the other mixing ratios cannot change it;
    * so the mixing ratio most likely to decide it should come first: mixing ratios are
      tried by how many permutations of this block each has decided so far (ties: the
      ``rho_order`` priority);
    * and folds with large errors should come first, so that grid points die early: the
      first mixing ratio takes ``order``, each later one takes the folds by decreasing
      mean squared error in the earlier mixing ratios of the same permutation (folds not
      yet done keep their previous score, initially the empty model's error).

    Returns best (N,) — the minimum LOO mean squared error (exact), or with pruning a value
    that is ≤ cut exactly when the true minimum is — and stats (5,).
    """
    N, n = Yp.shape
    T = mu_row.shape[1]
    R = ratio.shape[0]
    m_full, m = Q.shape
    p = X.shape[2]
    best = np.full(N, np.inf)
    stats = np.zeros(5, dtype=np.int64)
    ws = _workspace(m, p)
    sums = np.empty(T)
    ytr = np.empty(m_full)
    yq = np.empty(m)
    lam = np.empty(T)
    pred = np.empty((T, 1))
    dummy = np.zeros((T, p))
    no_gram = np.empty((0, p))
    decided = np.zeros(R)  # permutations of this block decided by each mixing ratio
    prio = np.empty(R)
    for a in range(R):
        prio[rho_order[a]] = R - a
    rhos = np.empty(R, dtype=np.int64)
    folds = np.empty(n, dtype=np.int64)
    score = np.empty(n)
    for i in range(N):
        y = Yp[i]
        total = 0.0
        for a in range(n):
            total += y[a]
        for a in range(n):
            folds[a] = order[i, a]
            e0 = y[a] - (total - y[a]) / (n - 1)
            score[a] = e0 * e0
        for a in range(R):
            rhos[a] = rho_order[a]
        if not exact:
            keys = decided * (R + 1.0) + prio
            _sort_desc(keys, rhos)
        for a in range(R):
            r = rhos[a]
            if a > 0 and not exact:
                _sort_desc(score, folds)
            for t in range(T):
                lam[t] = mu_row[i, t] * ratio[r]
                sums[t] = 0.0
            t_last = T - 1
            for stage in range(n):
                f = folds[stage]
                e0 = _fold_errors(
                    X,
                    XT,
                    G[f] if G.shape[0] > 0 else no_gram,
                    XE,
                    Q,
                    train_idx,
                    y,
                    f,
                    mu_row[i],
                    lam,
                    t_last,
                    cap[r, f],
                    pdas_iter,
                    max_iter,
                    ytr,
                    yq,
                    pred,
                    dummy,
                    ws,
                    stats,
                )
                total = 0.0
                for t in range(t_last + 1):
                    e = e0 - pred[t, 0]
                    sums[t] += e * e
                    total += e * e
                score[f] = total / (t_last + 1)
                for t in range(t_last + 1, T):
                    sums[t] = np.inf
                if not exact:
                    while t_last >= 0 and not sums[t_last] <= limit:
                        t_last -= 1
                    if t_last < 0:
                        break
            if t_last >= 0:
                mse = np.inf
                for t in range(T):
                    mse = min(mse, sums[t])
                mse /= n
                best[i] = min(best[i], mse)
                if not exact and best[i] <= cut:
                    decided[r] += 1
                    break
    return best, stats
