"""The paper's three DCM findings (docs/architecture.md §1) read off the group effects.

Each finding is one second-level effect of :func:`~kp_science.dcm.group.group_dcm`:
an analysis, a covariate and a connection, with the published direction of the association.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class DCMFinding:
    """``key`` (as in the paper table), the group ``analysis``, ``covariate`` and
    ``parameter`` that express it, and the published ``direction`` (+1 / −1)."""

    key: str
    analysis: str
    covariate: str
    parameter: str
    direction: int


DCM_FINDINGS: tuple[DCMFinding, ...] = (
    # improvement (either drug) ~ decreased emotional modulation of amygdala→vmPFC:
    # the change's slope on improvement, averaged over arms, is negative
    DCMFinding(
        "dcm_amygdala_to_vmpfc",
        "longitudinal",
        "caps5_improvement",
        "B[emotional][amygdala->vmpfc]",
        -1,
    ),
    # increased vmPFC→amygdala inhibition (more negative) in those who improved on
    # ketamine: the change's slope on improvement within the ketamine arm is negative (the
    # ketamine − midazolam difference of slopes, caps5_improvement:arm, is in the effects
    # table too, but two slopes over ~10 participants each rarely separate with Pp ≥ 0.9)
    DCMFinding(
        "dcm_vmpfc_to_amygdala_ketamine",
        "longitudinal",
        "caps5_improvement[ketamine]",
        "A[vmpfc->amygdala]",
        -1,
    ),
    # low baseline inhibition (a less negative pre value) predicts improvement on ketamine:
    # the pre value's slope on improvement within the ketamine arm is positive
    DCMFinding(
        "dcm_baseline_inhibition",
        "baseline",
        "caps5_improvement[ketamine]",
        "A[vmpfc->amygdala]",
        +1,
    ),
)


def switched_off(row: pd.Series) -> bool:
    """Whether model reduction removed the effect from every model it averaged over: its
    averaged mean and sd are then exactly 0 (a prior fixed at 0, not an estimate of 0)."""
    return float(row["mean"]) == 0.0 and float(row.get("sd", np.nan)) == 0.0


def dcm_findings(effects: pd.DataFrame) -> pd.DataFrame:
    """One row per finding: ``finding``, ``estimate`` (the averaged effect after model
    reduction, per CAPS-5 point), ``pp`` (posterior probability that it is present),
    ``note`` (the direction and Pp in words, or why it is missing).

    An effect that model reduction switched off (:func:`switched_off`) has no estimate: NaN,
    its Pp, and a note saying so — not an estimate of 0, whose sign would read as a
    direction against the published one."""
    rows = []
    for f in DCM_FINDINGS:
        hit = effects[
            (effects["analysis"] == f.analysis)
            & (effects["covariate"] == f.covariate)
            & (effects["parameter"] == f.parameter)
        ]
        if hit.empty:
            rows.append(
                {
                    "finding": f.key,
                    "estimate": np.nan,
                    "pp": np.nan,
                    "note": f"no {f.analysis} effect of {f.covariate} on {f.parameter}",
                }
            )
            continue
        estimate, pp = float(hit["mean"].iloc[0]), float(hit["Pp"].iloc[0])
        if switched_off(hit.iloc[0]):
            rows.append(
                {
                    "finding": f.key,
                    "estimate": np.nan,
                    "pp": pp,
                    "note": f"{f.analysis}: {f.covariate} → {f.parameter} switched off by "
                    f"Bayesian model reduction (Pp = {pp:.2f})",
                }
            )
            continue
        sign = "+" if estimate > 0 else "−" if estimate < 0 else "0"
        rows.append(
            {
                "finding": f.key,
                "estimate": estimate,
                "pp": pp,
                "note": f"{f.analysis}: {f.covariate} → {f.parameter}, {sign}, Pp = {pp:.2f}",
            }
        )
    return pd.DataFrame(rows, columns=["finding", "estimate", "pp", "note"])
