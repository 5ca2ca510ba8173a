"""Elastic-net prediction of clinical improvement from imaging change scores.

The method: docs/architecture.md §5 "Prediction".

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
* :mod:`.kfold` — the same steps by K-fold cross-validation, for studies above
  ``EnetSettings.loo_max_participants``: :func:`kfold_assignment`, :func:`cv_select`,
  :func:`nested_cv`, :func:`cv_permutation_test`, :func:`bootstrap_selection_gram`,
  solved from Gram matrices by the kernels of :mod:`.gram_kernels`.
* :mod:`.fit` — :func:`fit_variant` / :func:`fit_all`: everything above for one or all
  variants, as the ``enet_*`` tables of the asset contract.
* :mod:`.headline` — :func:`paper_table`: the paper's headline findings beside ours.
* :mod:`.plots` — PNG figures (observed vs predicted, coefficients, LOO curve).
* :mod:`.solver` — the exact elastic-net path solver everything runs on, with its compiled
  kernels in :mod:`.kernels` (numba; :func:`.kernels.permutation_block` is the pruned
  permutation test).

Typical use::

    tables = fit_all(change_scores, clinical, DEFAULT_VARIANTS, EnetSettings())
    headline = paper_table(tables)
"""

import importlib

# Public name → submodule. Imported on first use, so that code using only the solver does
# not pay for pandas and matplotlib.
_EXPORTS = {
    "DEFAULT_L1_RATIOS": "elastic_net",
    "EnetSettings": "elastic_net",
    "LooSelection": "elastic_net",
    "Refit": "elastic_net",
    "alpha_grid": "elastic_net",
    "loo_select": "elastic_net",
    "loo_select_sklearn": "elastic_net",
    "refit": "elastic_net",
    "refit_selected": "elastic_net",
    "standardize": "elastic_net",
    "BootstrapResult": "evaluation",
    "NestedResult": "evaluation",
    "PermutationResult": "evaluation",
    "bootstrap_selection": "evaluation",
    "nested_loo": "evaluation",
    "permutation_test": "evaluation",
    "bootstrap_selection_gram": "kfold",
    "cv_permutation_test": "kfold",
    "cv_select": "kfold",
    "kfold_assignment": "kfold",
    "nested_cv": "kfold",
    "refit_gram": "kfold",
    "TABLES": "fit",
    "fit_all": "fit",
    "fit_variant": "fit",
    "FINDINGS": "headline",
    "Finding": "headline",
    "SupportRules": "headline",
    "paper_table": "headline",
    "plot_coefficients": "plots",
    "plot_cv_curve": "plots",
    "plot_observed_vs_predicted": "plots",
    "PathStats": "solver",
    "enet_paths": "solver",
    "prepare_designs": "solver",
    "DEFAULT_VARIANTS": "variants",
    "DesignReport": "variants",
    "ModelVariant": "variants",
    "design_matrix": "variants",
    "interaction_term": "variants",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
