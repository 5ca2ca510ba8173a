"""Benchmark: the elastic-net analysis (issue 4) on a simulated 21 × 100 study.

1. All four variants (main, interaction, covariate, ketamine_only) with nested LOO, 1000
   permutations and 500 bootstraps, ``n_jobs`` worker threads — target ≤ 60 s on 2 cores,
   for any effect size (``--strength 0.9``, ``0.4``, ``0``).
2. One variant without permutations: the batched LOO selection (10 l1_ratios × 50 alphas ×
   21 folds = 10 500 fits) against a brute-force loop of ``sklearn ElasticNet.fit`` over
   the same grid and folds (tol 1e-12) — target ≥ 20× faster with identical results
   (same selected grid point, every fold's coefficients within 1e-6).

Simulated data: ``kp_science.prediction.synthetic.synthetic_study`` — 21
participants, 100 change scores, 11 ketamine / 10 midazolam, MADRS improvement correlated
with CAPS-5 improvement; three effects planted (vmPFC→amygdala faces gPPI in both arms,
stronger on ketamine; dACC conflict regulation and vmPFC–insula rest FC on ketamine).

The permutation test's cost depends on the data: it stops refitting a permutation's grid
points once they cannot beat the observed LOO error, and a permutation once one mixing
ratio beats it, so it solves roughly 5–10 % of the full 10⁷ fits per variant with a clear
effect (default strength 0.9: every variant significant) and about 20 % on a null study
(--strength 0); see :mod:`kp_science.prediction.evaluation`.

The solver is compiled by numba on first use (about half a minute of CPU, once per machine:
the machine code is cached on disk). The benchmark first loads (or compiles) it on a tiny
problem and reports that time separately. The machine may be shared: the load average is
printed before and after, with the run's wall and CPU time.

With ``--participants`` above ``EnetSettings.loo_max_participants`` (default 60) the
analysis switches to K-fold cross-validation (:mod:`kp_science.prediction.kfold`), and the
benchmark to its targets (issue 19):

1. all four variants with nested 10-fold CV, 1000 permutations and 500 bootstraps at
   N = 1000 (``--participants 1000``; ``synthetic_study(1000, 100, seed)``) — target
   ≤ 10 min wall on 2 cores;
2. one 10-fold selection of the main variant (10 folds × 10 l1_ratios × 50 alphas) against
   scikit-learn's ``enet_path`` — the warm-started coordinate descent with a precomputed
   Gram matrix that ``ElasticNetCV`` runs in each fold — on the same folds, grid and
   fold-internal z-scoring (ElasticNetCV itself cannot z-score inside the folds), at
   ElasticNetCV's default tolerance (1e-4): the ratio of the two times, and the same
   selected grid point.

``--schemes 30,50,70`` measures instead what sets the default of
``EnetSettings.loo_max_participants``: for each N, the cost of the whole analysis (all
four variants, default grid) by exact LOO and by 10-fold CV, each from two runs on one
thread — nested CV with no permutations or bootstraps, then with ``--permutations`` and
half as many bootstraps — extrapolated linearly to 1000 permutations and 500 bootstraps,
and divided by two for the estimated wall time on 2 cores.

    .venv/bin/python bench/enet.py [--strength 0.8] [--permutations 1000] [--jobs 2]
    .venv/bin/python bench/enet.py --participants 1000
    .venv/bin/python bench/enet.py --schemes 30,45,60,80 --permutations 20
"""

import argparse
import os
import sys
import time

import numpy as np

from kp_science.prediction import (
    DEFAULT_VARIANTS,
    EnetSettings,
    design_matrix,
    fit_all,
    loo_select,
    loo_select_sklearn,
    paper_table,
)
from kp_science.prediction.elastic_net import standardize
from kp_science.prediction.kfold import cv_select, fold_designs, kfold_assignment
from kp_science.prediction.synthetic import synthetic_study


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=21)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument(
        "--strength", type=float, default=0.9, help="size of the planted relations (0 = null study)"
    )
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--bootstraps", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-brute-force", action="store_true")
    parser.add_argument("--schemes", help="comma-separated N: LOO vs K-fold cost at each")
    args = parser.parse_args()
    if args.schemes:
        compare_schemes([int(v) for v in args.schemes.split(",")], args)
        return 0

    change_scores, clinical = synthetic_study(
        args.participants, args.features, args.seed, strength=args.strength
    )
    settings = EnetSettings(
        n_permutations=args.permutations, n_bootstraps=args.bootstraps, n_jobs=args.jobs
    )

    # 0. compile the kernels, or load them from numba's on-disk cache
    start = time.perf_counter()
    tiny_cs, tiny_clin = synthetic_study(12, 5, 0)
    for loo_max in (100, 0):  # the LOO kernels, then the K-fold ones
        fit_all(
            tiny_cs,
            tiny_clin,
            DEFAULT_VARIANTS[:1],
            EnetSettings(
                n_alphas=5,
                n_permutations=2,
                n_bootstraps=2,
                n_jobs=1,
                loo_max_participants=loo_max,
                cv_folds=3,
            ),
        )
    print(
        f"compiled kernels ready in {time.perf_counter() - start:.1f} s (first use on a "
        "machine compiles, later runs load the on-disk cache)"
    )
    load_before = os.getloadavg()

    # 1. everything, all variants
    start = time.perf_counter()
    cpu = time.process_time()
    tables = fit_all(change_scores, clinical, DEFAULT_VARIANTS, settings)
    total = time.perf_counter() - start
    summary = tables["enet_summary"]
    kfold = args.participants > settings.loo_max_participants
    target = 600 if kfold else 60
    cols = [
        "model",
        "cv",
        "n_participants",
        "n_features",
        "l1_ratio",
        "alpha",
        "loo_mse",
        "nested_r",
        "permutation_p",
        "n_selected",
        "seconds",
    ]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    grid = len(settings.l1_ratios) * settings.n_alphas
    # a permutation's full work: every fold × grid point (n folds for LOO)
    folds = settings.cv_folds if kfold else summary["n_participants"]
    work = summary["permutation_fits"] / (args.permutations * folds * grid)
    print(
        "permutation fits solved (pruning): "
        + ", ".join(f"{m} {w:.0%}" for m, w in zip(summary["model"], work, strict=True))
    )
    print()
    print(
        paper_table(tables)[["finding", "published", "estimate", "note"]].to_string(
            index=False, float_format=lambda v: f"{v:.3g}"
        )
    )
    print()
    load = ", ".join(f"{a:.2f}→{b:.2f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    scheme = f"nested {settings.cv_folds}-fold CV" if kfold else "nested LOO"
    print(
        f"all four variants at N = {args.participants}: {scheme} + {args.permutations} "
        f"permutations + {args.bootstraps} bootstraps, {args.jobs} worker thread(s): "
        f"{total:.1f} s wall (target ≤ {target} s: {'MET' if total <= target else 'MISSED'}; "
        f"this process's CPU {time.process_time() - cpu:.1f} s; load average 1/5/15 min "
        f"{load} on {os.cpu_count()} CPUs)"
    )
    ok = total <= target

    if kfold and not args.skip_brute_force:
        ok = kfold_against_sklearn(change_scores, clinical, settings) and ok
    # 2. LOO selection vs brute force, one variant, no permutations
    if not kfold and not args.skip_brute_force:
        X_df, y_s, _ = design_matrix(change_scores, clinical, DEFAULT_VARIANTS[0])
        X, y = X_df.to_numpy(float), y_s.to_numpy(float)
        start = time.perf_counter()
        fast = loo_select(X, y, return_coefs=True)
        t_fast = time.perf_counter() - start
        start = time.perf_counter()
        # tol 1e-12: the remaining differences are scikit-learn's convergence tolerance
        # (they shrink 100× from tol 1e-10 to 1e-12; the batched solver is exact)
        ref, _ = loo_select_sklearn(X, y, tol=1e-12, return_coefs=True)
        t_ref = time.perf_counter() - start
        coef_diff = float(np.abs(fast.coefs - ref.coefs).max())
        mse_diff = float(np.abs(fast.loo_mse - ref.loo_mse).max() / ref.loo_mse.min())
        same = fast.best == ref.best and coef_diff <= 1e-6
        print(
            f"LOO selection, main variant (21 folds × 10 l1_ratios × 50 alphas): "
            f"batched {t_fast:.2f} s, brute-force sklearn loop (tol 1e-12) {t_ref:.1f} s, "
            f"ratio {t_ref / t_fast:.0f}× (target ≥ 20×)"
        )
        print(
            f"identical: selected grid point {fast.best} vs {ref.best}; max |Δcoef| over "
            f"every fold and grid point {coef_diff:.1e} (≤ 1e-6: {coef_diff <= 1e-6}); max "
            f"relative ΔLOO-MSE {mse_diff:.1e} -> {'IDENTICAL' if same else 'DIFFERENT'}"
        )
        ok = ok and same and t_ref / t_fast >= 20
    return 0 if ok else 1


def compare_schemes(sizes: list[int], args: argparse.Namespace) -> None:
    """Print the estimated full-settings cost of the analysis at each N by LOO and by
    K-fold (see the module docstring)."""
    print(
        f"{'N':>5} {'LOO: CPU s, 1000 perm':>22} {'est. wall 2 cores':>18} "
        f"{'10-fold: CPU s':>15} {'est. wall 2 cores':>18}"
    )
    warm_cs, warm_clin = synthetic_study(min(sizes), args.features, args.seed)
    for loo_max in (min(sizes), 0):  # load every kernel specialisation before timing
        warm = EnetSettings(
            n_permutations=2, n_bootstraps=2, n_jobs=1, loo_max_participants=loo_max
        )
        fit_all(warm_cs, warm_clin, DEFAULT_VARIANTS, warm)
    for n in sizes:
        cs, clin = synthetic_study(n, args.features, args.seed, strength=args.strength)
        row = []
        for loo_max in (n, 0):  # LOO, then K-fold
            cpu = []
            for perms in (0, args.permutations):
                settings = EnetSettings(
                    n_permutations=perms,
                    n_bootstraps=perms // 2,
                    n_jobs=1,
                    loo_max_participants=loo_max,
                )
                start = time.process_time()
                fit_all(cs, clin, DEFAULT_VARIANTS, settings)
                cpu.append(time.process_time() - start)
            full = cpu[0] + (cpu[1] - cpu[0]) * 1000 / args.permutations
            row += [full, full / 2]
        print(f"{n:>5} {row[0]:>22.0f} {row[1]:>18.0f} {row[2]:>15.1f} {row[3]:>18.1f}", flush=True)
    print(f"(load average 1/5/15 min {os.getloadavg()} on {os.cpu_count()} CPUs)")


def sklearn_kfold_select(
    X: np.ndarray, y: np.ndarray, folds: np.ndarray, alphas: np.ndarray, settings: EnetSettings
) -> tuple[np.ndarray, tuple[int, int]]:
    """The CV errors (R, T) and selected grid point of one K-fold selection by
    ``sklearn.linear_model.enet_path`` (Gram precomputed, ElasticNetCV's default tol 1e-4),
    on the same folds, grid and fold-internal z-scoring as :func:`cv_select`."""
    from sklearn.linear_model import enet_path

    from kp_science.prediction.elastic_net import select_best

    rho = np.asarray(settings.l1_ratios)
    sq = np.zeros(alphas.shape)
    for f in range(int(folds.max()) + 1):
        train, test = folds != f, folds == f
        z, zt, _, _ = standardize(X[train], X[test])
        assert zt is not None
        yc = y[train] - y[train].mean()
        gram, xy = z.T @ z, z.T @ yc
        for r, l1 in enumerate(rho):
            _, coefs, _ = enet_path(
                z,
                yc,
                l1_ratio=l1,
                alphas=alphas[r],
                precompute=gram,  # pyright: ignore[reportArgumentType]  (an array is allowed)
                Xy=xy,
                tol=1e-4,
            )
            pred = y[train].mean() + zt @ coefs  # (n_test, T)
            sq[r] += ((y[test, None] - pred) ** 2).sum(axis=0)
    mse = sq / len(y)
    return mse, select_best(mse, alphas, rho)


def kfold_against_sklearn(change_scores, clinical, settings: EnetSettings) -> bool:
    """Time one K-fold selection of the main variant, ours against scikit-learn's; print
    both, their ratio and whether the selected grid point is the same."""
    X_df, y_s, _ = design_matrix(change_scores, clinical, DEFAULT_VARIANTS[0])
    X, y = X_df.to_numpy(float), y_s.to_numpy(float)
    folds = kfold_assignment(len(y), settings.cv_folds, settings.seed)
    start = time.perf_counter()
    ours = cv_select(X, y, folds, designs=fold_designs(X, folds))
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    mse, best = sklearn_kfold_select(X, y, folds, ours.alphas, settings)
    t_ref = time.perf_counter() - start
    diff = float(np.abs(mse - ours.loo_mse).max() / mse.min())
    same = best == ours.best
    print(
        f"one {settings.cv_folds}-fold selection, main variant (N = {len(y)}, "
        f"{settings.cv_folds} folds × {len(settings.l1_ratios)} l1_ratios × "
        f"{settings.n_alphas} alphas): ours {t_ours:.2f} s (exact), scikit-learn enet_path "
        f"(ElasticNetCV's per-fold routine, tol 1e-4) {t_ref:.2f} s, ratio "
        f"{t_ref / t_ours:.1f}×"
    )
    print(
        f"selected grid point {ours.best} vs {best} -> {'IDENTICAL' if same else 'DIFFERENT'}; "
        f"max relative ΔCV-MSE {diff:.1e} (scikit-learn's tolerance)"
    )
    return same


if __name__ == "__main__":
    sys.exit(main())
