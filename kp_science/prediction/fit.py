"""One call per model variant: design matrix → cross-validated elastic net → honest
evaluation → tables.

The cross-validation scheme depends on the variant's participant count n: exact
leave-one-out (selection, nested LOO, permutation test) when n ≤
``EnetSettings.loo_max_participants``, K-fold (K = ``EnetSettings.cv_folds``; nested
K-fold, the same folds for every permutation) above it — see :mod:`.kfold`. The ``cv``
column of the summary, predictions and CV-curve tables says which ("loo" or e.g.
"10-fold"); the ``loo_*`` columns then hold that scheme's values.

:func:`fit_variant` returns the four tables of the asset contract (docs/architecture.md §4) for one
variant, plus the exclusions; :func:`fit_all` concatenates them over variants. Column
meanings and units:

``enet_summary`` (one row per model)
    model, status ("ok" or why the model could not be fitted), outcome, n_participants,
    n_excluded, n_features (terms entering the model), n_selected (nonzero terms), cv
    (the scheme: "loo" or "<K>-fold"), l1_ratio, alpha (scikit-learn scaling), loo_mse
    (CV error, outcome units²), loo_rmse, loo_r (observed vs CV-predicted at the selected
    point — optimistic, the minimum of a grid search), nested_r, nested_rmse (honest, by
    nested LOO or nested K-fold), permutation_p, n_permutations,
    permutation_fits (elastic-net fits the pruned permutation test solved; without pruning
    it would be n_permutations × folds (n_participants for LOO) × grid size), n_bootstraps,
    intercept (mean outcome), sd_outcome, dropped_constant (";"-joined terms), seconds
    (wall time of the whole fit and evaluation).
``enet_coefficients`` (model × term)
    model, term, beta_std (outcome units per SD of the term), beta_fully_std (per SD of the
    outcome too), selected (beta ≠ 0), selection_frequency (bootstrap, in [0, 1]).
``enet_predictions`` (model × participant)
    model, participant_id, cv, observed, predicted (held out, at the selected grid
    point), nested_predicted (nested CV).
``enet_cv_curve`` (model × grid point)
    model, cv, l1_ratio, alpha, loo_mse (CV error), selected.
``enet_exclusions`` (model × excluded participant)
    model, participant_id, reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from kp_science.prediction.elastic_net import (
    EnetSettings,
    LooSelection,
    Refit,
    loo_select,
    refit_selected,
)
from kp_science.prediction.evaluation import (
    BootstrapResult,
    NestedResult,
    PermutationResult,
    bootstrap_selection,
    nested_loo,
    pearson_r,
    permutation_test,
)
from kp_science.prediction.kfold import (
    bootstrap_selection_gram,
    cv_permutation_test,
    cv_select,
    fold_designs,
    kfold_assignment,
    nested_cv,
    refit_gram,
)
from kp_science.prediction.parallel import single_blas_thread
from kp_science.prediction.variants import DEFAULT_VARIANTS, ModelVariant, design_matrix

TABLES = (
    "enet_summary",
    "enet_coefficients",
    "enet_predictions",
    "enet_cv_curve",
    "enet_exclusions",
)

SUMMARY_COLUMNS = [
    "model",
    "status",
    "outcome",
    "n_participants",
    "n_excluded",
    "n_features",
    "n_selected",
    "cv",
    "l1_ratio",
    "alpha",
    "loo_mse",
    "loo_rmse",
    "loo_r",
    "nested_r",
    "nested_rmse",
    "permutation_p",
    "n_permutations",
    "permutation_fits",
    "n_bootstraps",
    "intercept",
    "sd_outcome",
    "dropped_constant",
    "seconds",
]
COLUMNS = {
    "enet_summary": SUMMARY_COLUMNS,
    "enet_coefficients": [
        "model",
        "term",
        "beta_std",
        "beta_fully_std",
        "selected",
        "selection_frequency",
    ],
    "enet_predictions": [
        "model",
        "participant_id",
        "cv",
        "observed",
        "predicted",
        "nested_predicted",
    ],
    "enet_cv_curve": ["model", "cv", "l1_ratio", "alpha", "loo_mse", "selected"],
    "enet_exclusions": ["model", "participant_id", "reason"],
}


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS[name]})


@single_blas_thread
def fit_variant(
    change_scores: pd.DataFrame,
    clinical: pd.DataFrame,
    variant: ModelVariant,
    settings: EnetSettings | None = None,
    left_out: pd.DataFrame | None = None,
    arm_codes: Mapping[str, float] | None = None,
) -> dict[str, pd.DataFrame]:
    """Fit one variant and evaluate it; returns ``{table name: DataFrame}`` (see module doc).

    ``left_out`` (participant_id, reason): participants the caller removed from
    ``change_scores`` beforehand (e.g. not current); they are listed among the exclusions.
    ``arm_codes``: the study's arm coding (see :func:`.variants.design_matrix`).
    Raises ValueError when the design cannot be built (e.g. fewer than
    ``settings.min_participants`` complete participants; the message states the count).
    """
    settings = settings or EnetSettings()
    start = time.perf_counter()
    X_df, y_s, report = design_matrix(
        change_scores, clinical, variant, settings.min_participants, arm_codes
    )
    excluded = report.excluded
    if left_out is not None and len(left_out):  # their reason, not "no change scores"
        excluded = pd.concat(
            [
                left_out[["participant_id", "reason"]],
                excluded[~excluded["participant_id"].isin(left_out["participant_id"])],
            ],
            ignore_index=True,
        )
    X, y = X_df.to_numpy(dtype=float), y_s.to_numpy(dtype=float)
    if len(y) <= settings.loo_max_participants:
        sel, model, nested, perm, boot = _loo_evaluation(X, y, settings)
    else:
        sel, model, nested, perm, boot = _kfold_evaluation(X, y, settings)

    name = variant.name
    terms = list(X_df.columns)
    loo_pred = sel.predictions
    summary = pd.DataFrame(
        [
            {
                "model": name,
                "status": "ok",
                "outcome": variant.outcome,
                "n_participants": len(y),
                "n_excluded": len(excluded),
                "n_features": len(terms),
                "n_selected": int(np.count_nonzero(model.beta_std)),
                "cv": sel.cv,
                "l1_ratio": sel.l1_ratio,
                "alpha": sel.alpha,
                "loo_mse": sel.min_mse,
                "loo_rmse": float(np.sqrt(sel.min_mse)),
                "loo_r": pearson_r(y, loo_pred),
                "nested_r": nested.r if nested else np.nan,
                "nested_rmse": nested.rmse if nested else np.nan,
                "permutation_p": perm.p_value if perm else np.nan,
                "n_permutations": settings.n_permutations if perm else 0,
                "permutation_fits": perm.stats.instances if perm else 0,
                "n_bootstraps": settings.n_bootstraps if boot else 0,
                "intercept": model.intercept,
                "sd_outcome": model.sd_outcome,
                "dropped_constant": ";".join(report.dropped_constant),
                "seconds": time.perf_counter() - start,
            }
        ],
        columns=SUMMARY_COLUMNS,
    )
    coefficients = pd.DataFrame(
        {
            "model": name,
            "term": terms,
            "beta_std": model.beta_std,
            "beta_fully_std": model.beta_fully_std,
            "selected": model.beta_std != 0,
            "selection_frequency": boot.frequency if boot else np.nan,
        }
    )
    predictions = pd.DataFrame(
        {
            "model": name,
            "participant_id": X_df.index.astype(str),
            "cv": sel.cv,
            "observed": y,
            "predicted": loo_pred,
            "nested_predicted": nested.predicted if nested else np.nan,
        }
    )
    R, T = sel.alphas.shape
    selected = np.zeros((R, T), dtype=bool)
    selected[sel.best] = True
    cv_curve = pd.DataFrame(
        {
            "model": name,
            "cv": sel.cv,
            "l1_ratio": np.repeat(sel.l1_ratios, T),
            "alpha": sel.alphas.ravel(),
            "loo_mse": sel.loo_mse.ravel(),
            "selected": selected.ravel(),
        }
    )
    exclusions = excluded.assign(model=name)[COLUMNS["enet_exclusions"]]
    return {
        "enet_summary": summary,
        "enet_coefficients": coefficients,
        "enet_predictions": predictions,
        "enet_cv_curve": cv_curve,
        "enet_exclusions": exclusions,
    }


Evaluation = tuple[
    LooSelection, Refit, NestedResult | None, PermutationResult | None, BootstrapResult | None
]


def _loo_evaluation(X: np.ndarray, y: np.ndarray, settings: EnetSettings) -> Evaluation:
    """Selection, refit, nested LOO, permutation test and bootstrap by exact leave-one-out
    (X (n, p), y (n,)); each step skipped (None) as ``settings`` say."""
    grid: dict[str, Any] = dict(
        l1_ratios=settings.l1_ratios, n_alphas=settings.n_alphas, eps=settings.eps
    )
    sel = loo_select(X, y, **grid)
    model = refit_selected(X, y, sel)
    nested = nested_loo(X, y, **grid, n_jobs=settings.n_jobs) if settings.nested else None
    perm = (
        permutation_test(
            X,
            y,
            settings.n_permutations,
            settings.seed,
            observed=sel,
            n_jobs=settings.n_jobs,
            **grid,
        )
        if settings.n_permutations > 0
        else None
    )
    boot = (
        bootstrap_selection(
            X,
            y,
            settings.n_bootstraps,
            settings.seed,
            l1_ratio=sel.l1_ratio,
            alpha=sel.alpha,
            n_alphas=settings.n_alphas,
            eps=settings.eps,
        )
        if settings.n_bootstraps > 0
        else None
    )
    return sel, model, nested, perm, boot


def _kfold_evaluation(X: np.ndarray, y: np.ndarray, settings: EnetSettings) -> Evaluation:
    """The same steps by K-fold cross-validation (:mod:`.kfold`): folds from
    ``settings.seed``, nested K-fold, the permutation test on the same folds, bootstrap
    and refit from Gram matrices."""
    grid: dict[str, Any] = dict(
        l1_ratios=settings.l1_ratios, n_alphas=settings.n_alphas, eps=settings.eps
    )
    folds = kfold_assignment(len(y), settings.cv_folds, settings.seed)
    designs = fold_designs(X, folds)
    sel = cv_select(X, y, folds, **grid, designs=designs)
    r, t = sel.best
    model = refit_gram(X, y, sel.l1_ratio, sel.alphas[r, : t + 1])
    jobs = settings.n_jobs
    nested = nested_cv(X, y, folds, settings.seed, **grid, n_jobs=jobs) if settings.nested else None
    perm = (
        cv_permutation_test(
            X,
            y,
            folds,
            settings.n_permutations,
            settings.seed,
            observed=sel,
            designs=designs,
            n_jobs=jobs,
            **grid,
        )
        if settings.n_permutations > 0
        else None
    )
    boot = (
        bootstrap_selection_gram(
            X,
            y,
            settings.n_bootstraps,
            settings.seed,
            l1_ratio=sel.l1_ratio,
            alpha=sel.alpha,
            n_alphas=settings.n_alphas,
            eps=settings.eps,
            n_jobs=jobs,
        )
        if settings.n_bootstraps > 0
        else None
    )
    return sel, model, nested, perm, boot


def fit_all(
    change_scores: pd.DataFrame,
    clinical: pd.DataFrame,
    variants: Iterable[ModelVariant] = DEFAULT_VARIANTS,
    settings: EnetSettings | None = None,
    left_out: pd.DataFrame | None = None,
    arm_codes: Mapping[str, float] | None = None,
) -> dict[str, pd.DataFrame]:
    """:func:`fit_variant` for every variant, tables concatenated (``model`` column);
    ``left_out`` and ``arm_codes`` as for :func:`fit_variant`.

    A variant whose design cannot be built (too few participants, no matching feature …)
    does not stop the others: it gets a summary row with ``status`` = the reason and no
    other rows.
    """
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for variant in variants:
        try:
            tables = fit_variant(change_scores, clinical, variant, settings, left_out, arm_codes)
        except ValueError as err:
            row: dict[str, object] = {c: np.nan for c in SUMMARY_COLUMNS}
            row.update(model=variant.name, status=f"not fitted: {err}", outcome=variant.outcome)
            tables = {"enet_summary": pd.DataFrame([row], columns=SUMMARY_COLUMNS)}
        for name in TABLES:
            if name in tables:
                parts[name].append(tables[name])
    out = {}
    for name in TABLES:
        frames = [f for f in parts[name] if len(f)]
        out[name] = pd.concat(frames, ignore_index=True) if frames else _empty(name)
    return out
