"""The paper's headline findings (docs/architecture.md §1) next to this analysis' estimates.

One row per finding. The first five are elastic-net coefficients, compared as
``beta_std`` (CAPS-5 points per SD of the change score — the convention the paper's
"standardized β" most likely used; see :mod:`.elastic_net`). The three DCM findings are
directions from the group DCM analysis; their estimates come from an optional ``dcm`` table
and are NaN ("DCM group analysis not available") without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kp_science.prediction.variants import interaction_term

VMPFC_AMYGDALA_FACES = "faces.gppi.vmpfc->amygdala.emotional"
DACC_REGULATION = "conflict.activation.dacc.regulation"
VMPFC_INSULA_REST = "rest.fc.vmpfc~insula_ant"


@dataclass(frozen=True)
class Finding:
    """A headline finding: ``key``; ``description``; ``statistic`` ("standardized β" or
    "direction"); the ``model`` and ``term`` that express it; ``published`` value (NaN for
    directions) and ``direction`` (+1 / −1: sign of the published association)."""

    key: str
    description: str
    statistic: str
    model: str
    term: str
    published: float
    direction: int


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "vmpfc_amygdala_faces",
        "improvement ~ increased vmPFC–amygdala connectivity during face viewing",
        "standardized β",
        "main",
        VMPFC_AMYGDALA_FACES,
        2.90,
        +1,
    ),
    Finding(
        "drug_interaction",
        "that effect is stronger under ketamine than midazolam",
        "standardized β",
        "interaction",
        interaction_term(VMPFC_AMYGDALA_FACES),
        0.86,
        +1,
    ),
    Finding(
        "madrs_covariate",
        "it survives adding concomitant change in depression (MADRS)",
        "standardized β",
        "covariate",
        VMPFC_AMYGDALA_FACES,
        0.69,
        +1,
    ),
    Finding(
        "dacc_conflict_ketamine",
        "improvement after ketamine ~ decreased dACC activity during conflict regulation",
        "standardized β",
        "ketamine_only",
        DACC_REGULATION,
        -2.82,
        -1,
    ),
    Finding(
        "insula_rest_ketamine",
        "improvement after ketamine ~ increased resting vmPFC–anterior-insula connectivity",
        "standardized β",
        "ketamine_only",
        VMPFC_INSULA_REST,
        0.60,
        +1,
    ),
    Finding(
        "dcm_amygdala_to_vmpfc",
        "DCM: improvement (either drug) ~ decreased emotional modulation of amygdala→vmPFC",
        "direction",
        "dcm_group",
        "dcm.B[emotional][amygdala->vmpfc] change",
        np.nan,
        -1,
    ),
    Finding(
        "dcm_vmpfc_to_amygdala_ketamine",
        "DCM: increased top-down inhibition vmPFC→amygdala in ketamine improvers",
        "direction",
        "dcm_group",
        "dcm.A[vmpfc->amygdala] change",
        np.nan,
        -1,
    ),
    Finding(
        "dcm_baseline_inhibition",
        "DCM: low baseline prefrontal inhibition of amygdala predicts improvement under ketamine",
        "direction",
        "dcm_group",
        "dcm.A[vmpfc->amygdala] pre",
        np.nan,
        +1,
    ),
)

COLUMNS = [
    "finding",
    "description",
    "statistic",
    "model",
    "term",
    "published",
    "published_direction",
    "estimate",
    "beta_fully_std",
    "selection_frequency",
    "pp",
    "same_direction",
    "note",
]


def paper_table(
    results: dict[str, pd.DataFrame],
    dcm: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per headline finding: published value and this analysis' estimate.

    ``results``: the tables of :func:`~kp_science.prediction.fit.fit_all` (at least
    ``enet_summary`` and ``enet_coefficients``). ``dcm``: optional group-DCM estimates,
    a table with columns ``finding`` (a key of :data:`FINDINGS`), ``estimate`` and
    optionally ``pp`` (posterior probability that the effect is present) and ``note``; the
    estimate's sign is compared with the published direction.

    An estimate is NaN, with the reason in ``note``, when the model was not fitted, the
    term is not in the model (feature absent or constant), or the term was not selected
    ("not selected (β = 0)").
    """
    summary = results.get("enet_summary", pd.DataFrame(columns=["model", "status"]))
    coefs = results.get("enet_coefficients", pd.DataFrame(columns=["model", "term"]))
    status = dict(zip(summary["model"], summary["status"], strict=True))
    dcm_rows = {}
    if dcm is not None:
        dcm_rows = {row["finding"]: row for _, row in dcm.iterrows()}
    rows = []
    for f in FINDINGS:
        estimate = fully = freq = pp = np.nan
        if f.statistic == "direction":
            row = dcm_rows.get(f.key)
            if row is None:
                note = "DCM group analysis not available"
            else:
                estimate = float(row["estimate"])
                pp = float(row.get("pp", np.nan))
                note = str(row.get("note", "") or "")
        elif f.model not in status:
            note = f"model {f.model!r} not in results"
        elif status[f.model] != "ok":
            note = str(status[f.model])
        else:
            hit = coefs[(coefs["model"] == f.model) & (coefs["term"] == f.term)]
            if hit.empty:
                note = "term not in model (feature absent or constant)"
            else:
                beta = float(hit["beta_std"].iloc[0])
                freq = (
                    float(hit["selection_frequency"].iloc[0])
                    if ("selection_frequency" in hit)
                    else np.nan
                )
                if beta == 0:
                    note = "not selected (β = 0)"
                else:
                    estimate = beta
                    fully = float(hit["beta_fully_std"].iloc[0])
                    note = ""
        same = bool(np.sign(estimate) == f.direction) if np.isfinite(estimate) else np.nan
        if same is False and not note:
            note = "opposite direction to the published finding"
        rows.append(
            {
                "finding": f.key,
                "description": f.description,
                "statistic": f.statistic,
                "model": f.model,
                "term": f.term,
                "published": f.published,
                "published_direction": "+" if f.direction > 0 else "−",
                "estimate": estimate,
                "beta_fully_std": fully,
                "selection_frequency": freq,
                "pp": pp,
                "same_direction": same,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
