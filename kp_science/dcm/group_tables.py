"""Reading the first-level DCM posteriors of one model out of the warehouse's DCM tables.

The group analyses (:mod:`.group`) take their first-level posteriors from the tables the
``dcm_fits`` / ``dcm_parameters`` assets store:

- fits: one row per participant × session × model (× run) with ``participant_id``,
  ``session`` ('pre'/'post'), ``model``, ``converged``, ``free_parameters`` (names, e.g.
  ``A[vmpfc->amygdala]``, ``B[emotional][amygdala->vmpfc]``), ``covariance`` (list of lists
  over ``free_parameters``) and, if present, ``free_energy`` and ``run``;
- parameters: long table ``participant_id, session, model, parameter, mean`` (+ ``run``,
  ``prior_mean``, ``prior_variance`` when present; otherwise the priors follow from the
  names, as in :func:`kp_science.dcm.priors`).

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
    :class:`FirstLevel`. With several runs of a session the lowest-numbered run is used.

    Raises
    ------
    ValueError : no fits, an ambiguous or unknown model, fits whose free parameters or
        priors differ (the participants are named), or requested parameters not estimated.
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
    if "run" in rows.columns:
        rows = rows.sort_values("run", kind="stable")
    rows = rows.drop_duplicates(["participant_id", "session"], keep="first")

    structures = {
        (str(r.participant_id), str(r.session)): _names(r.free_parameters)
        for r in rows.itertuples()
    }
    common, _ = Counter(structures.values()).most_common(1)[0]
    odd = sorted({pid for (pid, _), s in structures.items() if s != common})
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

    table = parameters[parameters["model"].astype(str) == model]
    if "run" in table.columns and "run" in rows.columns:
        table = table.merge(
            rows[["participant_id", "session", "run"]], on=["participant_id", "session", "run"]
        )
    pE, pC = _priors(table, names, model)
    means = table.pivot_table(
        index=["participant_id", "session"], columns="parameter", values="mean", aggfunc="first"
    )
    posteriors = {}
    for r in rows.itertuples():
        key = (str(r.participant_id), str(r.session))
        if key not in means.index or means.loc[key, list(names)].isna().to_numpy().any():
            raise ValueError(
                f"dcm_parameters lacks the posterior means of {key[0]} session "
                f"{key[1]} model {model!r}"
            )
        cov = _matrix(r.covariance)
        if cov.shape != (len(free), len(free)):
            raise ValueError(
                f"covariance of {key[0]} session {key[1]} is {cov.shape}, "
                f"expected {len(free)} × {len(free)}"
            )
        F = float(getattr(r, "free_energy", 0.0))
        F = F if np.isfinite(F) else 0.0  # unknown: the PEB's F then omits this term
        posteriors[key] = (
            means.loc[key, list(names)].to_numpy(float),
            cov[np.ix_(index, index)],
            F,
            bool(r.converged),
        )
    return FirstLevel(names=names, pE=pE, pC=pC, posteriors=posteriors)


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
