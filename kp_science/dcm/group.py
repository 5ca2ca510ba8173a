"""Group-level DCM of the ketamine–PTSD study: the two designs, on the ``dcm_fits`` tables.

Input tables (as the ``dcm_fits`` / ``dcm_parameters`` / ``clinical`` assets store them):

- fits, parameters: the first-level tables, whose posteriors :mod:`.group_tables` reads
  (formats there);
- clinical: ``participant_id``, ``arm`` ('ketamine'/'midazolam') and ``caps5_improvement``
  (pre − post, positive = better; computed from ``caps5_pre``/``caps5_post`` if absent).

Analyses (each a PEB with Bayesian model reduction and averaging over its group effects):

- ``longitudinal``: the change post − pre of each participant, as a first-level posterior,
  enters a between-participant PEB with covariates [mean, CAPS-5 improvement, arm,
  improvement × arm]. Two ways to form the change (``GroupDCMConfig.change``):

  * ``"difference"`` (default): posterior mean post − pre, covariance C_pre + C_post, prior
    N(0, 2·pC), free energy F_pre + F_post. Exact, not an approximation: both sessions have
    the same prior N(pE, pC), so the sum and the difference of the two parameter vectors are
    independent a priori, and the posterior of the difference is its prior N(0, 2·pC) times
    a likelihood — what model reduction and PEB need.
  * ``"within_peb"``: per participant a within-participant PEB over the two sessions with
    design [mean, session] (session −½ pre, +½ post) whose session effect is the change
    ("PEB of PEBs", Zeidman et al. 2019, part 2). With only two sessions its
    between-session random effect (a priori 1/16 of the first-level prior variance: sd 0.25
    Hz for a B parameter) is not identified from the data and is added to every change's
    uncertainty, so covariate effects on B parameters are hard to detect; it is meant for
    designs with several sessions per condition.
- ``baseline``: the pre-treatment parameters with the same covariates: do baseline
  connections predict improvement, and differently by arm?

Covariates: improvement in CAPS-5 points; arm coded ketamine +½, midazolam −½; the
interaction is the product of the centred improvement and the arm code; every covariate is
then mean-centred, so the first column's effects are group means (at average improvement
and the arms' average). With this coding the arm effect is the ketamine − midazolam
difference, and the interaction the ketamine − midazolam difference in the slope on
improvement. The priors on the effects do not depend on these units (see :mod:`.peb`).

Within-arm slopes: the effects table also has, per parameter, the slope on improvement
within each arm — ``caps5_improvement[ketamine]`` = β_improvement + ½·β_interaction and
``caps5_improvement[midazolam]`` = β_improvement − ½·β_interaction — from the full PEB
posterior, with Pp the posterior probability of the model in which that slope is free
against the one in which it is zero (Bayesian model reduction with the prior conditioned on
the slope being 0; equal prior odds). They answer "does improvement under ketamine go with
this connection?" directly, which the interaction (a difference of two slopes estimated on
about ten participants each) cannot with 21 participants.

Participants whose first-level fit of a session the analysis needs did not converge, whose
fit is missing, or who lack an arm or improvement are left out and listed in
:attr:`GroupDCMResult.excluded`. Fits with different free parameters or priors (different
model structures) raise ``ValueError`` naming the participants; so do fewer participants
than design columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
import pandas as pd
from scipy.special import ndtr

from kp_science.dcm.group_tables import FirstLevel, first_level_posteriors
from kp_science.dcm.peb import (
    ComponentName,
    Components,
    PEBReduction,
    PEBResult,
    estimate_peb,
    reduce_peb,
)
from kp_science.dcm.reduction import free_energy_change
from kp_science.study.protocol import StudyProtocol, default_vocabulary

SESSION_CODE = (-0.5, 0.5)  # pre, post: the within-participant session regressor
# every PEB here runs to its exact maximum and reports the covariance of the group effects
# marginal over the random-effects precisions (kp's design, with its own hyperprior); SPM12's
# schedule, which stops early and reports covariances conditional on them, is estimate_peb's
# default, for parity with SPM
PEB_METHOD = "exact"
EFFECT_COLUMNS = [
    "analysis",
    "covariate",
    "parameter",
    "mean",
    "sd",
    "Pp",
    "peb_mean",
    "peb_sd",
    "prob_positive",
    "n_participants",
    "free_energy",
]
EXCLUDED_COLUMNS = ["analysis", "participant_id", "reason"]

# the choices of GroupDCMConfig (the DCMGroupDesign resource types its fields with them)
Analysis = Literal["longitudinal", "baseline"]
ChangeMethod = Literal["difference", "within_peb"]


@dataclass(frozen=True)
class GroupDCMConfig:
    """Choices of the group analyses (defaults: the study plan).

    model : first-level model to use (default: the only one in the table).
    parameters : first-level parameters taken to the second level (default: every free A
        connection between regions and every free B parameter, in the fits' order; see
        :func:`first_level_posteriors`).
    analyses : which analyses to run ('longitudinal', 'baseline').
    pre, post : session labels.
    change : how the longitudinal analysis forms each participant's change: 'difference' or
        'within_peb' (module docstring).
    components : random-effects precision components of every PEB: 'fields' (one for the
        A connections, one for the B modulations; default), 'single' (SPM's default) or
        'all' (one per parameter).
    hyperprior_variance : prior variance of the random-effects log-precisions (SPM's
        ``M.hC``, default there 1/16). SPM's default lets the between-participant variance
        of a parameter move only about ×1.6 from 1/16 of its first-level prior variance (sd
        0.03 Hz for an A connection); when participants differ more than that — or the
        first-level posteriors are overconfident — the PEB underestimates the random
        effects and reports group effects that are not there. 1 lets the data set it.
    max_exhaustive : model reduction scores every subset of at most this many effects.

    Raises ValueError naming the field and the allowed values for an unknown analysis,
    change method or named components.
    """

    model: str | None = None
    parameters: tuple[str, ...] | None = None
    analyses: tuple[Analysis, ...] = get_args(Analysis)
    pre: str = field(default_factory=lambda: default_vocabulary().baseline)
    post: str = field(default_factory=lambda: default_vocabulary().follow_up)
    improvement: str = field(
        default_factory=lambda: f"{default_vocabulary().primary.name}_improvement"
    )
    arm_codes: Mapping[str, float] = field(default_factory=lambda: default_vocabulary().arm_codes)
    change: ChangeMethod = "difference"
    components: Components = "fields"
    hyperprior_variance: float = 1.0
    max_exhaustive: int = 8

    @property
    def covariates(self) -> tuple[str, ...]:
        """The second-level design's columns: mean, improvement, arm, improvement × arm."""
        return ("mean", self.improvement, "arm", f"{self.improvement}:arm")

    @property
    def arm_slopes(self) -> dict[str, float]:
        """Within-arm slope name (``caps5_improvement[ketamine]``) → the arm's code, its
        weight on the interaction column."""
        return {f"{self.improvement}[{arm}]": code for arm, code in self.arm_codes.items()}

    def __post_init__(self) -> None:
        unknown = [a for a in self.analyses if a not in get_args(Analysis)]
        if unknown:
            raise ValueError(
                f"GroupDCMConfig: unknown analysis(es) {unknown}; analyses must "
                f"be among {', '.join(get_args(Analysis))}"
            )
        if self.change not in get_args(ChangeMethod):
            raise ValueError(
                f"GroupDCMConfig: unknown change method {self.change!r}; change "
                f"must be one of {', '.join(get_args(ChangeMethod))}"
            )
        if isinstance(self.components, str) and self.components not in get_args(ComponentName):
            raise ValueError(
                f"GroupDCMConfig: components must be one of "
                f"{', '.join(get_args(ComponentName))} or index groups, got "
                f"{self.components!r}"
            )


@dataclass(frozen=True, eq=False)
class GroupAnalysis:
    """One analysis: its participants, design, PEB, reduction and (longitudinal) the
    within-participant PEBs."""

    name: str
    participants: tuple[str, ...]
    peb: PEBResult
    reduction: PEBReduction
    within: dict[str, PEBResult] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class GroupDCMResult:
    """``effects``: the ``dcm_group_effects`` table (:data:`EFFECT_COLUMNS`); ``excluded``:
    participants left out, per analysis, with the reason; ``analyses``: name → details."""

    effects: pd.DataFrame
    excluded: pd.DataFrame
    analyses: dict[str, GroupAnalysis]


# --- designs --------------------------------------------------------------------------------


def for_study(config: GroupDCMConfig, protocol: StudyProtocol) -> GroupDCMConfig:
    """``config`` with the study's session labels, improvement column and arm codes."""
    return replace(
        config,
        pre=protocol.baseline,
        post=protocol.follow_up,
        improvement=f"{protocol.primary.name}_improvement",
        arm_codes=protocol.arm_codes,
    )


def clinical_covariates(
    clinical: pd.DataFrame, config: GroupDCMConfig = GroupDCMConfig()
) -> pd.DataFrame:
    """Per participant: ``improvement`` (the ``config.improvement`` column, e.g.
    caps5_improvement) and ``arm``, its code (``config.arm_codes``; NaN when unknown)."""
    if "participant_id" not in clinical.columns or "arm" not in clinical.columns:
        raise ValueError("clinical table needs participant_id and arm")
    table = clinical.set_index(clinical["participant_id"].astype(str))
    if config.improvement not in table.columns:
        raise ValueError(f"clinical table needs {config.improvement}")
    improvement = pd.to_numeric(table[config.improvement], errors="coerce")
    arm = table["arm"].map(lambda a: config.arm_codes.get(a, np.nan) if pd.notna(a) else np.nan)
    return pd.DataFrame({"improvement": improvement.astype(float), "arm": arm.astype(float)})


def design_matrix(covariates: pd.DataFrame) -> np.ndarray:
    """(N, 4) design [mean, improvement, arm, improvement × arm], covariates mean-centred.

    ``covariates`` : rows of :func:`clinical_covariates` for the participants, in order.
    """
    improvement = covariates["improvement"].to_numpy(float)
    arm = covariates["arm"].to_numpy(float)
    improvement = improvement - improvement.mean()
    interaction = improvement * arm
    X = np.column_stack(
        [np.ones(len(arm)), improvement, arm - arm.mean(), interaction - interaction.mean()]
    )
    return X


def _check_design(X: np.ndarray, analysis: str, covariates: Sequence[str]) -> None:
    n, k = X.shape
    if n < k:
        raise ValueError(
            f"{analysis}: {n} participants are fewer than the {k} second-level "
            f"parameters (design columns {', '.join(covariates)})"
        )
    if np.linalg.matrix_rank(X) < k:
        raise ValueError(
            f"{analysis}: the design [{', '.join(covariates)}] is rank deficient "
            f"over its {n} participants (e.g. one arm only, or no spread in "
            f"improvement)"
        )


def _eligible(
    first: FirstLevel, covariates: pd.DataFrame, sessions: Sequence[str], analysis: str
) -> tuple[list[str], list[dict]]:
    """Participants with converged fits of every session and complete covariates."""
    participants = sorted({pid for pid, _ in first.posteriors})
    keep, excluded = [], []
    for pid in participants:
        reason = None
        for session in sessions:
            post = first.posteriors.get((pid, session))
            if post is None:
                reason = f"no first-level DCM of session {session}"
            elif not post[3]:
                reason = f"first-level DCM of session {session} did not converge"
            if reason:
                break
        if reason is None:
            if pid not in covariates.index:
                reason = "no clinical record"
            elif covariates["arm"].isna()[pid]:
                reason = "arm unknown"
            elif covariates["improvement"].isna()[pid]:
                reason = "improvement unknown"
        if reason:
            excluded.append({"analysis": analysis, "participant_id": pid, "reason": reason})
        else:
            keep.append(pid)
    return keep, excluded


# --- analyses -------------------------------------------------------------------------------


def baseline_analysis(
    first: FirstLevel,
    covariates: pd.DataFrame,
    config: GroupDCMConfig = GroupDCMConfig(),
) -> tuple[GroupAnalysis, list[dict]]:
    """PEB of the pre-treatment parameters on [mean, improvement, arm, improvement × arm]."""
    keep, excluded = _eligible(first, covariates, [config.pre], "baseline")
    X = design_matrix(covariates.loc[keep]) if keep else np.zeros((0, len(config.covariates)))
    _check_design(X, "baseline", config.covariates)
    posts = [first.posteriors[(pid, config.pre)] for pid in keep]
    peb = estimate_peb(
        np.array([q[0] for q in posts]),
        np.array([q[1] for q in posts]),
        first.pE,
        first.pC,
        X,
        F_first=np.array([q[2] for q in posts]),
        parameters=first.names,
        covariates=config.covariates,
        components=config.components,
        hC=config.hyperprior_variance,
        method=PEB_METHOD,
    )
    reduction = reduce_peb(peb, config.max_exhaustive)
    return GroupAnalysis("baseline", tuple(keep), peb, reduction), excluded


def within_participant_change(
    first: FirstLevel,
    participant: str,
    config: GroupDCMConfig = GroupDCMConfig(),
) -> tuple[PEBResult, np.ndarray, np.ndarray]:
    """Within-participant PEB over pre and post: returns the PEB, the change's posterior
    mean (p,) and covariance (p, p) (the session column of its group effects)."""
    posts = [first.posteriors[(participant, s)] for s in (config.pre, config.post)]
    X = np.column_stack([np.ones(2), SESSION_CODE])
    peb = estimate_peb(
        np.array([q[0] for q in posts]),
        np.array([q[1] for q in posts]),
        first.pE,
        first.pC,
        X,
        F_first=np.array([q[2] for q in posts]),
        parameters=first.names,
        covariates=("mean", "session"),
        components=config.components,
        hC=config.hyperprior_variance,
        method=PEB_METHOD,
    )
    p = first.pE.size
    return peb, peb.Ep[:, 1], peb.Cp[p:, p:]


def longitudinal_analysis(
    first: FirstLevel,
    covariates: pd.DataFrame,
    config: GroupDCMConfig = GroupDCMConfig(),
) -> tuple[GroupAnalysis, list[dict]]:
    """PEB of each participant's change (post − pre) on [mean, improvement, arm,
    improvement × arm]; the change is formed as ``config.change`` says (module docstring)."""
    if config.change not in ("difference", "within_peb"):
        raise ValueError(
            f"unknown change method {config.change!r}; choose 'difference' or 'within_peb'"
        )
    keep, excluded = _eligible(first, covariates, [config.pre, config.post], "longitudinal")
    X = design_matrix(covariates.loc[keep]) if keep else np.zeros((0, len(config.covariates)))
    _check_design(X, "longitudinal", config.covariates)
    within, means, covs, F = {}, [], [], []
    p = first.pE.size
    prior_mean, prior_cov = np.zeros(p), 2.0 * first.pC
    for pid in keep:
        if config.change == "within_peb":
            peb, mean, cov = within_participant_change(first, pid, config)
            within[pid] = peb
            # the change's prior is the within-PEB's prior on its session column
            prior_mean, prior_cov = peb.prior_mean[:, 1], peb.prior_cov[p:, p:]
            F.append(peb.F)
        else:
            (pre, c_pre, f_pre, _), (post, c_post, f_post, _) = (
                first.posteriors[(pid, s)] for s in (config.pre, config.post)
            )
            mean, cov = post - pre, c_pre + c_post
            F.append(f_pre + f_post)
        means.append(mean)
        covs.append(cov)
    peb = estimate_peb(
        np.array(means),
        np.array(covs),
        prior_mean,
        prior_cov,
        X,
        F_first=np.array(F),
        parameters=first.names,
        covariates=config.covariates,
        components=config.components,
        hC=config.hyperprior_variance,
        method=PEB_METHOD,
    )
    reduction = reduce_peb(peb, config.max_exhaustive)
    return GroupAnalysis("longitudinal", tuple(keep), peb, reduction, within), excluded


def contrast_posterior(peb: PEBResult, weights: np.ndarray) -> tuple[float, float, float]:
    """Posterior of a linear combination c·vec(β) of group effects, and its Pp.

    ``weights`` : (p·k,) c over vec(β) (column-major: all parameters of the first
    covariate, then the next). Returns (mean, sd, Pp): the full PEB posterior's mean and sd
    of c·vec(β), and Pp = 1 / (1 + e^{ΔF}), ΔF the free-energy change (Bayesian model
    reduction) when the prior is conditioned on c·vec(β) = 0.
    """
    c = np.asarray(weights, dtype=float)
    pE, pC = peb.prior_mean.ravel(order="F"), peb.prior_cov
    qE = peb.Ep.ravel(order="F")
    pc = pC @ c
    gain = pc / (c @ pc)
    rE = pE - gain * (c @ pE)
    rC = pC - np.outer(gain, pc)
    rC = (rC + rC.T) / 2.0
    dF = free_energy_change(pE, pC, qE, peb.Cp, rE, rC)
    return (
        float(c @ qE),
        float(np.sqrt(max(c @ peb.Cp @ c, 0.0))),
        float(1.0 / (1.0 + np.exp(np.clip(dF, -700.0, 700.0)))),
    )


def effects_table(
    analysis: GroupAnalysis, config: GroupDCMConfig = GroupDCMConfig()
) -> pd.DataFrame:
    """Long table of one analysis's group effects (:data:`EFFECT_COLUMNS`).

    ``mean``/``sd``/``Pp``: after model reduction and averaging; ``peb_mean``/``peb_sd``:
    the full PEB posterior; ``prob_positive``: its probability that the effect is > 0.
    Then the within-arm slopes (:attr:`GroupDCMConfig.arm_slopes`, module docstring),
    whose ``mean``/``sd`` are the full PEB posterior's and ``Pp`` that of the slope being
    present.
    """
    peb, red = analysis.peb, analysis.reduction
    p, k = peb.Ep.shape
    sd = peb.sd
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = ndtr(peb.Ep / sd)
    common = {"n_participants": len(analysis.participants), "free_energy": peb.F}
    rows = []
    for j in range(k):
        for i in range(p):
            rows.append(
                {
                    "analysis": analysis.name,
                    "covariate": peb.covariates[j],
                    "parameter": peb.parameters[i],
                    "mean": red.Ep[i, j],
                    "sd": red.sd[i, j],
                    "Pp": red.Pp[i, j],
                    "peb_mean": peb.Ep[i, j],
                    "peb_sd": sd[i, j],
                    "prob_positive": positive[i, j],
                    **common,
                }
            )
    columns = list(peb.covariates)
    terms = (config.improvement, f"{config.improvement}:arm")
    if set(terms) <= set(columns):
        slope, interaction = (columns.index(c) for c in terms)
        for name, code in config.arm_slopes.items():
            for i in range(p):
                c = np.zeros((p, k))
                c[i, slope], c[i, interaction] = 1.0, code
                mean, sd_c, pp = contrast_posterior(peb, c.ravel(order="F"))
                rows.append(
                    {
                        "analysis": analysis.name,
                        "covariate": name,
                        "parameter": peb.parameters[i],
                        "mean": mean,
                        "sd": sd_c,
                        "Pp": pp,
                        "peb_mean": mean,
                        "peb_sd": sd_c,
                        "prob_positive": float(ndtr(mean / sd_c)) if sd_c > 0 else np.nan,
                        **common,
                    }
                )
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def group_dcm(
    fits: pd.DataFrame,
    parameters: pd.DataFrame,
    clinical: pd.DataFrame,
    config: GroupDCMConfig = GroupDCMConfig(),
) -> GroupDCMResult:
    """Run the configured group analyses on the first-level tables.

    Returns
    -------
    :class:`GroupDCMResult`: ``effects`` (``dcm_group_effects``), ``excluded`` (who was
    left out of which analysis and why) and the analyses' details.

    Raises
    ------
    ValueError : different model structures (naming the participants), fewer participants
        than design columns (stating both counts), a rank-deficient design, an unknown
        analysis, or malformed tables.
    """
    runners = {"longitudinal": longitudinal_analysis, "baseline": baseline_analysis}
    unknown = [a for a in config.analyses if a not in runners]
    if unknown:
        raise ValueError(f"unknown analysis(es) {unknown}; choose from {list(runners)}")
    first = first_level_posteriors(fits, parameters, config.model, config.parameters)
    covariates = clinical_covariates(clinical, config)
    analyses, excluded, tables = {}, [], []
    for name in config.analyses:
        analysis, left_out = runners[name](first, covariates, config)
        analyses[name] = analysis
        excluded.extend(left_out)
        tables.append(effects_table(analysis, config))
    effects = (
        pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=EFFECT_COLUMNS)
    )
    return GroupDCMResult(
        effects=effects,
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        analyses=analyses,
    )
