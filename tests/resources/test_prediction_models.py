"""The prediction models resource (kp_resources.prediction_models)."""

import pytest

from kp_resources.prediction_models import PredictionModels


def test_prediction_resource_rejects_duplicate_names():
    resource = PredictionModels(variants=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="unique names"):
        resource.model_variants()
