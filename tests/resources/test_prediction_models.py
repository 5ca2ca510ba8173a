"""The prediction models resource (kp_resources.prediction_models)."""

import pytest

from kp_resources.prediction_models import PredictionModels
from kp_science.prediction import EnetSettings


def test_prediction_resource_rejects_duplicate_names():
    resource = PredictionModels(variants=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="unique names"):
        resource.model_variants()


def test_the_kfold_switch_is_configured_like_the_other_settings():
    """The LOO → K-fold threshold and K default to EnetSettings', reach the settings and
    the described configuration."""
    default = PredictionModels()
    science = EnetSettings()
    assert default.settings().loo_max_participants == science.loo_max_participants
    assert default.settings().cv_folds == science.cv_folds
    custom = PredictionModels(loo_max_participants=40, cv_folds=5)
    assert (custom.settings().loo_max_participants, custom.settings().cv_folds) == (40, 5)
    assert custom.describe()["loo_max_participants"] == 40
    assert custom.describe()["cv_folds"] == 5
