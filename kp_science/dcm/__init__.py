"""Deterministic bilinear one-state DCM for fMRI, equivalent to SPM12's ``spm_dcm_estimate``.

Plain numpy code (no Dagster): :class:`DCMSpec` and :func:`priors` define the model
(:mod:`.model`), :func:`predict_bold` integrates it as SPM's ``spm_int`` does
(:mod:`.integrate`) and :func:`invert_dcm` fits it by variational Laplace (:mod:`.invert`).

Group level: Bayesian model reduction, search and averaging (:mod:`.reduction`), parametric
empirical Bayes (:mod:`.peb`) and the study's longitudinal and baseline designs
(:mod:`.group`, on the first-level posteriors :mod:`.group_tables` reads; synthetic tables
for tests and benchmarks in :mod:`.group_synthetic`).
"""

from kp_science.dcm.group import (
    GroupDCMConfig,
    GroupDCMResult,
    baseline_analysis,
    group_dcm,
    longitudinal_analysis,
)
from kp_science.dcm.group_synthetic import simulate_first_level
from kp_science.dcm.group_tables import first_level_posteriors
from kp_science.dcm.integrate import predict_bold, predict_bold_batch
from kp_science.dcm.invert import DCMResult, invert_dcm, invert_many, parameter_table
from kp_science.dcm.model import (
    DCMSpec,
    inputs_from_events,
    pack,
    parameter_names,
    priors,
    unpack,
)
from kp_science.dcm.peb import (
    PEBReduction,
    PEBResult,
    empirical_posteriors,
    empirical_priors,
    estimate_peb,
    reduce_peb,
)
from kp_science.dcm.reduction import (
    ModelAverage,
    ReducedPosterior,
    ReductionSearch,
    compare_models,
    free_energy_change,
    reduce_posterior,
    search_reduced_models,
)

__all__ = [
    "DCMResult",
    "DCMSpec",
    "GroupDCMConfig",
    "GroupDCMResult",
    "ModelAverage",
    "PEBReduction",
    "PEBResult",
    "ReducedPosterior",
    "ReductionSearch",
    "baseline_analysis",
    "compare_models",
    "empirical_posteriors",
    "empirical_priors",
    "estimate_peb",
    "first_level_posteriors",
    "free_energy_change",
    "group_dcm",
    "inputs_from_events",
    "invert_dcm",
    "invert_many",
    "longitudinal_analysis",
    "pack",
    "parameter_names",
    "parameter_table",
    "predict_bold",
    "predict_bold_batch",
    "priors",
    "reduce_peb",
    "reduce_posterior",
    "search_reduced_models",
    "simulate_first_level",
    "unpack",
]
