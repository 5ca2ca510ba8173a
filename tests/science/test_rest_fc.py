"""Resting-state pair correlations and Fisher z (kp_science.rest_fc)."""

import numpy as np
import pandas as pd

from kp_science.rest_fc import pair_correlations


def test_pair_correlations_and_fisher_z():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 3))
    x[:, 1] += x[:, 0]
    table = pair_correlations(pd.DataFrame(x, columns=["vmpfc", "amygdala", "insula_ant"]))
    assert list(zip(table.roi_a, table.roi_b, strict=True)) == [
        ("vmpfc", "amygdala"),
        ("vmpfc", "insula_ant"),
        ("amygdala", "insula_ant"),
    ]
    np.testing.assert_allclose(table.r[0], np.corrcoef(x[:, 0], x[:, 1])[0, 1])
    np.testing.assert_allclose(table.z, np.arctanh(table.r))
