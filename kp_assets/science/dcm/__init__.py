"""Deterministic bilinear one-state DCM for fMRI, equivalent to SPM12's ``spm_dcm_estimate``.

Plain numpy code (no Dagster): :class:`DCMSpec` and :func:`priors` define the model
(:mod:`.model`), :func:`predict_bold` integrates it as SPM's ``spm_int`` does
(:mod:`.integrate`) and :func:`invert_dcm` fits it by variational Laplace (:mod:`.invert`).
"""

from kp_assets.science.dcm.integrate import predict_bold, predict_bold_batch
from kp_assets.science.dcm.invert import DCMResult, invert_dcm, invert_many, parameter_table
from kp_assets.science.dcm.model import (
    DCMSpec,
    inputs_from_events,
    pack,
    parameter_names,
    priors,
    unpack,
)

__all__ = [
    "DCMResult",
    "DCMSpec",
    "inputs_from_events",
    "invert_dcm",
    "invert_many",
    "pack",
    "parameter_names",
    "parameter_table",
    "predict_bold",
    "predict_bold_batch",
    "priors",
    "unpack",
]
