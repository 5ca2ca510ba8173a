"""The prediction resource: which elastic-net models the ``enet_*`` assets fit, and how.

One configuration declares every model variant (DESIGN §5 "Prediction"; issue 4) and the
analysis settings. A variant is ``name``, ``families`` (feature families such as
``faces.gppi`` or whole tasks such as ``faces``; unset = every change score), ``outcome``
(a ``clinical`` column), ``covariates`` (further ``clinical`` columns), ``interaction_with_arm``
(arm and change × arm terms) and ``arms`` (analyse only these arms). A model per task is one
line, e.g. in a run config::

    resources:
      prediction:
        config:
          variants:
            - {name: faces_only, families: [faces]}

Defaults: the paper's four models (``main``, ``interaction``, ``covariate``,
``ketamine_only``), a grid of 10 mixing ratios (0.1 … 1.0) × 50 penalties spanning three
orders of magnitude, nested LOO, 1000 outcome permutations, 500 bootstrap resamples, seed 0,
and at least 10 participants with both sessions.
"""

import dagster as dg

from kp_science.prediction.elastic_net import DEFAULT_L1_RATIOS, EnetSettings
from kp_science.prediction.variants import DEFAULT_VARIANTS, ModelVariant


class PredictionVariant(dg.Config):
    """One elastic-net model; the fields mirror :class:`ModelVariant`."""

    name: str
    families: list[str] | None = None
    outcome: str = "caps5_improvement"
    covariates: list[str] = []
    interaction_with_arm: bool = False
    arms: list[str] | None = None
    description: str = ""


def _variant_dict(variant: ModelVariant) -> dict:
    return {
        "name": variant.name,
        "families": list(variant.families) if variant.families is not None else None,
        "outcome": variant.outcome,
        "covariates": list(variant.covariates),
        "interaction_with_arm": variant.interaction_with_arm,
        "arms": list(variant.arms) if variant.arms is not None else None,
        "description": variant.description,
    }


# Plain dicts, as Dagster's config schema needs for defaults (see DCMModels).
DEFAULT_VARIANT_CONFIG = [_variant_dict(v) for v in DEFAULT_VARIANTS]


class PredictionModels(dg.ConfigurableResource):
    """Model variants and settings of the elastic-net analysis.

    variants: the models (see the module docstring). min_participants: fewest participants
    with both sessions for the fit assets to run (fewer fails them with the count), and
    fewest complete participants per variant. l1_ratios, n_alphas, eps: the grid — mixing
    ratios × a glmnet-style penalty path from the smallest penalty that zeroes every
    coefficient down to ``eps`` times it. nested: honest out-of-sample r and RMSE by nested
    LOO. n_permutations: outcome permutations of the minimum-LOO-error test (0 = skip).
    n_bootstraps: resamples for selection frequencies (0 = skip). seed: seeds permutations
    and resamples. workers: processes for the permutation test and nested LOO.
    """

    variants: list[PredictionVariant] = DEFAULT_VARIANT_CONFIG  # type: ignore[assignment]
    min_participants: int = 10
    l1_ratios: list[float] = list(DEFAULT_L1_RATIOS)
    n_alphas: int = 50
    eps: float = 1e-3
    nested: bool = True
    n_permutations: int = 1000
    n_bootstraps: int = 500
    seed: int = 0
    workers: int = 2

    def model_variants(self) -> tuple[ModelVariant, ...]:
        """The configured variants as science-code :class:`ModelVariant` objects."""
        out = []
        for item in self.variants:
            fields = dict(item) if isinstance(item, dict) else item.model_dump()
            families, arms = fields.get("families"), fields.get("arms")
            out.append(ModelVariant(
                name=fields["name"],
                families=tuple(families) if families is not None else None,
                outcome=fields.get("outcome", "caps5_improvement"),
                covariates=tuple(fields.get("covariates") or ()),
                interaction_with_arm=bool(fields.get("interaction_with_arm", False)),
                arms=tuple(arms) if arms is not None else None,
                description=fields.get("description", ""),
            ))
        names = [v.name for v in out]
        if len(set(names)) != len(names):
            raise ValueError(f"prediction variants need unique names, got {names}")
        return tuple(out)

    def settings(self) -> EnetSettings:
        """The analysis settings as :class:`EnetSettings`."""
        return EnetSettings(
            l1_ratios=tuple(self.l1_ratios), n_alphas=self.n_alphas, eps=self.eps,
            n_permutations=self.n_permutations, n_bootstraps=self.n_bootstraps,
            nested=self.nested, seed=self.seed, min_participants=self.min_participants,
            n_jobs=self.workers,
        )

    def describe(self) -> dict:
        """JSON-friendly description for metadata and provenance."""
        return {
            "variants": [_variant_dict(v) for v in self.model_variants()],
            "min_participants": self.min_participants, "l1_ratios": list(self.l1_ratios),
            "n_alphas": self.n_alphas, "eps": self.eps, "nested": self.nested,
            "n_permutations": self.n_permutations, "n_bootstraps": self.n_bootstraps,
            "seed": self.seed,
        }
