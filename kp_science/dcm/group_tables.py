"""Reading the first-level DCM posteriors of one model out of the warehouse's DCM tables,
a session's runs combined by Bayesian fixed effects.

The group analyses (:mod:`.group`) take their first-level posteriors from the tables the
``dcm_fits`` / ``dcm_parameters`` assets store:

- fits: one row per participant × session × model (× run) with ``participant_id``,
  ``session``, ``model``, ``converged``, ``free_parameters`` (names, e.g.
  ``A[vmpfc->amygdala]``, ``B[emotional][amygdala->vmpfc]``), ``covariance`` (list of lists
  over ``free_parameters``) and, if present, ``free_energy`` and ``run``;
- parameters: long table ``participant_id, session, model, parameter, mean`` (+ ``run``,
  ``prior_mean``, ``prior_variance`` when present; otherwise the priors follow from the
  names, as in :func:`kp_science.dcm.priors`).

**Several runs of a session.** The first level inverts every run on its own (the same
model, each run with its own confounds); the session's posterior is their Bayesian fixed-
effects combination (:func:`bayesian_fixed_effects`; SPM's Bayesian parameter averaging,
``spm_dcm_average``): posteriors of independent data under one shared prior N(pE, pC)
multiply, and the prior counted once per run is divided out N − 1 times,

    P = Σ_i P_i − (N − 1) P0,    μ = P⁻¹ (Σ_i P_i μ_i − (N − 1) P0 pE),

with P_i = C_i⁻¹ the run posteriors' precisions and P0 = pC⁻¹. It is done over every free
parameter (the stored posterior covariance), then the chosen parameters are kept. The
session's free energy is the sum of its runs' (independent data), and it counts as converged
only if every run did. A session with one run keeps that run's posterior exactly.

Fits with different free parameters or priors (different model structures) raise
``ValueError`` naming the participants.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kp_science.dcm.model import A_OFFDIAG_MEAN, A_VAR, B_VAR, C_VAR, HEMO_VAR


@dataclass(frozen=True, eq=False)
class FirstLevel:
    """First-level posteriors of the chosen parameters, by participant and session.

    names : the p parameter names. pE, pC : (p,), (p, p) their (shared) first-level prior.
    posteriors : (participant_id, session) → (mean (p,), covariance (p, p), F, converged).
    """

    names: tuple[str, ...]
    pE: np.ndarray
    pC: np.ndarray
    posteriors: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, float, bool]]


def default_prior(name: str) -> tuple[float, float]:
    """First-level prior (mean, variance) of a DCM parameter from its name (SPM12's)."""
    if name.startswith("A["):
        return (0.0 if _is_self_connection(name) else A_OFFDIAG_MEAN), A_VAR
    if name.startswith("B["):
        return 0.0, B_VAR
    if name.startswith("C["):
        return 0.0, C_VAR
    return 0.0, HEMO_VAR


def _names(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in np.asarray(value, dtype=object).ravel())


def _matrix(value: Any) -> np.ndarray:
    """A covariance stored as a list of rows (a Parquet list column) as a 2-D float array."""
    return np.array([np.asarray(row, dtype=float) for row in value], dtype=float)


def bayesian_fixed_effects(
    means: Sequence[np.ndarray],
    covariances: Sequence[np.ndarray],
    pE: np.ndarray,
    pC: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian fixed-effects combination (Bayesian parameter averaging) of the posteriors
    of the same p parameters from N independent runs under one shared prior.

    ``means``: N posterior means (p,); ``covariances``: N posterior covariances (p, p);
    ``pE`` (p,), ``pC`` (p, p): the prior of every run. Returns the combined (mean (p,),
    covariance (p, p)): precision Σ P_i − (N − 1) pC⁻¹ and mean as in the module docstring.
    A single run is returned as it is. Raises ValueError when a covariance or the combined
    precision is not positive definite (posteriors that did not come from that prior).
    """
    if len(means) != len(covariances) or not means:
        raise ValueError(f"{len(means)} means for {len(covariances)} covariances")
    if len(means) == 1:
        return np.asarray(means[0], float), np.asarray(covariances[0], float)
    prior_precision = np.linalg.inv(pC)
    extra = len(means) - 1  # the shared prior is in every run's posterior: keep it once
    precision = -extra * prior_precision
    weighted = -extra * prior_precision @ pE
    for mean, covariance in zip(means, covariances, strict=True):
        run_precision = np.linalg.inv(covariance)
        precision = precision + run_precision
        weighted = weighted + run_precision @ mean
    precision = (precision + precision.T) / 2
    try:
        np.linalg.cholesky(precision)
    except np.linalg.LinAlgError:
        raise ValueError(
            "the runs' combined posterior precision is not positive definite"
        ) from None
    covariance = np.linalg.inv(precision)
    return covariance @ weighted, (covariance + covariance.T) / 2


def first_level_posteriors(
    fits: pd.DataFrame,
    parameters: pd.DataFrame,
    model: str | None = None,
    names: Sequence[str] | None = None,
) -> FirstLevel:
    """Collect the first-level posteriors of one model from the ``dcm_fits`` tables.

    Parameters
    ----------
    fits, parameters : the ``dcm_fits`` and ``dcm_parameters`` tables (module docstring).
    model : model name (default: the only model in ``fits``).
    names : parameters to keep (default: every free connection between regions in A and
        every free B parameter — self-connections are left out: one run identifies them
        poorly, and their scatter would dominate the random effects of the A field).

    Returns
    -------
    :class:`FirstLevel`. Several runs of a session are combined by Bayesian fixed effects
    (module docstring); without a ``run`` column in both tables the lowest-numbered (else
    first) row of a session is used.

    Raises
    ------
    ValueError : no fits, an ambiguous or unknown model, fits whose free parameters or
        priors differ (the participants are named), requested parameters not estimated, or
        runs of a session that cannot be combined.
    """
    missing = {
        "participant_id",
        "session",
        "model",
        "converged",
        "free_parameters",
        "covariance",
    } - set(fits.columns)
    if missing:
        raise ValueError(f"dcm_fits lacks column(s): {', '.join(sorted(missing))}")
    missing = {"participant_id", "session", "model", "parameter", "mean"} - set(parameters.columns)
    if missing:
        raise ValueError(f"dcm_parameters lacks column(s): {', '.join(sorted(missing))}")
    models = sorted(fits["model"].astype(str).unique())
    if model is None:
        if len(models) != 1:
            raise ValueError(f"dcm_fits holds models {models}: choose one")
        model = models[0]
    model = str(model)
    rows = fits[fits["model"].astype(str) == model]
    if rows.empty:
        raise ValueError(f"no first-level fits of model {model!r} (have {models})")
    table = parameters[parameters["model"].astype(str) == model]
    # the runs are told apart only when both tables carry them
    keys = ["participant_id", "session"]
    if "run" in rows.columns:
        rows = rows.sort_values("run", kind="stable")
        if "run" in table.columns:
            keys.append("run")
    rows = rows.drop_duplicates(keys, keep="first")

    structures = {
        tuple(str(getattr(r, k)) for k in keys): _names(r.free_parameters)
        for r in rows.itertuples()
    }
    common, _ = Counter(structures.values()).most_common(1)[0]
    odd = sorted({key[0] for key, s in structures.items() if s != common})
    if odd:
        raise ValueError(
            f"model {model!r} has different free parameters (model structure) "
            f"for participant(s) {', '.join(odd)}; expected {list(common)}"
        )
    free = common
    if names is None:
        names = [
            n
            for n in free
            if n.startswith("B[") or (n.startswith("A[") and not _is_self_connection(n))
        ]
    names = tuple(names)
    unknown = [n for n in names if n not in free]
    if unknown or not names:
        raise ValueError(
            f"parameter(s) {unknown or names} are not free parameters of model "
            f"{model!r} ({list(free)})"
        )
    index = np.array([free.index(n) for n in names])

    if "run" in keys:
        table = table.merge(rows[keys], on=keys)
    pE, pC = _priors(table, names, model)
    means = table.pivot_table(index=keys, columns="parameter", values="mean", aggfunc="first")
    sessions: dict[tuple[str, str], list] = {}
    for r in rows.itertuples():
        sessions.setdefault((str(r.participant_id), str(r.session)), []).append(r)
    posteriors = {}
    for key, runs in sessions.items():
        # one run: the chosen parameters only (as they always were); several: all the free
        # ones, combined, then the chosen kept
        wanted = list(names) if len(runs) == 1 else list(free)
        run_means, run_covariances, F, converged = [], [], 0.0, True
        for r in runs:
            row_key = tuple(getattr(r, k) for k in keys)
            if (
                row_key not in means.index
                or not set(wanted) <= set(means.columns)
                or (means.loc[row_key, wanted].isna().to_numpy().any())
            ):
                raise ValueError(
                    f"dcm_parameters lacks the posterior means of {key[0]} session "
                    f"{key[1]}{_run_text(r, keys)} model {model!r}"
                )
            cov = _matrix(r.covariance)
            if cov.shape != (len(free), len(free)):
                raise ValueError(
                    f"covariance of {key[0]} session {key[1]}{_run_text(r, keys)} is "
                    f"{cov.shape}, expected {len(free)} × {len(free)}"
                )
            run_means.append(means.loc[row_key, wanted].to_numpy(float))
            run_covariances.append(cov if len(runs) > 1 else cov[np.ix_(index, index)])
            run_F = float(getattr(r, "free_energy", 0.0))
            F += run_F if np.isfinite(run_F) else 0.0  # unknown: the PEB's F omits it
            converged = converged and bool(r.converged)
        if len(runs) == 1:
            mean, cov = run_means[0], run_covariances[0]
        else:
            free_pE, free_pC = _priors(table, free, model)
            try:
                mean, cov = bayesian_fixed_effects(run_means, run_covariances, free_pE, free_pC)
            except ValueError as e:
                raise ValueError(
                    f"runs of {key[0]} session {key[1]} model {model!r}: {e}"
                ) from None
            mean, cov = mean[index], cov[np.ix_(index, index)]
        posteriors[key] = (mean, cov, F, converged)
    return FirstLevel(names=names, pE=pE, pC=pC, posteriors=posteriors)


def _run_text(row: Any, keys: Sequence[str]) -> str:
    """`` run <n>`` when the runs are told apart, for messages."""
    return f" run {row.run}" if "run" in keys else ""


def _is_self_connection(name: str) -> bool:
    """True for ``A[r->r]`` (a region's log self-inhibition)."""
    source, _, target = name[2:-1].partition("->")
    return source == target


def _priors(
    table: pd.DataFrame, names: tuple[str, ...], model: str
) -> tuple[np.ndarray, np.ndarray]:
    """Shared first-level prior of the chosen parameters (table columns, else by name)."""
    if {"prior_mean", "prior_variance"} <= set(table.columns):
        sub = table[table["parameter"].isin(names)]
        spread = sub.groupby("parameter")[["prior_mean", "prior_variance"]].agg(["min", "max"])
        lowest, highest = spread.xs("min", axis=1, level=1), spread.xs("max", axis=1, level=1)
        same = np.asarray(np.isclose(lowest.to_numpy(float), highest.to_numpy(float)).all(axis=1))
        differs = [n for n in names if n in spread.index and not same[spread.index.get_loc(n)]]
        if differs:
            first = sub.groupby("parameter")[["prior_mean", "prior_variance"]].first()
            expected = first.reindex(sub["parameter"]).to_numpy(float)
            agrees = np.asarray(
                np.isclose(sub[["prior_mean", "prior_variance"]].to_numpy(float), expected).all(
                    axis=1
                )
            )
            who = sorted(
                {
                    str(pid)
                    for pid, parameter, ok in zip(
                        sub["participant_id"], sub["parameter"], agrees, strict=True
                    )
                    if parameter in differs and not ok
                }
            )
            raise ValueError(
                f"model {model!r} has different priors (model structure) on "
                f"{', '.join(differs)} for participant(s) {', '.join(who)}"
            )
        first = sub.groupby("parameter").first()
        if all(n in first.index for n in names):
            return (
                first.loc[list(names), "prior_mean"].to_numpy(float),
                np.diag(first.loc[list(names), "prior_variance"].to_numpy(float)),
            )
    prior = np.array([default_prior(n) for n in names])
    return prior[:, 0], np.diag(prior[:, 1])
