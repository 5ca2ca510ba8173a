"""The configuration resources mirror the science dataclasses (kp_resources.science_config):
same defaults, same fields, typos rejected."""

from __future__ import annotations

import dataclasses
import re

import dagster as dg
import pydantic
import pytest

from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMGroupDesign
from kp_resources.evidence_rules import EvidenceRules
from kp_resources.prediction_models import PredictionModels, PredictionVariant
from kp_science.cleaning import CleaningStrategy
from kp_science.dcm.group import GroupDCMConfig
from kp_science.prediction.elastic_net import EnetSettings
from kp_science.prediction.headline import SupportRules
from kp_science.prediction.variants import DEFAULT_VARIANTS, ModelVariant


def built(resource_class: type[dg.ConfigurableResource], config: dict | None = None):
    """The resource as Dagster builds it from run configuration (``config``; none = defaults)."""
    with dg.build_resources(
        {"r": resource_class.configure_at_launch()}, resource_config={"r": {"config": config or {}}}
    ) as resources:
        return resources.r


def same_fields(ours, theirs) -> None:
    assert type(ours) is type(theirs)
    for f in dataclasses.fields(theirs):
        assert getattr(ours, f.name) == getattr(theirs, f.name), f.name


# --- defaults: the resource with no configuration is the science default -------------------


@pytest.mark.parametrize("make", [ConfoundCleaning, lambda: built(ConfoundCleaning)])
def test_cleaning_defaults_are_the_science_defaults(make):
    same_fields(make().strategy(), CleaningStrategy())


@pytest.mark.parametrize("make", [PredictionModels, lambda: built(PredictionModels)])
def test_prediction_defaults_are_the_science_defaults(make):
    resource = make()
    same_fields(resource.settings(), EnetSettings())
    variants = resource.model_variants()
    assert [v.name for v in variants] == [v.name for v in DEFAULT_VARIANTS]
    for ours, theirs in zip(variants, DEFAULT_VARIANTS, strict=True):
        same_fields(ours, theirs)


def test_a_configured_variant_defaults_to_model_variant():
    ours = PredictionVariant(name="faces_only", families=["faces"]).variant()
    same_fields(ours, ModelVariant("faces_only", families=("faces",)))


@pytest.mark.parametrize("make", [DCMGroupDesign, lambda: built(DCMGroupDesign)])
def test_dcm_group_defaults_are_the_science_defaults(make):
    same_fields(make().config(), GroupDCMConfig())


@pytest.mark.parametrize("make", [EvidenceRules, lambda: built(EvidenceRules)])
def test_evidence_defaults_are_the_science_defaults(make):
    same_fields(make().rules(), SupportRules())


def test_an_evidence_rule_outside_zero_to_one_is_refused_by_name():
    assert built(EvidenceRules, {"min_pp": 0.99}).rules() == SupportRules(min_pp=0.99)
    with pytest.raises(ValueError, match="max_permutation_p must be within"):
        EvidenceRules(max_permutation_p=5).rules()


@pytest.mark.parametrize(
    ("resource_class", "science_class", "own"),
    [
        (EvidenceRules, SupportRules, set()),
        (ConfoundCleaning, CleaningStrategy, {"min_free_volumes"}),
        (PredictionVariant, ModelVariant, set()),
        (DCMGroupDesign, GroupDCMConfig, set()),
    ],
)
def test_resource_fields_are_the_dataclass_fields(resource_class, science_class, own):
    """Every field of the resource is one of the dataclass (or the resource's own), and every
    dataclass field is configurable (GroupDCMConfig's session labels, improvement column and arm
    codes are the study protocol's)."""
    science = {f.name for f in dataclasses.fields(science_class)}
    fields = set(resource_class.model_fields)
    assert fields - science == own
    assert science - fields <= {"pre", "post", "improvement", "arm_codes"}


def test_configured_values_reach_the_dataclasses():
    strategy = built(ConfoundCleaning, {"motion": "full", "wm_csf": "power2", "scrub": 0})
    assert strategy.strategy() == CleaningStrategy(motion="full", wm_csf="power2", scrub=0)
    design = built(
        DCMGroupDesign, {"analyses": ["baseline"], "change": "within_peb", "components": "single"}
    ).config()
    assert design == GroupDCMConfig(
        analyses=("baseline",), change="within_peb", components="single"
    )
    prediction = built(
        PredictionModels, {"variants": [{"name": "m", "arms": ["control"]}], "workers": 1}
    )
    assert prediction.model_variants() == (ModelVariant("m", arms=("control",)),)
    assert prediction.settings() == EnetSettings(n_jobs=1)


# --- a typo fails when the configuration loads -------------------------------------------------


@pytest.mark.parametrize(
    ("resource_class", "config", "path", "allowed", "typo"),
    [
        (
            ConfoundCleaning,
            {"motion": "derivative"},
            "motion",
            ["basic", "derivatives", "power2", "full"],
            "derivative",
        ),
        (
            ConfoundCleaning,
            {"wm_csf": "ful"},
            "wm_csf",
            ["basic", "derivatives", "power2", "full"],
            "ful",
        ),
        (DCMGroupDesign, {"change": "diff"}, "change", ["difference", "within_peb"], "diff"),
        (
            DCMGroupDesign,
            {"components": "field"},
            "components",
            ["single", "fields", "all"],
            "field",
        ),
        (
            DCMGroupDesign,
            {"analyses": ["baseline", "longitudnal"]},
            "analyses[1]",
            ["longitudinal", "baseline"],
            "longitudnal",
        ),
        (
            PredictionModels,
            {"variants": [{"name": "m", "arms": ["activ"]}]},
            "variants[0]:arms[0]",
            ["active", "control"],
            "activ",
        ),
    ],
)
def test_dagster_rejects_a_typo_naming_the_field_and_the_choices(
    resource_class, config, path, allowed, typo
):
    with pytest.raises(dg.DagsterInvalidConfigError) as error:
        built(resource_class, config)
    message = str(error.value)
    assert f"config:{path} not in enum type" in message
    assert f"Literal[{', '.join(map(repr, allowed))}]" in message
    assert f"got {typo}" in message


@pytest.mark.parametrize(
    ("make", "field", "allowed"),
    [
        (lambda: ConfoundCleaning(motion="derivative"), "motion", "'basic', 'derivatives'"),
        (lambda: DCMGroupDesign(change="diff"), "change", "'difference' or 'within_peb'"),
        (lambda: DCMGroupDesign(analyses=["pooled"]), "analyses.0", "'longitudinal' or 'baseline'"),
        (
            lambda: PredictionVariant(name="m", arms=["activ"]),
            "arms.0",
            "'active' or 'control'",
        ),
    ],
)
def test_a_resource_built_in_python_rejects_a_typo(make, field, allowed):
    with pytest.raises(pydantic.ValidationError, match=re.escape(allowed)) as error:
        make()
    assert f"\n{field}\n" in str(error.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: CleaningStrategy(motion="derivative"),
            "motion must be one of basic, derivatives, power2, full, got 'derivative'",
        ),
        (
            lambda: CleaningStrategy(wm_csf="squares"),
            "wm_csf must be one of basic, derivatives, power2, full, got 'squares'",
        ),
        (lambda: GroupDCMConfig(change="ratio"), "change must be one of difference, within_peb"),
        (
            lambda: GroupDCMConfig(analyses=("pooled",)),
            "analyses must be among longitudinal, baseline",
        ),
        (
            lambda: GroupDCMConfig(components="field"),
            "components must be one of single, fields, all or index groups, got 'field'",
        ),
        (
            lambda: ModelVariant("m", arms=("activ",)),
            "arms must be among active, control, got 'activ'",
        ),
    ],
)
def test_a_science_dataclass_rejects_a_typo(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_explicit_precision_components_are_still_allowed():
    assert GroupDCMConfig(components=((0,), (1,))).components == ((0,), (1,))
