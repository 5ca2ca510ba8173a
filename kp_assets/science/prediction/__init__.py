"""Elastic-net prediction of clinical improvement from imaging change scores (DESIGN §5).

No Dagster here. The pieces, in the order an analysis uses them:

* :mod:`.variants` — :class:`ModelVariant`, :data:`DEFAULT_VARIANTS` (main, interaction,
  covariate, ketamine_only) and :func:`design_matrix` (change scores + clinical → X, y,
  with exclusions and constant terms reported).
* :mod:`.elastic_net` — :class:`EnetSettings`, fold-internal z-scoring, the glmnet-style
  grid, :func:`loo_select` (LOO error of every grid point, minimum selected),
  :func:`refit_selected` (standardized β), :func:`loo_select_sklearn` (brute-force
  reference). Its docstring explains which β convention the paper used.
* :mod:`.evaluation` — :func:`nested_loo`, :func:`permutation_test`,
  :func:`bootstrap_selection`.
* :mod:`.fit` — :func:`fit_variant` / :func:`fit_all`: everything above for one or all
  variants, as the ``enet_*`` tables of the asset contract.
* :mod:`.paper_table` — :func:`paper_table`: the paper's headline findings beside ours.
* :mod:`.plots` — PNG figures (observed vs predicted, coefficients, LOO curve).
* :mod:`.solver` — the batched exact elastic-net path solver everything runs on.

Typical use::

    tables = fit_all(change_scores, clinical, DEFAULT_VARIANTS, EnetSettings())
    headline = paper_table(tables)
"""

from kp_assets.science.prediction.elastic_net import (
    DEFAULT_L1_RATIOS,
    EnetSettings,
    LooSelection,
    Refit,
    alpha_grid,
    loo_select,
    loo_select_sklearn,
    refit,
    refit_selected,
    standardize,
)
from kp_assets.science.prediction.evaluation import (
    BootstrapResult,
    NestedResult,
    PermutationResult,
    bootstrap_selection,
    nested_loo,
    permutation_test,
)
from kp_assets.science.prediction.fit import TABLES, fit_all, fit_variant
from kp_assets.science.prediction.paper_table import FINDINGS, Finding, paper_table
from kp_assets.science.prediction.plots import (
    plot_coefficients,
    plot_cv_curve,
    plot_observed_vs_predicted,
)
from kp_assets.science.prediction.solver import PathStats, enet_paths
from kp_assets.science.prediction.variants import (
    ARM_CODES,
    DEFAULT_VARIANTS,
    DesignReport,
    ModelVariant,
    design_matrix,
    interaction_term,
)

__all__ = [
    "ARM_CODES",
    "DEFAULT_L1_RATIOS",
    "DEFAULT_VARIANTS",
    "FINDINGS",
    "TABLES",
    "BootstrapResult",
    "DesignReport",
    "EnetSettings",
    "Finding",
    "LooSelection",
    "ModelVariant",
    "NestedResult",
    "PathStats",
    "PermutationResult",
    "Refit",
    "alpha_grid",
    "bootstrap_selection",
    "design_matrix",
    "enet_paths",
    "fit_all",
    "fit_variant",
    "interaction_term",
    "loo_select",
    "loo_select_sklearn",
    "nested_loo",
    "paper_table",
    "permutation_test",
    "plot_coefficients",
    "plot_cv_curve",
    "plot_observed_vs_predicted",
    "refit",
    "refit_selected",
    "standardize",
]
