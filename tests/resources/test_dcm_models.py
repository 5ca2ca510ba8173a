"""The DCM model resource (kp_resources.dcm_models)."""

import pytest

from kp_resources.dcm_models import DCMModel, DCMModels
from kp_science.study.protocol import default_vocabulary

DESIGN = default_vocabulary().dcm  # regions amygdala, vmpfc; inputs faces, emotional


def test_dcm_models_resource_checks_its_masks():
    masks = DCMModels().masks(DESIGN)
    a, b, c = masks["full"]
    assert a.shape == (2, 2) and b.shape == (2, 2, 2) and c.shape == (2, 2)
    assert b[1, 0, 1] == 1 and b[0, 1, 1] == 1 and b[..., 0].sum() == 0  # emotional, both ways
    assert c[0, 0] == 1 and c.sum() == 1  # faces drive the amygdala
    forward = DCMModel(
        name="forward",
        a=[[1, 0], [1, 1]],
        b=[[[0, 0], [0, 0]], [[0, 0], [1, 0]]],
        c=[[1, 0], [0, 0]],
    )
    assert DCMModels(models=[forward]).masks(DESIGN)["forward"][1][1, 0, 1] == 1
    wrong = DCMModel(name="wrong", a=[[1, 1], [1, 1]], b=[[[0, 1], [1, 0]]], c=[[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="model 'wrong' mask b has shape"):
        DCMModels(models=[wrong]).masks(DESIGN)
    with pytest.raises(ValueError, match="model names must be unique"):
        DCMModels(models=[forward, forward]).masks(DESIGN)
