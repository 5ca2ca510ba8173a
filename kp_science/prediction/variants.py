"""Model variants of the elastic-net prediction analysis and their design matrices.

A :class:`ModelVariant` names which change-score families enter, which outcome is predicted,
which covariates are added, whether the drug arm and its interactions enter, and which arms
are analysed. :data:`DEFAULT_VARIANTS` are the paper's models (docs/architecture.md §1, §5):

* ``main`` — all change scores → CAPS-5 improvement;
* ``interaction`` — change scores, arm, and change × arm for every feature;
* ``covariate`` — ``main`` plus concomitant MADRS improvement;
* ``ketamine_only`` — ``main`` within the active arm (ketamine).

Arm coding (the study protocol's ``arm_codes``): active arm (ketamine) = +0.5, control
(midazolam) = −0.5 (effect coding), and the interaction term of a feature is the raw change
score times that code (term name ``<feature>:arm``). With this coding the feature's own
coefficient is the slope averaged over the two arms and the interaction coefficient is the
active-minus-control (ketamine-minus-midazolam) difference in slope, whether or not the
change score is centred.
The product is formed from each participant's own values only, so no other participant (in
particular no held-out one) leaks into it; every column — feature, arm, product, covariate
— is then z-scored inside each training fold like the rest.

:func:`design_matrix` turns the long ``change_scores`` table and the ``clinical`` table into
(X, y). It never imputes: a participant without the outcome, a covariate, the arm (when
needed) or any one of the selected features is excluded and listed with the reason;
constant columns are dropped and listed; fewer than ``min_participants`` remaining raises a
``ValueError`` stating the count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd

from kp_science.study.protocol import default_vocabulary

# an arm by its role in the study protocol (arms.active / arms.control)
ArmRole = Literal["active", "control"]
ARM_ROLES: tuple[str, ...] = get_args(ArmRole)

ARM_TERM = "arm"
INTERACTION_SUFFIX = ":arm"


@dataclass(frozen=True)
class ModelVariant:
    """One elastic-net model of the analysis.

    ``families``: feature families to use, matched against the first dot-separated parts of
    a feature name (``"faces.gppi"`` matches ``faces.gppi.vmpfc->amygdala.emotional``,
    ``"faces"`` matches every faces feature); None = every feature. ``outcome``: a column of
    ``clinical``. ``covariates``: further ``clinical`` columns entered as predictors.
    ``interaction_with_arm``: add the arm (active +0.5 / control −0.5) and one
    ``<feature>:arm`` product per feature. ``arms``: analyse only the arms of these roles
    (``"active"``, ``"control"``: the protocol's ``arms.active`` / ``arms.control``; None =
    all).

    Raises ValueError naming the field and the allowed values for another arm role.
    """

    name: str
    families: tuple[str, ...] | None = None
    outcome: str = "caps5_improvement"
    covariates: tuple[str, ...] = ()
    interaction_with_arm: bool = False
    arms: tuple[ArmRole, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms or () if a not in ARM_ROLES]
        if unknown:
            raise ValueError(
                f"ModelVariant {self.name!r}: arms must be among "
                f"{', '.join(ARM_ROLES)}, got {', '.join(map(repr, unknown))}"
            )


DEFAULT_VARIANTS: tuple[ModelVariant, ...] = (
    ModelVariant("main", description="change scores → CAPS-5 improvement"),
    ModelVariant(
        "interaction",
        interaction_with_arm=True,
        description="change scores, arm (active +0.5 / control −0.5) and change × arm",
    ),
    ModelVariant(
        "covariate",
        covariates=("madrs_improvement",),
        description="main model plus MADRS improvement",
    ),
    ModelVariant("ketamine_only", arms=("active",), description="main model within the active arm"),
)


def measures_of(change_scores: pd.DataFrame, measures: Iterable[str] | None) -> pd.DataFrame:
    """The rows of ``change_scores`` whose feature is one of ``measures`` (the second part
    of its name: ``activation``, ``gppi``, ``fc``; the study protocol's
    ``prediction.families``); None keeps every row."""
    if measures is None:
        return change_scores
    kept = change_scores["feature"].str.split(".").str[1].isin(list(measures))
    return change_scores[kept.to_numpy(dtype=bool)]


def interaction_term(feature: str) -> str:
    """Name of the feature × arm product column."""
    return f"{feature}{INTERACTION_SUFFIX}"


def feature_of_term(term: str) -> str:
    """The feature a model term is about: an interaction term (:func:`interaction_term`)
    without its suffix, any other term as it is."""
    return term.removesuffix(INTERACTION_SUFFIX)


def feature_family(feature: str) -> str:
    """``task.measure`` part of a feature name (``rest.fc.vmpfc~insula_ant`` → ``rest.fc``)."""
    return ".".join(feature.split(".")[:2])


def _in_families(feature: str, families: tuple[str, ...] | None) -> bool:
    if families is None:
        return True
    return any(feature == f or feature.startswith(f + ".") for f in families)


@dataclass
class DesignReport:
    """What :func:`design_matrix` kept, dropped and why.

    ``excluded``: DataFrame (participant_id, reason), one row per participant left out;
    ``dropped_constant``: terms dropped because they do not vary among the kept
    participants; ``terms``: the columns of X in order.
    """

    variant: str
    n_participants: int
    terms: list[str]
    excluded: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["participant_id", "reason"])
    )
    dropped_constant: list[str] = field(default_factory=list)
    features_considered: int = 0


def _wide_changes(change_scores: pd.DataFrame) -> pd.DataFrame:
    need = {"participant_id", "feature", "change"}
    missing = need - set(change_scores.columns)
    if missing:
        raise ValueError(f"change_scores lacks column(s) {', '.join(sorted(missing))}")
    dup = change_scores.duplicated(["participant_id", "feature"])
    if dup.any():
        first = change_scores.loc[dup, ["participant_id", "feature"]].iloc[0]
        raise ValueError(
            f"change_scores has {int(dup.sum())} duplicate participant/feature row(s), "
            f"e.g. {first['participant_id']} / {first['feature']}"
        )
    wide = change_scores.pivot(index="participant_id", columns="feature", values="change")
    return wide.astype(float)


def design_matrix(
    change_scores: pd.DataFrame,
    clinical: pd.DataFrame,
    variant: ModelVariant,
    min_participants: int = 10,
    arm_codes: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.Series, DesignReport]:
    """Build the design matrix of one variant.

    Parameters
    ----------
    change_scores : long table (participant_id, feature, change[, pre, post]); change is
        post − pre in the feature's own units.
    clinical : one row per participant (participant_id, arm, the outcome, covariates).
    variant : which features, outcome, covariates, arm terms and arms.
    min_participants : fewest complete participants for a fit.
    arm_codes : arm value → code, active +0.5 and control −0.5 (the study protocol's
        ``arm_codes``; None = the default protocol's).

    Returns
    -------
    X : DataFrame (participants × terms) indexed by participant_id, raw (unstandardised)
        values: change scores, then arm and ``<feature>:arm`` products, then covariates.
    y : Series of the outcome (e.g. CAPS-5 points of improvement), same index.
    report : :class:`DesignReport` listing exclusions (with reasons) and constant terms.

    Raises
    ------
    ValueError : fewer than ``min_participants`` participants remain, or the inputs lack
        required columns.
    """
    codes = dict(default_vocabulary().arm_codes if arm_codes is None else arm_codes)
    wide = _wide_changes(change_scores)
    features = sorted(f for f in wide.columns if _in_families(f, variant.families))
    if not features:
        raise ValueError(
            f"variant {variant.name!r}: no change-score feature matches families {variant.families}"
        )
    clin = clinical.drop_duplicates("participant_id").set_index("participant_id")
    needed_cols = [variant.outcome, *variant.covariates]
    if variant.interaction_with_arm or variant.arms is not None:
        needed_cols.append("arm")
    missing_cols = [c for c in needed_cols if c not in clin.columns]
    if missing_cols:
        raise ValueError(f"clinical lacks column(s) {', '.join(missing_cols)}")

    participants = sorted(set(wide.index) | set(clin.index))
    excluded: list[tuple[str, str]] = []
    kept: list[str] = []
    for pid in participants:
        reason = _exclusion_reason(pid, wide, clin, features, variant, codes)
        if reason is None:
            kept.append(pid)
        else:
            excluded.append((pid, reason))

    X = wide.loc[kept, features].copy()
    if variant.interaction_with_arm:
        code = clin.loc[kept, "arm"].map(codes).astype(float)
        X[ARM_TERM] = code.to_numpy()
        products = X[features].mul(code.to_numpy(), axis=0)
        products.columns = [interaction_term(f) for f in features]
        X = pd.concat([X, products], axis=1)
    for cov in variant.covariates:
        X[cov] = clin.loc[kept, cov].astype(float).to_numpy()
    X.index.name = "participant_id"
    y = clin.loc[kept, variant.outcome].astype(float)
    y.index.name = "participant_id"
    y.name = variant.outcome

    # a term that does not vary carries no information and cannot be z-scored
    spread = X.max(axis=0) - X.min(axis=0) if len(X) else pd.Series(0.0, index=X.columns)
    constant = [c for c in X.columns if not spread[c] > 0]
    X = X.drop(columns=constant)

    report = DesignReport(
        variant=variant.name,
        n_participants=len(kept),
        terms=list(X.columns),
        excluded=pd.DataFrame(excluded, columns=["participant_id", "reason"]),
        dropped_constant=constant,
        features_considered=len(features),
    )
    if len(kept) < min_participants:
        raise ValueError(
            f"variant {variant.name!r}: only {len(kept)} participant(s) with complete data "
            f"(at least {min_participants} needed); {len(excluded)} excluded"
        )
    if X.shape[1] == 0:
        raise ValueError(f"variant {variant.name!r}: every term is constant")
    return X, y, report


def _exclusion_reason(
    pid: str,
    wide: pd.DataFrame,
    clin: pd.DataFrame,
    features: list[str],
    variant: ModelVariant,
    arm_codes: Mapping[str, float],
) -> str | None:
    """Why participant ``pid`` cannot enter the variant, or None if it can."""
    if pid not in clin.index:
        return "no clinical record"
    row = clin.loc[pid]
    assert isinstance(row, pd.Series)  # clinical has one row per participant
    roles = {arm: "active" if code > 0 else "control" for arm, code in arm_codes.items()}
    if variant.arms is not None and roles.get(str(row.get("arm"))) not in variant.arms:
        wanted = [a for a, role in roles.items() if role in variant.arms]
        return f"arm {row.get('arm')!r} not in {', '.join(wanted)}"
    if variant.interaction_with_arm and row.get("arm") not in arm_codes:
        return f"arm {row.get('arm')!r} is not {' or '.join(arm_codes)}"
    # a score rejected where it entered (out of its instrument's range) says so
    rejected = row.get("clinical_problems")
    why = f" ({rejected})" if isinstance(rejected, str) and rejected else ""
    if pd.isna(row[variant.outcome]):
        return f"missing {variant.outcome}{why}"
    for cov in variant.covariates:
        if pd.isna(row[cov]):
            return f"missing covariate {cov}{why}"
    if pid not in wide.index:
        return "no change scores"
    values = wide.loc[pid, features]
    missing = values.index[~np.isfinite(values.to_numpy(dtype=float))]
    if len(missing):
        return f"missing {len(missing)} of {len(features)} change scores (e.g. {missing[0]})"
    return None
