"""The DCM specification, parameters, priors and inputs (kp_science.dcm.model)."""

import numpy as np
import pandas as pd
import pytest

from kp_science.dcm import inputs_from_events, pack, parameter_names, priors, unpack
from tests.science.dcm.dcm_cases import _fixture, _small_spec, _spec


def test_priors_in_spm_order():
    spec = _spec(_fixture("dev_2region_fwdmod"))
    pE, pC, hE, hC = priors(spec)
    names = parameter_names(spec)
    assert len(names) == pE.size == 4 + 8 + 4 + 2 + 2
    assert names[:4] == [
        "A[amygdala->amygdala]",
        "A[amygdala->vmpfc]",
        "A[vmpfc->amygdala]",
        "A[vmpfc->vmpfc]",
    ]
    var = dict(zip(names, np.diag(pC), strict=True))
    mean = dict(zip(names, pE, strict=True))
    assert mean["A[amygdala->vmpfc]"] == 1 / 128 and var["A[amygdala->vmpfc]"] == 1 / 64
    assert mean["A[vmpfc->vmpfc]"] == 0 and var["A[vmpfc->vmpfc]"] == 1 / 64
    assert var["B[emotional][amygdala->vmpfc]"] == 1 and var["B[emotional][vmpfc->amygdala]"] == 0
    assert var["C[faces][amygdala]"] == 1 and var["C[emotional][amygdala]"] == 0
    assert var["transit[vmpfc]"] == var["decay"] == var["epsilon"] == 1 / 256
    assert (hE, hC) == (6.0, 1 / 128)
    assert np.count_nonzero(pC - np.diag(np.diag(pC))) == 0
    assert np.array_equal(pack(unpack(np.arange(pE.size, dtype=float), 2, 2)), np.arange(pE.size))


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"a": np.ones((3, 3))}, "mask a must have shape (2, 2)"),
        ({"b": np.zeros((2, 2))}, "mask b must have shape (2, 2, 2)"),
        ({"c": np.ones((2, 3))}, "mask c must have shape (2, 2)"),
        ({"u": np.zeros((40 * 16, 2))}, "never on"),
        ({"u": np.ones((40 * 16 + 3, 2))}, "microtime"),
        ({"u": np.ones((5 * 16, 2))}, "fewer than the 9 free parameters"),
        ({"delays": [1.0]}, "one value per region"),
    ],
)
def test_spec_validation(changes, phrase):
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        _small_spec(**changes)


def test_input_never_on_is_named():
    u = np.zeros((40 * 16, 2))
    u[10:50, 0] = 1
    with pytest.raises(ValueError, match="emotional"):
        _small_spec(u=u)


def test_inputs_from_events():
    events = pd.DataFrame(
        {
            "onset": [10.0, 50.0, 90.0],
            "duration": [20.0, 20.0, 0.0],
            "trial_type": ["emotional", "neutral", "emotional"],
        }
    )
    u = inputs_from_events(
        events, {"faces": ["emotional", "neutral"], "emotional": ["emotional"]}, n_scans=60, tr=2.0
    )
    assert u.shape == (60 * 16, 2)
    dt = 2.0 / 16
    assert u[:, 0].sum() == 2 * 20 / dt + 1 and u[:, 1].sum() == 20 / dt + 1
    assert u[round(10 / dt), 1] == 1 and u[round(10 / dt) - 1, 1] == 0
    assert u[round(90 / dt), 1] == 1  # zero duration still covers one bin
    same = inputs_from_events(events, [["emotional", "neutral"], ["emotional"]], 60, 2.0)
    assert np.array_equal(u, same)
