"""The prediction resource: which elastic-net models the ``enet_*`` assets fit, and how.

One configuration declares every model variant (docs/architecture.md §5 "Prediction") and the
analysis settings. A variant is ``name``, ``families`` (feature families such as
``faces.gppi`` or whole tasks such as ``faces``; unset = every change score), ``outcome``
(a ``clinical`` column), ``covariates`` (further ``clinical`` columns), ``interaction_with_arm``
(arm and change × arm terms) and ``arms`` (analyse only the arms of these roles, ``active``
or ``control``: the study protocol's ``arms.active`` / ``arms.control``). A model per task is one
line, e.g. in a run config::

    resources:
      prediction:
        config:
          variants:
            - {name: faces_only, families: [faces]}

Every field and default is the science side's (:class:`ModelVariant`,
:data:`DEFAULT_VARIANTS`, :class:`EnetSettings`), defined there once: the paper's four models
(``main``, ``interaction``, ``covariate``, ``ketamine_only``), a grid of 10 mixing ratios
(0.1 … 1.0) × 50 penalties spanning three orders of magnitude, nested LOO, 1000 outcome
permutations, 500 bootstrap resamples, seed 0, and at least 10 participants with both
sessions; above 60 participants in a model, 10-fold cross-validation replaces
leave-one-out (``loo_max_participants``, ``cv_folds``). An arm role other than
active/control fails when the configuration loads.
"""

import dagster as dg

from kp_resources.science_config import choice_enum, config_dict, from_config, science_default
from kp_science.prediction.elastic_net import EnetSettings
from kp_science.prediction.variants import ARM_ROLES, DEFAULT_VARIANTS, ModelVariant

ArmChoice = choice_enum(ARM_ROLES)


class PredictionVariant(dg.Config):
    """One elastic-net model: the fields and defaults of :class:`ModelVariant` (``arms``: arm
    roles, active or control)."""

    name: str
    families: list[str] | None = science_default(ModelVariant, "families")
    outcome: str = science_default(ModelVariant, "outcome")
    covariates: list[str] = science_default(ModelVariant, "covariates")
    interaction_with_arm: bool = science_default(ModelVariant, "interaction_with_arm")
    arms: list[ArmChoice] | None = science_default(ModelVariant, "arms")
    description: str = science_default(ModelVariant, "description")

    def variant(self) -> ModelVariant:
        """This model as the science code's :class:`ModelVariant` (lists → tuples)."""
        return from_config(ModelVariant, self)


# Plain dicts, as Dagster's config schema needs for defaults (see DCMModels).
DEFAULT_VARIANT_CONFIG = [config_dict(v) for v in DEFAULT_VARIANTS]


def _settings_default(name: str):
    return science_default(EnetSettings, name)


class PredictionModels(dg.ConfigurableResource):
    """Model variants and settings of the elastic-net analysis; the settings' fields and
    defaults are :class:`EnetSettings`' (``workers`` is its ``n_jobs``).

    variants: the models (see the module docstring). min_participants: fewest participants
    with both sessions for the fit assets to run (fewer fails them with the count), and
    fewest complete participants per variant. l1_ratios, n_alphas, eps: the grid — mixing
    ratios × a glmnet-style penalty path from the smallest penalty that zeroes every
    coefficient down to ``eps`` times it. nested: honest out-of-sample r and RMSE by nested
    LOO. n_permutations: outcome permutations of the minimum-LOO-error test (0 = skip).
    n_bootstraps: resamples for selection frequencies (0 = skip). seed: seeds permutations,
    resamples and K-fold folds. workers: threads for the permutation test, nested CV and
    bootstrap. loo_max_participants: exact leave-one-out for models with at most this many
    participants; above it, selection, nested evaluation and the permutation test use
    K-fold cross-validation with cv_folds folds (the ``cv`` column of the enet tables says
    which).
    """

    variants: list[PredictionVariant] = DEFAULT_VARIANT_CONFIG  # type: ignore[assignment]
    min_participants: int = _settings_default("min_participants")
    l1_ratios: list[float] = _settings_default("l1_ratios")
    n_alphas: int = _settings_default("n_alphas")
    eps: float = _settings_default("eps")
    nested: bool = _settings_default("nested")
    n_permutations: int = _settings_default("n_permutations")
    n_bootstraps: int = _settings_default("n_bootstraps")
    seed: int = _settings_default("seed")
    workers: int = _settings_default("n_jobs")
    loo_max_participants: int = _settings_default("loo_max_participants")
    cv_folds: int = _settings_default("cv_folds")

    def model_variants(self) -> tuple[ModelVariant, ...]:
        """The configured variants as science-code :class:`ModelVariant` objects.

        Raises ValueError if two variants share a name."""
        out = tuple(
            (PredictionVariant.model_validate(item) if isinstance(item, dict) else item).variant()
            for item in self.variants
        )
        names = [v.name for v in out]
        if len(set(names)) != len(names):
            raise ValueError(f"prediction variants need unique names, got {names}")
        return out

    def settings(self) -> EnetSettings:
        """The analysis settings as :class:`EnetSettings`."""
        return from_config(EnetSettings, self, renamed={"n_jobs": "workers"})

    def describe(self) -> dict:
        """JSON-friendly description for metadata and provenance."""
        return {
            "variants": [config_dict(v) for v in self.model_variants()],
            "min_participants": self.min_participants,
            "l1_ratios": list(self.l1_ratios),
            "n_alphas": self.n_alphas,
            "eps": self.eps,
            "nested": self.nested,
            "n_permutations": self.n_permutations,
            "n_bootstraps": self.n_bootstraps,
            "seed": self.seed,
            "loo_max_participants": self.loo_max_participants,
            "cv_folds": self.cv_folds,
        }
