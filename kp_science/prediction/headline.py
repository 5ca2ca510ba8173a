"""The paper's headline findings (docs/architecture.md §1) next to this analysis' estimates.

One row per finding. The first five are elastic-net coefficients, compared as
``beta_std`` (CAPS-5 points per SD of the change score — the convention the paper's
"standardized β" most likely used; see :mod:`.elastic_net`). The three DCM findings are
directions from the group DCM analysis; their estimates come from an optional ``dcm`` table
and are NaN ("DCM group analysis not available") without it.

A finding is ``supported`` when its evidence passes :class:`SupportRules`: an elastic-net
finding when its model's permutation p is below ``max_permutation_p``, its term was selected
in at least ``min_selection_frequency`` of the bootstrap refits and its β has the published
sign; a DCM finding when its effect has the published sign with Pp ≥ ``min_pp``. Direction
alone (``same_direction``) says nothing about the strength of evidence: any non-zero β counts.
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


@dataclass(frozen=True)
class SupportRules:
    """When a headline finding counts as supported by this analysis' evidence.

    min_pp: posterior probability a DCM effect must reach (Pp, after model reduction).
    max_permutation_p: the elastic-net model's permutation p must be below this.
    min_selection_frequency: share (0–1) of bootstrap refits that must select the term.
    """

    min_pp: float = 0.95
    max_permutation_p: float = 0.05
    min_selection_frequency: float = 0.5

    def __post_init__(self) -> None:
        for name in ("min_pp", "max_permutation_p", "min_selection_frequency"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")


def _enet_support(
    beta: float, direction: int, p: float, frequency: float, rules: SupportRules
) -> tuple[bool, str]:
    """Whether an elastic-net finding is supported, and its evidence in words."""
    checks = [
        (
            np.isfinite(beta) and np.sign(beta) == direction,
            "published sign" if np.isfinite(beta) else "no estimate",
        ),
        (
            bool(p < rules.max_permutation_p),
            f"permutation p = {p:.3f} (needs < {rules.max_permutation_p:g})",
        ),
        (
            bool(frequency >= rules.min_selection_frequency),
            f"selected in {frequency:.0%} of bootstraps "
            f"(needs ≥ {rules.min_selection_frequency:.0%})",
        ),
    ]
    return all(ok for ok, _ in checks), "; ".join(
        text if ok else f"✗ {text}" for ok, text in checks
    )


def _dcm_support(
    estimate: float, direction: int, pp: float, rules: SupportRules
) -> tuple[bool, str]:
    """Whether a DCM finding is supported, and its evidence in words."""
    signed = bool(np.isfinite(estimate) and np.sign(estimate) == direction)
    strong = bool(pp >= rules.min_pp)
    sign_text = "published sign" if np.isfinite(estimate) else "no estimate"
    pp_text = f"Pp = {pp:.3f} (needs ≥ {rules.min_pp:g})"
    return signed and strong, "; ".join(
        text if ok else f"✗ {text}" for ok, text in ((signed, sign_text), (strong, pp_text))
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
    "permutation_p",
    "pp",
    "same_direction",
    "supported",
    "evidence",
    "note",
]


def paper_table(
    results: dict[str, pd.DataFrame],
    dcm: pd.DataFrame | None = None,
    rules: SupportRules = SupportRules(),
) -> pd.DataFrame:
    """One row per headline finding: published value and this analysis' estimate.

    ``results``: the tables of :func:`~kp_science.prediction.fit.fit_all` (at least
    ``enet_summary`` and ``enet_coefficients``). ``dcm``: optional group-DCM estimates,
    a table with columns ``finding`` (a key of :data:`FINDINGS`), ``estimate`` and
    optionally ``pp`` (posterior probability that the effect is present) and ``note``; the
    estimate's sign is compared with the published direction (a DCM effect that model
    reduction switched off comes with a NaN estimate and says so in its note).

    An estimate is NaN, with the reason in ``note``, when the model was not fitted, the
    term is not in the model (feature absent or constant), or the term was not selected
    ("not selected (β = 0)"); ``same_direction`` is then NaN, never False. ``supported``
    applies ``rules`` (module docstring) and ``evidence`` states each rule's figure, a failed
    one marked ✗; ``permutation_p`` is the elastic-net model's.
    """
    summary = results.get("enet_summary", pd.DataFrame(columns=["model", "status"]))
    coefs = results.get("enet_coefficients", pd.DataFrame(columns=["model", "term"]))
    status = dict(zip(summary["model"], summary["status"], strict=True))
    permutation = (
        dict(zip(summary["model"], summary["permutation_p"], strict=True))
        if "permutation_p" in summary
        else {}
    )
    dcm_rows = {}
    if dcm is not None:
        dcm_rows = {row["finding"]: row for _, row in dcm.iterrows()}
    rows = []
    for f in FINDINGS:
        estimate = fully = freq = pp = perm_p = np.nan
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
                perm_p = float(permutation.get(f.model, np.nan))
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
        if f.statistic == "direction":
            supported, evidence = _dcm_support(estimate, f.direction, pp, rules)
        else:
            supported, evidence = _enet_support(estimate, f.direction, perm_p, freq, rules)
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
                "permutation_p": perm_p,
                "pp": pp,
                "same_direction": same,
                "supported": supported,
                "evidence": evidence,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
