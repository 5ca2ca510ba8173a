"""Rows of the first-level DCM tables (``dcm_fits``, ``dcm_parameters``) from one fit.

Shared by the ``dcm_first_level`` asset and the region-level path of
:mod:`kp_science.finding_rates`, so both write the tables the group analysis reads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kp_science.dcm.invert import DCMResult, parameter_table
from kp_science.dcm.model import DCMSpec, priors
from kp_science.dcm.run_data import DCMRunData


def fit_row(
    scan: pd.Series, model: str, data: DCMRunData, result: DCMResult, names: list[str]
) -> dict:
    """One ``dcm_fits`` row (without participant_id) of a fit of one run; ``scan`` needs
    session, task and run, ``names`` are the spec's parameter names."""
    free = np.flatnonzero(result.free)
    return {
        "session": scan["session"],
        "task": scan["task"],
        "run": int(scan["run"]),
        "model": model,
        "free_energy": result.F,
        "explained_variance": result.explained_variance_total,
        "n_iter": result.n_iter,
        "converged": bool(result.converged),
        "seconds": result.seconds,
        "message": result.message,
        "n_scans": len(data.y),
        "n_scrubbed": int(data.scrubbed.sum()),
        "n_confounds": data.X0.shape[1],
        "scale": result.scale,
        "free_parameters": [names[i] for i in free],
        "covariance": result.Cp[np.ix_(free, free)].tolist(),
    }


def parameter_rows(result: DCMResult, spec: DCMSpec) -> pd.DataFrame:
    """``dcm_parameters`` rows (without the keys) of one fit: every free parameter's
    posterior mean, variance and Pp with its prior mean and variance."""
    table = parameter_table(result, spec)
    pE, pC, _, _ = priors(spec)
    table["prior_mean"], table["prior_variance"] = pE[spec.free], np.diag(pC)[spec.free]
    return table.drop(columns="free")
