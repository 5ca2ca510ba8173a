"""The simulated neural and haemodynamic model (kp_science.simulator.neural), checked against
SPM12."""

import numpy as np
import pytest

from kp_science.balloon import DCMParameters
from kp_science.simulator.neural import integrate_dcm
from tests.science.spm12 import spm12_fixture


@pytest.mark.parametrize("case", ["dev_2region_fwdmod", "dev_2region_bothmod", "dev_3region_chain"])
def test_forward_model_matches_spm12_prediction(case):
    """Integrating SPM's posterior parameters reproduces SPM's predicted BOLD (the simulator
    integrates the nonlinear system, SPM its bilinear approximation, so not to the digit)."""
    fixture = spm12_fixture("spm12_dcm", case)
    spm = fixture["spm"]
    params = DCMParameters(
        np.array(spm["Ep_A"]),
        np.array(spm["Ep_B"]),
        np.array(spm["Ep_C"]),
        np.array(spm["Ep_transit"]),
        spm["Ep_decay"],
        spm["Ep_epsilon"],
    )
    bold = integrate_dcm([params], np.array(fixture["u"], float)[None], fixture["TR"])[0]
    expected = np.array(spm["y_hat"])
    bold, expected = bold - bold.mean(0), expected - expected.mean(0)
    for region in range(bold.shape[1]):
        assert np.corrcoef(bold[:, region], expected[:, region])[0, 1] > 0.995
        error = bold[:, region] - expected[:, region]
        rel = np.sqrt(np.mean(error**2)) / expected[:, region].std()
        assert rel < 0.15
